"""The digital CT perfusion phantom: truth, anatomy, timing, motion and DICOM output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from strokeflow.phantom.ctp import (
    TISSUE_LABELS,
    CtpPhantom,
    CtpPhantomOptions,
    simulate_ctp,
)
from strokeflow.phantom.ctp_dicom import quantise_hu, write_ctp_study
from strokeflow.phantom.physics import arterial_input, venous_outflow
from tools import require_tool


def _phantom(**kwargs: object) -> CtpPhantom:
    defaults: dict[str, object] = {"frames": 4}
    defaults.update(kwargs)
    return simulate_ctp(CtpPhantomOptions(**defaults))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def standard() -> CtpPhantom:
    return _phantom(lesion="standard")


def test_truth_volumes_match_zone_counts(standard: CtpPhantom) -> None:
    voxel_ml = standard.truth["voxel_volume_ml"]
    assert voxel_ml == pytest.approx((230.0 / 128) ** 2 * 5.0 / 1000.0)
    zones = standard.zones
    assert standard.truth["core_ml"] == pytest.approx(np.sum(zones == 4) * voxel_ml, abs=1e-3)
    assert standard.truth["tmax6_ml"] == pytest.approx(np.sum(zones >= 2) * voxel_ml, abs=1e-3)
    assert standard.truth["tmax10_ml"] == pytest.approx(np.sum(zones >= 3) * voxel_ml, abs=1e-3)
    assert standard.truth["metrics"]["core_ml"] == round(standard.truth["core_ml"], 1)


def test_standard_lesion_sizes_and_target_mismatch(standard: CtpPhantom) -> None:
    truth = standard.truth
    assert 15.0 <= truth["core_ml"] <= 25.0
    assert 70.0 <= truth["tmax6_ml"] <= 120.0
    assert 30.0 <= truth["tmax10_ml"] <= 50.0
    assert truth["decisions"]["defuse3"] is True
    assert truth["decisions"]["malignant_profile"] is False
    assert truth["lesion_side"] == "left"


def test_lesion_is_nested_on_its_side_in_tissue_only(standard: CtpPhantom) -> None:
    zones, labels = standard.zones, standard.labels
    assert np.all(np.isin(labels[zones > 0], TISSUE_LABELS))
    # Columns run towards the patient's left: a left lesion lies right of the centre column.
    cols = np.nonzero(zones)[2]
    assert cols.min() > (standard.hu.shape[-1] - 1) / 2.0
    right = _phantom(lesion="standard", lesion_side="right")
    assert np.nonzero(right.zones)[2].max() < (standard.hu.shape[-1] - 1) / 2.0
    assert right.truth["lesion_side"] == "right"


def test_large_core_is_not_target_mismatch() -> None:
    truth = _phantom(lesion="large").truth
    assert 80.0 <= truth["core_ml"] <= 100.0
    assert truth["decisions"]["defuse3"] is False


def test_malignant_profile_is_clear_of_the_threshold() -> None:
    truth = _phantom(lesion="malignant").truth
    assert truth["core_ml"] >= 110.0 or truth["tmax10_ml"] >= 120.0
    assert truth["decisions"]["malignant_profile"] is True


def test_no_lesion_has_zero_volumes() -> None:
    phantom = _phantom(lesion="none")
    assert not phantom.zones.any()
    assert phantom.truth["core_ml"] == phantom.truth["tmax6_ml"] == 0.0
    assert phantom.truth["lesion_side"] is None
    assert phantom.truth["decisions"]["defuse3"] is False


def test_core_is_unambiguous_in_relative_cbf(standard: CtpPhantom) -> None:
    mean_cbf = standard.truth["mean_normal_cbf_ml_100g_min"]
    for p in standard.truth["tissue_parameters"]:
        rcbf = p["cbf_ml_100g_min"] / mean_cbf
        if p["zone"] == "core":
            assert rcbf < 0.2
        else:
            assert rcbf >= 0.4
        assert p["cbv_ml_100g"] == pytest.approx(p["cbf_ml_100g_min"] * p["mtt_s"] / 60, abs=2e-3)


def test_anatomy_has_realistic_attenuation(standard: CtpPhantom) -> None:
    first = standard.hu[0]
    labels = standard.labels
    assert np.median(first[labels == 2]) > 1100  # skull
    assert np.median(first[labels == 0]) < -900  # air
    assert 35 < np.median(first[labels == 5]) < 45  # grey matter
    assert 23 < np.median(first[labels == 7]) < 33  # white matter
    assert np.median(first[labels == 4]) < 12  # ventricles


def test_lesion_enhances_later_than_normal_tissue() -> None:
    phantom = _phantom(frames=30, noise_hu=0.0)
    labels, zones, hu = phantom.labels, phantom.zones, phantom.hu
    normal = hu[:, (labels == 5) & (zones == 0)].mean(axis=1)
    core = hu[:, (labels == 5) & (zones == 4)].mean(axis=1)
    assert np.argmax(core) > np.argmax(normal) + 3
    assert (core - core[0]).max() < 0.3 * (normal - normal[0]).max()


def test_arteries_and_sinus_follow_the_true_curves() -> None:
    phantom = _phantom(frames=20, noise_hu=0.0, lesion="none")
    arterial = np.asarray(phantom.truth["arterial_curve_hu"])
    venous = np.asarray(phantom.truth["venous_curve_hu"])
    enhancement = phantom.hu - phantom.hu[0]
    peak_artery = enhancement[:, phantom.labels == 8].max(axis=1)
    assert peak_artery.max() == pytest.approx(0.75 * arterial.max(), rel=0.05)
    sinus = enhancement[:, phantom.labels == 9].max(axis=1)
    assert sinus.max() == pytest.approx(venous.max(), rel=0.02)
    assert np.argmax(venous) > np.argmax(arterial)


def test_venous_curve_area_equals_arterial_area() -> None:
    t = np.arange(0.0, 200.0, 0.1)
    arterial = arterial_input(t)
    venous = venous_outflow(t, arterial, delay_s=5.5, dispersion_s=3.0)
    assert np.trapezoid(venous, t) == pytest.approx(np.trapezoid(arterial, t), rel=1e-3)
    # Delayed and dispersed: later and lower peak.
    assert t[np.argmax(venous)] > t[np.argmax(arterial)] + 5.0
    assert venous.max() < arterial.max()


def test_irregular_timing_is_dense_then_sparse() -> None:
    times = _phantom(timing="irregular", frames=40, matrix=32).times_s
    steps = np.diff(times)
    assert times[0] == 0.0
    assert np.all(np.abs(steps[times[1:] <= 29.0] - 1.0) <= 0.11)
    assert np.all(np.abs(steps[times[:-1] >= 31.0] - 3.0) <= 0.31)


def test_truncated_scan_drops_frames_and_flags_the_bolus() -> None:
    full = _phantom(frames=40, matrix=32)
    truncated = _phantom(frames=40, matrix=32, scan_duration_s=30.0)
    assert truncated.times_s[-1] <= 30.0
    assert truncated.hu.shape[0] == np.sum(full.times_s <= 30.0)
    assert truncated.truth["bolus_truncated"] is True
    assert full.truth["bolus_truncated"] is False


def test_default_noise_scales_with_pixel_size() -> None:
    assert CtpPhantomOptions().noise_sigma_hu == pytest.approx(12.0 * 0.45 / (230 / 128))
    assert CtpPhantomOptions(matrix=512).noise_sigma_hu == pytest.approx(12.0 * 0.45 / (230 / 512))
    phantom = _phantom(frames=2, noise_hu=10.0, lesion="none")
    air = phantom.hu[:, phantom.labels == 0]
    assert np.std(air[1] - air[0]) == pytest.approx(10.0 * np.sqrt(2), rel=0.05)


def test_moderate_motion_moves_the_head_as_recorded() -> None:
    phantom = _phantom(frames=20, motion="moderate", noise_hu=0.0, lesion="none")
    motion = phantom.truth["motion"]
    moved = phantom.truth["moved_frames"]
    assert moved and moved[0] > 0 and moved == list(range(moved[0], 20))
    assert all(np.hypot(m["tx_mm"], m["ty_mm"]) <= 4.2 for m in motion)
    assert max(abs(m["rotation_deg"]) for m in motion) == pytest.approx(3.0, abs=0.01)
    assert phantom.truth["uncorrectable_frames"] == []
    # The centroid of the skull follows the recorded translation (rotation is about it).
    px = 230.0 / 128

    def centroid(frame: np.ndarray) -> np.ndarray:
        w = (frame > 800).astype(float)
        rows, cols = np.indices(frame.shape[1:])
        return np.array([(w * cols).sum(), (w * rows).sum()]) / w.sum()

    shift = (centroid(phantom.hu[-1]) - centroid(phantom.hu[0])) * px
    assert shift == pytest.approx([motion[-1]["tx_mm"], motion[-1]["ty_mm"]], abs=0.3)
    assert np.array_equal(phantom.hu[moved[0] - 1] > 800, phantom.hu[0] > 800)


def test_severe_motion_records_two_uncorrectable_frames_with_double_contours() -> None:
    phantom = _phantom(frames=20, motion="severe", noise_hu=0.0)
    frames = phantom.truth["uncorrectable_frames"]
    assert len(frames) == 2
    assert all(phantom.truth["motion"][f]["through_plane_mm"] == 5.0 for f in frames)
    # Half-weight skull from each pose: far less dense bone than any clean frame.
    dense = [int(np.count_nonzero(phantom.hu[f] > 1000)) for f in range(20)]
    clean = [d for f, d in enumerate(dense) if f not in frames]
    assert max(dense[f] for f in frames) < 0.6 * min(clean)


def _read(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def test_dicom_files_read_back_as_simulated_hu_and_geometry(tmp_path: Path) -> None:
    phantom = _phantom(matrix=64, frames=3, slices=4)
    paths = write_ctp_study(phantom, tmp_path, shuffle_names=False)
    perfusion = [d for d in _read(paths) if d.SeriesDescription == "CT PERFUSION 5mm"]
    assert len(perfusion) == 3 * 4
    expected = quantise_hu(phantom.hu).astype(np.float64) - 1024.0
    assert np.max(np.abs(expected - phantom.hu)) <= 0.5 + 1e-3  # float32 at 1000 HU
    for ds in perfusion:
        f, z = divmod(int(ds.InstanceNumber) - 1, 4)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, expected[f, z])
        position = phantom.affine_lps @ np.array([0.0, 0.0, z, 1.0])
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], position[:3], atol=1e-4
        )
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([230 / 64, 230 / 64], abs=1e-5)
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert ds.KVP == 80 and ds.PatientID == "SFPHANTOM0"
    series = {d.SeriesDescription: d for d in _read(paths)}
    assert set(series) == {"CT PERFUSION 5mm", "NCCT HEAD 5mm", "CTA HEAD 1mm", "TOPOGRAM HEAD"}
    assert series["NCCT HEAD 5mm"].KVP == 120
    assert list(series["TOPOGRAM HEAD"].ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert len({d.FrameOfReferenceUID for d in _read(paths)}) == 1
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["core_ml"] == phantom.truth["core_ml"]


def test_frame_times_are_written_in_the_chosen_tag(tmp_path: Path) -> None:
    phantom = _phantom(matrix=32, frames=3, slices=1, timing="irregular")
    for tag in ("acquisition", "content", "temporal_position"):
        paths = write_ctp_study(phantom, tmp_path / tag, time_tag=tag, extra_series=False)
        datasets = sorted(_read(paths), key=lambda d: int(d.InstanceNumber))
        if tag == "temporal_position":
            assert [d.TemporalPositionIdentifier for d in datasets] == [1, 2, 3]
            assert "AcquisitionTime" not in datasets[0] and "ContentTime" not in datasets[0]
            continue
        keyword = "AcquisitionTime" if tag == "acquisition" else "ContentTime"
        other = "ContentTime" if tag == "acquisition" else "AcquisitionTime"
        seconds = [pydicom.valuerep.TM(d[keyword].value) for d in datasets]
        elapsed = [
            (s.hour * 3600 + s.minute * 60 + s.second + s.microsecond / 1e6) for s in seconds
        ]
        np.testing.assert_allclose(np.subtract(elapsed, elapsed[0]), phantom.times_s, atol=1e-5)
        assert other not in datasets[0]


@pytest.mark.parametrize("syntax", ["implicit", "rle", "jpegls", "jpeg2000"])
def test_every_transfer_syntax_is_lossless(tmp_path: Path, syntax: str) -> None:
    phantom = _phantom(matrix=32, frames=2, slices=2)
    paths = write_ctp_study(phantom, tmp_path, transfer_syntax=syntax, extra_series=False)  # type: ignore[arg-type]
    expected = quantise_hu(phantom.hu)
    for ds in _read(paths):
        f, z = divmod(int(ds.InstanceNumber) - 1, 2)
        np.testing.assert_array_equal(ds.pixel_array, expected[f, z])


def test_split_series_share_the_frame_of_reference(tmp_path: Path) -> None:
    phantom = _phantom(matrix=32, frames=4, slices=2)
    paths = write_ctp_study(phantom, tmp_path, split_series=2, extra_series=False)
    datasets = _read(paths)
    by_series: dict[str, set[int]] = {}
    for ds in datasets:
        by_series.setdefault(ds.SeriesInstanceUID, set()).add(int(ds.AcquisitionNumber))
    assert sorted(map(sorted, by_series.values())) == [[1, 2], [3, 4]]
    assert len({d.FrameOfReferenceUID for d in datasets}) == 1


def test_same_seed_gives_the_same_files(tmp_path: Path) -> None:
    def write(name: str, seed: int) -> dict[str, bytes]:
        phantom = _phantom(matrix=32, frames=2, slices=2, seed=seed)
        write_ctp_study(phantom, tmp_path / name)
        return {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()}

    first, second, other = write("a", 3), write("b", 3), write("c", 4)
    assert first == second
    assert first["truth.json"] != other["truth.json"]
    assert not (set(first) & set(other)) - {"truth.json"}


def test_dciodvfy_reports_no_errors(tmp_path: Path) -> None:
    require_tool("dciodvfy", "dicom3tools")
    phantom = _phantom(matrix=32, frames=2, slices=2)
    for syntax in ("explicit", "jpegls"):
        paths = write_ctp_study(
            phantom, tmp_path / syntax, transfer_syntax=syntax, shuffle_names=False
        )  # type: ignore[arg-type]
        for path in paths:
            result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            report = result.stdout + result.stderr
            errors = [line for line in report.splitlines() if line.startswith("Error")]
            assert not errors, f"{path.name}: {errors}"


def test_every_instance_has_its_own_sop_instance_uid(tmp_path: Path) -> None:
    # Frame 1 slice 12 and frame 11 slice 2 once shared a UID (entropy parts joined bare).
    phantom = _phantom(matrix=32, frames=12, slices=12)
    paths = write_ctp_study(phantom, tmp_path, extra_series=False)
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]
    assert len(uids) == len(set(uids)) == 12 * 12
