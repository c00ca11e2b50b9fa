"""Assembling the 4D perfusion array from real DICOM files written into tmp_path, and
analysing layouts that must give the same result (one series per time point, gantry tilt)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicomfactory import (
    StudyTags,
    ramp_signal,
    uid,
    write_ct_volume,
    write_ctp_series,
    write_ctp_time_point_series,
)
from strokeflow.analyze import AnalyzeOptions, analyze_paths
from strokeflow.assemble import (
    AssemblyError,
    CtpAcquisition,
    StudyInventory,
    assemble_ctp,
    build_inventory,
    scan_paths,
)
from strokeflow.assemble.ctp import check_analysable
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study

NT, NZ = 10, 4


def _assemble_one(root: Path) -> CtpAcquisition:
    headers, problems = scan_paths([root])
    assert problems == []
    (study,) = build_inventory(headers)
    (acquisition,) = assemble_ctp(study)
    return acquisition


def test_shuffled_files_assemble_in_slice_and_time_order(tmp_path: Path) -> None:
    signal = ramp_signal(NT, NZ)
    times = np.arange(NT) * 1.5
    write_ctp_series(tmp_path, signal, times, pixel_spacing_mm=(0.4, 0.6), shuffle_names=True)
    acq = _assemble_one(tmp_path)
    p = acq.perfusion
    assert p.signal.dtype == np.float32
    np.testing.assert_array_equal(p.signal, signal)
    np.testing.assert_allclose(p.times_s, np.repeat(times[:, None], NZ, axis=1), atol=1e-5)
    assert not p.missing.any()
    assert acq.warnings == []
    assert acq.time_source == "AcquisitionDateTime"
    assert len(acq.source_paths) == NT * NZ
    # affine maps (col, row, slice) to LPS: x spacing = PixelSpacing[1], y = PixelSpacing[0]
    expected = np.array([[0.6, 0, 0, 0], [0, 0.4, 0, 0], [0, 0, 5.0, 20.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(p.geometry.affine_lps, expected, atol=1e-9)
    assert acq.slice_positions_mm == pytest.approx((20.0, 25.0, 30.0, 35.0))
    assert "PatientName" not in acq.reference and acq.reference["KVP"] == "80"


def test_slices_are_ordered_along_the_normal_not_by_instance_number(tmp_path: Path) -> None:
    # Instance numbers and files run head to feet: z decreases with the slice index.
    signal = ramp_signal(6, NZ)
    write_ctp_series(tmp_path, signal, np.arange(6.0), first_slice_z_mm=35.0, slice_spacing_mm=-5.0)
    p = _assemble_one(tmp_path).perfusion
    np.testing.assert_array_equal(p.signal, signal[:, ::-1])
    np.testing.assert_allclose(p.geometry.affine_lps[:3, 2:], [[0, 0], [0, 0], [5, 20]])


def test_sagittal_slices_step_along_their_normal(tmp_path: Path) -> None:
    # row = +y, col = -z: normal = cross(row, col) = -x, so the slices step towards -x.
    signal = ramp_signal(6, 3)
    write_ctp_series(tmp_path, signal, np.arange(6.0), orientation=(0, 1, 0, 0, 0, -1))
    acq = _assemble_one(tmp_path)
    np.testing.assert_array_equal(acq.perfusion.signal, signal)
    np.testing.assert_allclose(acq.perfusion.geometry.affine_lps[:3, 2], [-5.0, 0, 0])
    np.testing.assert_allclose(acq.perfusion.geometry.affine_lps[:3, 1], [0, 0, -0.5])
    assert acq.perfusion.geometry.voxel_size_mm == pytest.approx((5.0, 0.5, 0.5))


def test_irregular_sampling_keeps_each_frame_time(tmp_path: Path) -> None:
    times = np.concatenate([np.arange(8) * 1.0, 8.0 + np.arange(1, 5) * 3.0])
    signal = ramp_signal(times.size, NZ)
    write_ctp_series(tmp_path, signal, times)
    p = _assemble_one(tmp_path).perfusion
    np.testing.assert_allclose(p.times_s[:, 0], times, atol=1e-5)
    np.testing.assert_array_equal(p.signal, signal)


@pytest.mark.parametrize("mode", ["acquisition_time", "content_time", "temporal_position"])
def test_times_from_the_tag_the_vendor_filled(tmp_path: Path, mode: str) -> None:
    times = np.arange(NT) * 2.0
    write_ctp_series(tmp_path, ramp_signal(NT, NZ), times, time_mode=mode)  # type: ignore[arg-type]
    acq = _assemble_one(tmp_path)
    expected = {
        "acquisition_time": "AcquisitionTime",
        "content_time": "ContentTime",
        "temporal_position": "TemporalPositionIdentifier",
    }
    assert acq.time_source == expected[mode]
    np.testing.assert_allclose(acq.perfusion.times_s[:, 1], times, atol=1e-5)


def test_acquisition_time_equal_for_all_images_falls_back_to_content_time(tmp_path: Path) -> None:
    times = np.arange(NT) * 2.0
    write_ctp_series(
        tmp_path,
        ramp_signal(NT, NZ),
        times,
        time_mode="content_time",
        extra={"AcquisitionTime": "101500", "AcquisitionDate": "20240102"},
    )
    acq = _assemble_one(tmp_path)
    assert acq.time_source == "ContentTime"
    np.testing.assert_allclose(acq.perfusion.times_s[:, 0], times, atol=1e-5)


@pytest.mark.parametrize("mode", ["acquisition_datetime", "content_time"])
def test_midnight_crossing(tmp_path: Path, mode: str) -> None:
    times = np.arange(NT) * 3.0
    start = datetime(2024, 1, 2, 23, 59, 50)
    # content_time with a date that stays the study date: only the clock wraps.
    extra = {"ContentDate": "20240102"} if mode == "content_time" else {}
    paths = write_ctp_series(
        tmp_path, ramp_signal(NT, NZ), times, start=start, time_mode=mode, extra=extra
    )  # type: ignore[arg-type]
    assert paths
    acq = _assemble_one(tmp_path)
    np.testing.assert_allclose(acq.perfusion.times_s[:, 2], times, atol=1e-5)
    np.testing.assert_array_equal(acq.perfusion.signal, ramp_signal(NT, NZ))


def test_series_split_in_time_is_merged(tmp_path: Path) -> None:
    study = StudyTags()
    signal = ramp_signal(16, NZ)
    times = np.arange(16) * 2.0
    a = write_ctp_series(tmp_path, signal[:8], times[:8], study=study, series_number=4)
    write_ctp_series(tmp_path, signal[8:], times[8:], study=study, series_number=5, frame_offset=8)
    assert len(a) == 8 * NZ
    acq = _assemble_one(tmp_path)
    assert len(acq.series_uids) == 2
    np.testing.assert_array_equal(acq.perfusion.signal, signal)
    np.testing.assert_allclose(acq.perfusion.times_s[:, 0], times, atol=1e-5)


def test_series_split_in_z_keeps_each_slab_clock(tmp_path: Path) -> None:
    study = StudyTags()
    signal = ramp_signal(NT, 2 * NZ)
    times = np.arange(NT) * 2.0
    write_ctp_series(tmp_path, signal[:, :NZ], times, study=study, series_number=4)
    write_ctp_series(
        tmp_path,
        signal[:, NZ:],
        times + 1.0,  # the second slab is scanned a second later in every cycle
        study=study,
        series_number=5,
        first_slice_z_mm=20.0 + 5.0 * NZ,
    )
    acq = _assemble_one(tmp_path)
    p = acq.perfusion
    assert p.signal.shape == (NT, 2 * NZ, 16, 16)
    np.testing.assert_array_equal(p.signal, signal)
    np.testing.assert_allclose(p.times_s[:, 0], times, atol=1e-5)
    np.testing.assert_allclose(p.times_s[:, -1], times + 1.0, atol=1e-5)
    assert acq.warnings == []


def test_missing_frame_is_flagged_filled_and_reported(tmp_path: Path) -> None:
    signal = ramp_signal(NT, NZ)
    write_ctp_series(tmp_path, signal, np.arange(NT) * 2.0, omit=[(4, 2), (5, 2), (0, 1)])
    acq = _assemble_one(tmp_path)
    p = acq.perfusion
    expected_missing = np.zeros((NT, NZ), dtype=bool)
    expected_missing[[4, 5, 0], [2, 2, 1]] = True
    np.testing.assert_array_equal(p.missing, expected_missing)
    # the ramp is linear in time: interpolation between neighbours is exact
    np.testing.assert_allclose(p.signal[4:6, 2], signal[4:6, 2], atol=1e-4)
    # a missing first frame is copied from the nearest frame
    np.testing.assert_array_equal(p.signal[0, 1], signal[1, 1])
    np.testing.assert_allclose(p.times_s[:, 2], np.arange(NT) * 2.0, atol=1e-5)
    assert any("2 of 10 frames missing at slice 2 (z=30.0 mm)" in w for w in acq.warnings)
    assert any("1 of 10 frames missing at slice 1 (z=25.0 mm)" in w for w in acq.warnings)


def test_truncated_file_is_reported_and_the_rest_assembles(tmp_path: Path) -> None:
    signal = ramp_signal(NT, NZ)
    paths = write_ctp_series(tmp_path, signal, np.arange(NT) * 2.0, shuffle_names=False)
    victim = tmp_path / "t003_z001.dcm"
    assert victim in paths
    victim.write_bytes(victim.read_bytes()[:-100])
    headers, problems = scan_paths([tmp_path])
    assert [Path(p.path).name for p in problems] == ["t003_z001.dcm"]
    (study,) = build_inventory(headers)
    (acq,) = assemble_ctp(study)
    assert acq.perfusion.missing[3, 1] and acq.perfusion.missing.sum() == 1
    np.testing.assert_allclose(acq.perfusion.signal, signal, atol=1e-4)


def test_unreadable_pixels_found_at_assembly_become_a_missing_frame(tmp_path: Path) -> None:
    signal = ramp_signal(NT, NZ)
    write_ctp_series(tmp_path, signal, np.arange(NT) * 2.0, shuffle_names=False)
    headers, _ = scan_paths([tmp_path])
    victim = tmp_path / "t006_z003.dcm"
    victim.write_bytes(victim.read_bytes()[:-100])  # damaged after the scan
    (study,) = build_inventory(headers)
    (acq,) = assemble_ctp(study)
    assert acq.perfusion.missing[6, 3] and acq.perfusion.missing.sum() == 1
    assert any("t006_z003.dcm" in w for w in acq.warnings)
    assert victim not in acq.source_paths
    np.testing.assert_allclose(acq.perfusion.signal, signal, atol=1e-4)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_equal_uncompressed_exactly(tmp_path: Path, syntax: str) -> None:
    signal = ramp_signal(6, 2, 32, 32) - 1000.0  # include air-like negative HU
    times = np.arange(6) * 2.0
    write_ctp_series(tmp_path / "raw", signal, times)
    write_ctp_series(tmp_path / "packed", signal, times, transfer_syntax=syntax)
    raw = _assemble_one(tmp_path / "raw").perfusion.signal
    packed = _assemble_one(tmp_path / "packed").perfusion.signal
    np.testing.assert_array_equal(packed, raw)
    np.testing.assert_array_equal(packed, signal)


def test_ncct_in_the_same_frame_of_reference_is_not_merged(tmp_path: Path) -> None:
    study = StudyTags()
    signal = ramp_signal(NT, NZ)
    write_ctp_series(tmp_path, signal, np.arange(NT) * 2.0, study=study)
    # Same positions, same geometry and kVp as the perfusion: only the series differs.
    write_ct_volume(tmp_path, np.full((NZ, 16, 16), 35.0), study=study, first_slice_z_mm=20.0)
    headers, _ = scan_paths([tmp_path])
    (inventory,) = build_inventory(headers)
    (acq,) = assemble_ctp(inventory)
    assert len(acq.series_uids) == 1
    np.testing.assert_array_equal(acq.perfusion.signal, signal)


def test_second_reconstruction_is_a_separate_acquisition(tmp_path: Path) -> None:
    study = StudyTags()
    signal = ramp_signal(NT, NZ)
    write_ctp_series(tmp_path, signal, np.arange(NT) * 2.0, study=study, series_number=4)
    write_ctp_series(tmp_path, signal + 1, np.arange(NT) * 2.0, study=study, series_number=6)
    (inventory,) = build_inventory(scan_paths([tmp_path])[0])
    acquisitions = assemble_ctp(inventory)
    assert len(acquisitions) == 2
    assert all(a.perfusion.signal.shape == (NT, NZ, 16, 16) for a in acquisitions)


def test_uneven_slice_gaps_are_warned(tmp_path: Path) -> None:
    write_ctp_series(
        tmp_path, ramp_signal(6, NZ), np.arange(6.0), slice_spacing_mm=[5.0, 5.0, 10.0]
    )
    acq = _assemble_one(tmp_path)
    assert any("non-uniform slice gaps (5.00, 5.00, 10.00 mm)" in w for w in acq.warnings)


def test_perfusion_without_usable_times_raises_an_actionable_error(tmp_path: Path) -> None:
    write_ctp_series(tmp_path, ramp_signal(6, 2), np.arange(6.0), time_mode="temporal_position")
    headers = [
        dataclasses.replace(h, temporal_resolution_ms=None) for h in scan_paths([tmp_path])[0]
    ]
    (study,) = build_inventory(headers)
    with pytest.raises(AssemblyError, match=r"no usable frame times.*AcquisitionTime absent"):
        assemble_ctp(study)


def test_inventory_helper_lists_instances_of_a_series(tmp_path: Path) -> None:
    write_ctp_series(tmp_path, ramp_signal(5, 2), np.arange(5.0), series_uid=uid("x"))
    (study,) = build_inventory(scan_paths([tmp_path])[0])
    assert isinstance(study, StudyInventory)
    assert len(study.instances_of(uid("x"))) == 10


def test_one_series_per_time_point_assembles_like_one_series(tmp_path: Path) -> None:
    signal = ramp_signal(NT, NZ)
    times = np.arange(NT) * 1.5
    uids = write_ctp_time_point_series(tmp_path, signal, times)
    acq = _assemble_one(tmp_path)
    assert acq.series_uids == uids
    np.testing.assert_array_equal(acq.perfusion.signal, signal)
    np.testing.assert_allclose(acq.perfusion.times_s[:, 0], times, atol=1e-5)
    assert acq.warnings == [] and not acq.perfusion.missing.any()


def test_perfusion_continued_by_a_short_series_is_merged(tmp_path: Path) -> None:
    # Frames 1-8 in one series, the last three in a series of their own.
    study = StudyTags()
    signal, times = ramp_signal(11, NZ), np.arange(11) * 2.0
    write_ctp_series(tmp_path, signal[:8], times[:8], study=study, series_number=4)
    write_ctp_series(tmp_path, signal[8:], times[8:], study=study, series_number=5, frame_offset=8)
    acq = _assemble_one(tmp_path)
    assert len(acq.series_uids) == 2
    np.testing.assert_array_equal(acq.perfusion.signal, signal)


def test_tilted_perfusion_keeps_a_sheared_affine_and_the_true_slice_spacing(
    tmp_path: Path,
) -> None:
    # A gantry tilted by 18.5 degrees: slices 5 mm apart along their normal, moved
    # 5 / cos(18.5) mm along the table between slices.
    tilt = np.radians(18.5)
    signal = ramp_signal(6, NZ)
    write_ctp_series(
        tmp_path,
        signal,
        np.arange(6.0),
        orientation=(1.0, 0.0, 0.0, 0.0, np.cos(tilt), -np.sin(tilt)),
        slice_direction=(0.0, 0.0, 1.0),
        slice_spacing_mm=5.0 / np.cos(tilt),
        extra={"GantryDetectorTilt": 18.5},
    )
    acq = _assemble_one(tmp_path)
    g = acq.perfusion.geometry
    np.testing.assert_array_equal(acq.perfusion.signal, signal)
    np.testing.assert_allclose(g.affine_lps[:3, 2], [0.0, 0.0, 5.0 / np.cos(tilt)], atol=1e-6)
    np.testing.assert_allclose(g.affine_lps[:3, 1], [0.0, 0.5 * np.cos(tilt), -0.5 * np.sin(tilt)])
    assert g.voxel_size_mm == pytest.approx((5.0, 0.5, 0.5))
    assert g.voxel_volume_ml == pytest.approx(0.5 * 0.5 * 5.0 / 1000.0)
    assert np.diff(acq.slice_positions_mm) == pytest.approx([5.0] * (NZ - 1))
    assert acq.warnings == []


def test_an_image_matrix_that_cannot_hold_a_brain_is_refused(tmp_path: Path) -> None:
    write_ctp_series(tmp_path / "tiny", ramp_signal(6, 2, 2, 3), np.arange(6.0))
    write_ctp_series(
        tmp_path / "coarse", ramp_signal(6, 2), np.arange(6.0), pixel_spacing_mm=(7.0, 7.0)
    )
    with pytest.raises(AssemblyError, match=r"6 time points x 2 slices recognised, but its 2 x 3"):
        check_analysable(_assemble_one(tmp_path / "tiny"))
    check_analysable(_assemble_one(tmp_path / "coarse"))  # 16 x 16 pixels over 112 mm


def test_phantom_writes_a_tilt_as_a_tilted_scanner_does(tmp_path: Path) -> None:
    phantom = simulate_ctp(CtpPhantomOptions(matrix=32, slices=3, frames=5))
    write_ctp_study(phantom, tmp_path / "straight", extra_series=False)
    write_ctp_study(phantom, tmp_path / "tilted", extra_series=False, gantry_tilt_deg=18.5)
    straight, tilted = _assemble_one(tmp_path / "straight"), _assemble_one(tmp_path / "tilted")
    headers = [h for h in scan_paths([tmp_path / "tilted"])[0] if h.instance_number in (1, 2)]
    step = np.subtract(*[h.position_mm for h in sorted(headers, key=lambda h: -h.position_mm[2])])
    # Same pixels; the table moves 5 / cos(tilt) mm along z between slices 5 mm apart.
    np.testing.assert_array_equal(tilted.perfusion.signal, straight.perfusion.signal)
    np.testing.assert_allclose(step, [0.0, 0.0, 5.0 / np.cos(np.radians(18.5))], atol=1e-5)
    assert np.diff(tilted.slice_positions_mm) == pytest.approx([5.0, 5.0], abs=1e-5)
    # The centre of every slice stays on the table axis, where the untilted one is.
    centre = np.array([15.5, 15.5, 1.0, 1.0])
    for g in (straight.perfusion.geometry, tilted.perfusion.geometry):
        assert (g.affine_lps @ centre)[:2] == pytest.approx([0.0, 0.0], abs=1e-4)


SMALL_PHANTOM = CtpPhantomOptions(matrix=96, slices=8, frames=30, seed=2)
VOLUME_KEYS = ("core_ml", "tmax6_ml", "tmax10_ml", "mismatch_ml", "decisions", "lesion_side")


def _analyse(root: Path, options: AnalyzeOptions, **write_kw: object) -> dict:
    phantom = simulate_ctp(SMALL_PHANTOM)
    write_ctp_study(phantom, root / "study", extra_series=False, **write_kw)  # type: ignore[arg-type]
    results = analyze_paths([root / "study"], root / "out", options).results
    (analysis,) = [a for s in results["studies"] for a in s["analyses"]]
    return {"analysis": analysis, "series": results["studies"][0]["series"], "out": root / "out"}


def _core_affine(run: dict) -> np.ndarray:
    return nib.load(next(run["out"].glob("maps/**/core_mask.nii.gz"))).affine


@pytest.fixture(scope="module")
def classic_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _analyse(tmp_path_factory.mktemp("classic"), AnalyzeOptions(write_dicom=False))


def test_per_time_point_export_is_analysed_like_one_series(
    tmp_path: Path, classic_run: dict
) -> None:
    run = _analyse(tmp_path, AnalyzeOptions(write_dicom=False), split_series=30)
    a, reference = run["analysis"], classic_run["analysis"]
    assert len(a["series_instance_uids"]) == 30
    assert {s["kind"] for s in run["series"]} == {"ctp"}
    assert a["series_instance_uids"] == [s["series_instance_uid"] for s in run["series"]]
    for key in VOLUME_KEYS:
        assert a[key] == reference[key], key
    assert reference["core_ml"] > 5.0  # the comparison is not between empty results


def test_tilted_perfusion_is_analysed_to_the_same_volumes(
    tmp_path: Path, classic_run: dict
) -> None:
    run = _analyse(tmp_path, AnalyzeOptions(), gantry_tilt_deg=18.5)
    a, reference = run["analysis"], classic_run["analysis"]
    assert "gantry tilt 18.5 deg" in run["series"][0]["reason"]
    for key in VOLUME_KEYS:
        assert a[key] == reference[key], key
    assert a["analysis_grid"] == reference["analysis_grid"]
    # The maps carry the sheared grid, and the SEG on the tilted source images is written.
    tilted, straight = _core_affine(run), _core_affine(classic_run)
    assert tilted[2, 2] == pytest.approx(5.0 / np.cos(np.radians(18.5)), rel=1e-5)
    assert tilted[2, 1] != pytest.approx(0.0)  # the column axis leaves the axial plane
    assert np.linalg.det(tilted[:3, :3]) == pytest.approx(np.linalg.det(straight[:3, :3]), rel=1e-5)
    assert list(run["out"].glob("dicom/**/*SEG*.dcm"))
