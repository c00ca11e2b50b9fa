"""DICOM result objects (SC pages, SEG, SR) built from a real phantom analysis.

Phantom -> DICOM files -> assemble -> analyse_ctp -> result objects, once per module.
The DICOM validators (dciodvfy, dsrdump, dcentvfy) must be installed; a missing one
fails the test.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from strokeflow.analysis.ctp import CtpAnalysis, analyse_ctp
from strokeflow.analysis.decisions import RULE_SETS
from strokeflow.analysis.settings import CtpSettings
from strokeflow.assemble.ctp import CtpAcquisition, assemble_ctp
from strokeflow.assemble.files import scan_paths
from strokeflow.assemble.series import build_inventory
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.report import file_writer, page_job, warm
from strokeflow.report.content import result_content
from strokeflow.report.ctp_content import ctp_parts
from strokeflow.report.dicom_outputs import (
    ResultContent,
    ResultObjects,
    build_result_objects,
    load_source_references,
    write_result_objects,
)
from strokeflow.report.render import SUMMARY_REGIONS, render_summary_page
from strokeflow.report.results_json import ctp_summary
from strokeflow.report.secondary_capture import build_secondary_captures
from strokeflow.report.segmentation import (
    build_segmentation,
    masks_to_grid,
    sort_along_normal,
    source_geometry,
)
from strokeflow.report.structured_report import sr_in_encoding
from tools import require_tool


@dataclasses.dataclass
class Built:
    acquisition: CtpAcquisition
    analysis: CtpAnalysis
    content: ResultContent
    sources: list[pydicom.Dataset]
    objects: ResultObjects
    paths: list[Path]
    source_dir: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("report")
    phantom = simulate_ctp(CtpPhantomOptions(seed=3, matrix=128, slices=8, frames=36))
    write_ctp_study(phantom, root / "src", extra_series=False)
    headers, _ = scan_paths([root / "src"])
    acquisition = assemble_ctp(build_inventory(headers)[0])[0]
    settings = CtpSettings()
    analysis = analyse_ctp(acquisition.perfusion, settings)
    sources = load_source_references(acquisition.source_paths)
    content = result_content(ctp_summary(analysis, settings), ctp_parts(analysis, settings))
    objects = build_result_objects(content, sources)
    paths = write_result_objects(objects, root / "out" / "dicom")
    return Built(acquisition, analysis, content, sources, objects, paths, root / "src")


def _tool(name: str) -> str:
    return require_tool(name, "dcmtk" if name == "dsrdump" else "dicom3tools")


def _region_pixels(page: np.ndarray, region: str) -> np.ndarray:
    left, top, right, bottom = SUMMARY_REGIONS[region]
    h, w, _ = page.shape
    return page[int(top * h) : int(bottom * h), int(left * w) : int(right * w)]


def _colour_fraction(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> float:
    close = np.all(np.abs(pixels.astype(int) - np.array(rgb)) <= tol, axis=-1)
    return float(close.mean())


def test_source_references_are_one_earliest_image_per_slice(built: Built) -> None:
    assert len(built.sources) == built.analysis.core.shape[0]
    series = {ds.SeriesInstanceUID for ds in built.sources}
    assert series <= set(built.acquisition.series_uids)
    # Earliest frame: no other file of the same slice has an earlier acquisition time.
    z = [float(ds.ImagePositionPatient[2]) for ds in built.sources]
    assert z == sorted(z)


def test_dciodvfy_reports_no_errors(built: Built, tmp_path: Path) -> None:
    tool = _tool("dciodvfy")
    extra = []
    for encoding in ("comprehensive", "enhanced"):
        path = tmp_path / f"sr_{encoding}.dcm"
        sr_in_encoding(built.objects.sr, encoding).save_as(path, enforce_file_format=True)
        extra.append(path)
    for path in [*built.paths, *extra]:
        run = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
        assert not errors, f"{path.name}: {errors}"


def test_dsrdump_reads_the_content_tree(built: Built) -> None:
    tool = _tool("dsrdump")
    sr_path = next(p for p in built.paths if "SR_" in p.name)
    run = subprocess.run([tool, "-Ee", str(sr_path)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "Imaging Measurement Report" in run.stdout
    assert "DEFUSE 3 target mismatch" in run.stdout
    assert "error" not in run.stderr.lower()


def test_dcentvfy_finds_patient_and_study_consistent(built: Built) -> None:
    tool = _tool("dcentvfy")
    sources = sorted(str(p) for p in built.acquisition.source_paths)[:20]
    run = subprocess.run(
        [tool, *sources, *(str(p) for p in built.paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
    assert not errors, errors


def test_sr_read_back_gives_the_volumes_of_results_json(built: Built) -> None:
    uids = built.acquisition.series_uids
    result = ctp_summary(built.analysis, CtpSettings(), uids, {}, []).to_json()
    ds = pydicom.dcmread(next(p for p in built.paths if "SR_" in p.name))
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    report = sr.content
    volumes = {}
    for group in report.get_volumetric_roi_measurement_groups():
        key = group.tracking_identifier
        (volume,) = [m for m in group.get_measurements() if m.name.meaning == "Volume"]
        assert volume.unit.value == "cm3"
        volumes[key] = volume.value
    assert volumes == {
        "core": result["core_ml"],
        "tmax6": result["tmax6_ml"],
        "tmax10": result["tmax10_ml"],
        "mismatch": result["mismatch_ml"],
    }
    assert result["core_ml"] > 0 and result["tmax6_ml"] > result["core_ml"]


def test_sr_states_every_decision_as_yes_or_no(built: Built) -> None:
    ds = built.objects.sr
    report = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    (group,) = report.get_image_measurement_groups()
    stated = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
    expected = {
        f"{r.name} ({r.version})": "Yes" if built.analysis.decisions[r.key] else "No"
        for r in RULE_SETS
    }
    assert stated == expected
    declared = [item.CodingSchemeDesignator for item in ds.CodingSchemeIdentificationSequence]
    assert "99STRKFLW" in declared


def test_segmentation_is_binary_on_the_source_grid(built: Built) -> None:
    seg = built.objects.seg
    src = built.sources[0]
    assert seg.SegmentationType == "BINARY"
    assert (seg.Rows, seg.Columns) == (src.Rows, src.Columns)
    assert seg.SegmentSequence[0].SegmentLabel.startswith("Ischemic core")
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    reread = hd.seg.segread(next(p for p in built.paths if "SEG_" in p.name))
    volume = reread.get_volume(combine_segments=False)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    # get_volume gives (z, y, x, segment) on the source grid.
    core_ml = float(volume.array[..., 0].sum()) * voxel_ml
    assert core_ml == pytest.approx(built.analysis.metrics.core_ml, rel=0.05, abs=0.3)
    # Segments overlap: the core lies inside Tmax > 6 s.
    core = volume.array[..., 0].astype(bool)
    tmax6 = volume.array[..., 1].astype(bool)
    assert core.any() and not (core & ~tmax6).any()


def test_secondary_captures_are_burned_in_head_pages_of_the_source_study(built: Built) -> None:
    src = built.sources[0]
    numbers = set()
    for ds in [*built.objects.summary, *built.objects.lesions, *built.objects.maps]:
        assert ds.BurnedInAnnotation == "YES"
        assert ds.BodyPartExamined == "HEAD"
        assert ds.PhotometricInterpretation == "RGB" and ds.BitsAllocated == 8
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.PatientID == src.PatientID
        assert ds.SeriesDescription.startswith("StrokeFlow CT perfusion")
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        numbers.add(int(ds.SeriesNumber))
    assert numbers == {9001, 9002, 9003}
    assert len(built.objects.maps) == 4  # CBF, CBV, MTT, Tmax


def test_summary_page_shows_decision_volumes_and_green_quality(
    built: Built, tmp_path: Path
) -> None:
    page = built.objects.summary[0].pixel_array
    Image.fromarray(page).save(tmp_path / "summary.png")
    page = np.asarray(Image.open(tmp_path / "summary.png"))
    assert page.shape == (1200, 1600, 3)
    assert built.analysis.quality_ok
    assert _colour_fraction(_region_pixels(page, "quality"), (0, 140, 60)) > 0.6
    for region in ("decisions", "volumes", "header", "footer"):
        ink = (_region_pixels(page, region).max(axis=-1) > 150).mean()
        assert ink > 0.01, f"{region} region is empty"
    # The curve plot draws the red AIF and the blue VOF.
    curves = _region_pixels(page, "curves")
    assert _colour_fraction(curves, (255, 70, 70), tol=30) > 0.001
    assert _colour_fraction(curves, (80, 160, 255), tol=30) > 0.001


def test_summary_page_turns_red_when_quality_is_not_ok(built: Built) -> None:
    bad = dataclasses.replace(
        built.content.summary,
        quality_ok=False,
        quality_lines=["CRITICAL: scan too short: the venous curve is still at 60 % of its peak"],
    )
    page = render_summary_page(bad)
    assert _colour_fraction(_region_pixels(page, "quality"), (220, 0, 0)) > 0.6
    good = render_summary_page(built.content.summary)
    assert _colour_fraction(_region_pixels(good, "quality"), (220, 0, 0)) < 0.01


def test_lesion_page_outlines_core_in_magenta_and_tmax6_in_green(built: Built) -> None:
    page = built.objects.lesions[0].pixel_array
    body = page[80:-60]  # below the legend, above the footer
    assert _colour_fraction(body, (255, 0, 255), tol=60) > 1e-4
    assert _colour_fraction(body, (0, 255, 0), tol=60) > 1e-4


def test_secondary_captures_are_uncompressed_by_default_and_rle_on_request(built: Built) -> None:
    assert built.objects.summary[0].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    page = np.zeros((120, 160, 3), dtype=np.uint8)
    page[40:80, 50:110] = (255, 0, 255)
    (sc,) = build_secondary_captures(
        [page],
        built.sources,
        series_description="test",
        series_number=9001,
        software_version="0",
        derivation="test",
        transfer_syntax_uid=RLELossless,
    )
    assert sc.file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(sc.pixel_array, page)


def _without_instance_values(ds: pydicom.Dataset) -> dict[str, object]:
    """Every top-level attribute but those that differ between two builds of one page."""
    skip = {"SOPInstanceUID", "SeriesInstanceUID", "ContentDate", "ContentTime"}
    skip |= {"InstanceCreationDate", "InstanceCreationTime", "SourceImageSequence"}
    skip |= {"DateOfSecondaryCapture", "TimeOfSecondaryCapture", "ContributionDateTime"}
    return {
        e.keyword: (
            [_without_instance_values(item) for item in e.value] if e.VR == "SQ" else e.value
        )
        for e in ds
        if e.keyword not in skip
    }


def test_secondary_capture_has_what_highdicom_from_ref_dataset_gives(built: Built) -> None:
    page = np.zeros((120, 160, 3), dtype=np.uint8)
    page[10:50, 20:90] = (0, 200, 255)
    (ours,) = build_secondary_captures(
        [page],
        built.sources,
        series_description="test",
        series_number=9001,
        software_version="0",
        derivation="test",
    )
    theirs = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=built.sources[0],
        pixel_array=page,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "P"),
        series_instance_uid=ours.SeriesInstanceUID,
        series_number=9001,
        sop_instance_uid=ours.SOPInstanceUID,
        instance_number=1,
        manufacturer="StrokeFlow",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description="test",
    )
    assert "ContributingEquipmentSequence" in theirs
    for keyword in ("BurnedInAnnotation", "BodyPartExamined", "ImageType"):
        theirs[keyword] = ours[keyword]
    for keyword in ("SoftwareVersions", "ManufacturerModelName", "DerivationDescription"):
        theirs[keyword] = ours[keyword]
    assert _without_instance_values(ours) == _without_instance_values(theirs)


def _page_series(objects: ResultObjects) -> list[dict[str, object]]:
    return [_without_instance_values(ds) for ds in objects.summary + objects.lesions + objects.maps]


def test_pages_drawn_by_the_helper_process_are_those_drawn_in_process(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(page_job, "usable_cpus", lambda: 2)  # a helper even on one CPU
    helped = build_result_objects(built.content, built.sources)
    here = build_result_objects(built.content, built.sources, parallel=False)
    assert _page_series(helped) == _page_series(here)
    assert len(helped.summary) == 1 and helped.lesions and helped.maps
    assert helped.failures == here.failures == []
    assert helped.seg is not None and here.seg is not None
    assert helped.seg.PixelData == here.seg.PixelData


def test_a_helper_process_that_dies_costs_only_time(
    built: Built, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def dies(pages: page_job.PageSet, write_fd: int) -> None:
        os._exit(3)

    monkeypatch.setattr(page_job, "_render_in_child", dies)
    monkeypatch.setattr(page_job, "usable_cpus", lambda: 2)
    objects = build_result_objects(built.content, built.sources)
    assert "page helper process failed (exit code 3)" in caplog.text
    assert _page_series(objects) == _page_series(built.objects)
    assert objects.failures == []


def test_a_page_that_cannot_be_drawn_costs_only_its_series(built: Built) -> None:
    broken = dataclasses.replace(built.content, outlined=["no such region"])
    objects = build_result_objects(broken, built.sources)
    assert objects.lesions == [] and objects.summary and objects.maps
    assert objects.seg is not None and objects.sr is not None
    assert objects.failures == ["lesion pages (Secondary Capture) not written: 'no such region'"]


def test_seg_frames_are_the_masks_on_the_source_grid_bit_for_bit(built: Built) -> None:
    seg = build_segmentation(
        built.content.regions,
        built.sources,
        built.content.geometry,
        series_description="test",
        series_number=9004,
        software_version="0",
    )
    ordered = sort_along_normal(built.sources)
    shape = (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns))
    expected = masks_to_grid(
        [r.mask_zyx for r in built.content.regions],
        built.content.geometry,
        source_geometry(ordered),
        shape,
    )
    z_of_position = {
        tuple(float(v) for v in ds.ImagePositionPatient): z for z, ds in enumerate(ordered)
    }
    frames = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = item.PlanePositionSequence[0].ImagePositionPatient
        z = z_of_position[tuple(float(v) for v in position)]
        frames.append(expected[z, :, :, segment - 1])
    # Every slice of every segment, empty or not, packed as DICOM packs 1-bit pixels.
    assert len(frames) == shape[0] * len(built.content.regions) == int(seg.NumberOfFrames)
    packed = np.packbits(np.stack(frames).ravel(), bitorder="little").tobytes()
    assert seg.PixelData == packed
    assert seg.SegmentsOverlap == "YES"


def test_seg_is_the_object_highdicom_builds_from_the_full_pixel_array(built: Built) -> None:
    ours = built.objects.seg
    assert ours is not None
    ordered = sort_along_normal(built.sources)
    shape = (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns))
    pixels = masks_to_grid(
        [r.mask_zyx for r in built.content.regions],
        built.content.geometry,
        source_geometry(ordered),
        shape,
    ).astype(np.uint8)
    theirs = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription.from_dataset(item) for item in ours.SegmentSequence
        ],
        series_instance_uid=ours.SeriesInstanceUID,
        series_number=ours.SeriesNumber,
        sop_instance_uid=ours.SOPInstanceUID,
        instance_number=1,
        manufacturer=ours.Manufacturer,
        manufacturer_model_name=ours.ManufacturerModelName,
        software_versions=ours.SoftwareVersions,
        device_serial_number=ours.DeviceSerialNumber,
        content_description=ours.ContentDescription,
        content_label=ours.ContentLabel,
        series_description=ours.SeriesDescription,
        omit_empty_frames=False,
    )
    for keyword in ("BodyPartExamined", "CodingSchemeIdentificationSequence"):
        theirs[keyword] = ours[keyword]
    for keyword in ("StudyDescription", "StudyID"):
        if keyword in ours:
            theirs[keyword] = ours[keyword]
    # Every attribute (the pixels, the overlap, every frame's functional groups) but the
    # dimension organisation UID, which highdicom makes anew each time.
    skip = {"DimensionOrganizationSequence", "DimensionIndexSequence"}
    assert {k: v for k, v in _without_instance_values(ours).items() if k not in skip} == {
        k: v for k, v in _without_instance_values(theirs).items() if k not in skip
    }
    assert ours.PixelData == theirs.PixelData and ours.SegmentsOverlap == "YES"
    for keyword in skip:
        assert [_without_uids(i) for i in ours[keyword]] == [
            _without_uids(i) for i in theirs[keyword]
        ]


def _without_uids(ds: pydicom.Dataset) -> dict[str, object]:
    return {e.keyword: e.value for e in ds if e.VR != "UI"}


def test_objects_built_after_warming_are_those_built_cold(built: Built) -> None:
    warm.start_warming()
    warm.start_warming()  # once per process
    warm.wait_until_warm()
    assert "highdicom" in sys.modules and "matplotlib.figure" in sys.modules
    objects = build_result_objects(built.content, built.sources)
    assert _page_series(objects) == _page_series(built.objects)
    assert objects.seg is not None and built.objects.seg is not None
    assert objects.seg.PixelData == built.objects.seg.PixelData
    assert objects.failures == []


def test_a_warming_step_that_fails_is_only_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fails() -> None:
        raise ImportError("no such module")

    monkeypatch.setattr(warm, "_thread", None)
    monkeypatch.setattr(warm, "_load_highdicom", fails)
    caplog.set_level(logging.DEBUG, logger=warm.__name__)
    warm.start_warming()
    warm.wait_until_warm()
    assert "warming fails failed: no such module" in caplog.text


def test_files_written_with_the_helper_process_are_those_written_in_process(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_writer, "usable_cpus", lambda: 2)  # a helper even on one CPU
    helped = write_result_objects(built.objects, tmp_path / "helped")
    monkeypatch.setattr(file_writer, "usable_cpus", lambda: 1)
    here = write_result_objects(built.objects, tmp_path / "here")
    assert [p.name for p in helped] == [p.name for p in here] == [p.name for p in built.paths]
    assert any("SEG_" in p.name for p in helped)
    for a, b in zip(helped, here, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_a_file_helper_that_dies_costs_only_time(
    built: Built,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    parent = os.getpid()
    write = file_writer._write

    def dies_in_the_helper(path: Path, ds: pydicom.Dataset) -> None:
        if os.getpid() != parent:
            os._exit(3)
        write(path, ds)

    monkeypatch.setattr(file_writer, "usable_cpus", lambda: 2)
    monkeypatch.setattr(file_writer, "_write", dies_in_the_helper)
    paths = write_result_objects(built.objects, tmp_path)
    assert "file helper process failed (exit code 3)" in caplog.text
    seg_path = next(p for p in paths if "SEG_" in p.name)
    assert seg_path.read_bytes() == next(p for p in built.paths if "SEG_" in p.name).read_bytes()


def test_no_helper_is_forked_while_warming_is_stuck(
    built: Built, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    monkeypatch.setattr(warm, "_thread", None)
    monkeypatch.setattr(warm, "_load_highdicom", release.wait)
    monkeypatch.setattr(warm, "WARM_TIMEOUT_S", 0.05)
    monkeypatch.setattr(page_job, "usable_cpus", lambda: 2)
    forks: list[int] = []
    fork = os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or fork())
    warm.start_warming()
    try:
        assert not warm.wait_until_warm(0.05)
        objects = build_result_objects(built.content, built.sources, parallel=True)
    finally:
        release.set()
    assert "warming still running" in caplog.text
    assert forks == []
    assert _page_series(objects) == _page_series(built.objects)
