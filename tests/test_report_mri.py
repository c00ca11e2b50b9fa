"""DICOM result objects of MR stroke analyses, with and without DSC perfusion.

MR phantom -> DICOM files -> assemble_mri -> analyse_mri -> result objects, once per
study kind. The validators (dciodvfy, dsrdump, dcentvfy) run as in the CT tests; a missing
one fails the test.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from strokeflow.analysis.mri import MriAcquisition, MriAnalysis, MriSettings, analyse_mri
from strokeflow.assemble.files import scan_paths
from strokeflow.assemble.mri import assemble_mri
from strokeflow.assemble.series import build_inventory
from strokeflow.phantom.mri import MriPhantomOptions, simulate_mri
from strokeflow.phantom.mri_dicom import write_mri_study
from strokeflow.report.content import result_content
from strokeflow.report.dicom_outputs import (
    ResultContent,
    ResultObjects,
    build_result_objects,
    load_source_references,
    write_result_objects,
)
from strokeflow.report.mri_content import mri_parts, mri_source_paths
from strokeflow.report.render import SUMMARY_REGIONS
from strokeflow.report.results_json import mri_summary
from tools import require_tool

DWI_MATRIX = 96


@dataclasses.dataclass
class BuiltMri:
    acquisition: MriAcquisition
    analysis: MriAnalysis
    content: ResultContent
    sources: list[pydicom.Dataset]
    source_paths: list[Path]
    objects: ResultObjects
    paths: list[Path]


def _build(root: Path, perfusion: bool) -> BuiltMri:
    options = MriPhantomOptions(
        seed=5,
        dwi_matrix=DWI_MATRIX,
        pwi_matrix=64,
        slices=10,
        frames=45,
        perfusion=perfusion,
    )
    write_mri_study(simulate_mri(options), root / "src", distractors=False)
    headers, _ = scan_paths([root / "src"])
    study = build_inventory(headers)[0]
    acquisition = assemble_mri(study)
    assert acquisition is not None
    settings = MriSettings()
    analysis = analyse_mri(acquisition, settings)
    source_paths = mri_source_paths(study, acquisition)
    sources = load_source_references(source_paths)
    content = result_content(
        mri_summary(analysis, acquisition, settings), mri_parts(analysis, acquisition, settings)
    )
    objects = build_result_objects(content, sources)
    paths = write_result_objects(objects, root / "out")
    return BuiltMri(acquisition, analysis, content, sources, source_paths, objects, paths)


@pytest.fixture(scope="module")
def with_dsc(tmp_path_factory: pytest.TempPathFactory) -> BuiltMri:
    return _build(tmp_path_factory.mktemp("mri_dsc"), perfusion=True)


@pytest.fixture(scope="module")
def dwi_only(tmp_path_factory: pytest.TempPathFactory) -> BuiltMri:
    return _build(tmp_path_factory.mktemp("mri_dwi"), perfusion=False)


@pytest.fixture(params=["with_dsc", "dwi_only"])
def built(request: pytest.FixtureRequest) -> BuiltMri:
    result: BuiltMri = request.getfixturevalue(request.param)
    return result


def _tool(name: str) -> str:
    return require_tool(name, "dcmtk" if name == "dsrdump" else "dicom3tools")


def _colour_fraction(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> float:
    close = np.all(np.abs(pixels.astype(int) - np.array(rgb)) <= tol, axis=-1)
    return float(close.mean())


def _region_pixels(page: np.ndarray, region: str) -> np.ndarray:
    left, top, right, bottom = SUMMARY_REGIONS[region]
    h, w, _ = page.shape
    return page[int(top * h) : int(bottom * h), int(left * w) : int(right * w)]


def _sr_volumes(path: Path) -> dict[str, float]:
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path)).content
    volumes = {}
    for group in report.get_volumetric_roi_measurement_groups():
        (volume,) = [m for m in group.get_measurements() if m.name.meaning == "Volume"]
        assert volume.unit.value == "cm3"
        volumes[group.tracking_identifier] = volume.value
    return volumes


def test_dciodvfy_reports_no_errors(built: BuiltMri) -> None:
    tool = _tool("dciodvfy")
    for path in built.paths:
        run = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
        assert not errors, f"{path.name}: {errors}"


def test_dsrdump_reads_an_mr_report_with_the_adc_threshold(built: BuiltMri) -> None:
    tool = _tool("dsrdump")
    sr_path = next(p for p in built.paths if "SR_" in p.name)
    run = subprocess.run([tool, "-Ee", str(sr_path)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "error" not in run.stderr.lower()
    assert "Imaging Measurement Report" in run.stdout
    assert "(24587-8,LN" in run.stdout or "(24590-2,LN" in run.stdout
    assert "ADC < 620" in run.stdout


def test_dcentvfy_finds_patient_and_study_consistent(built: BuiltMri) -> None:
    tool = _tool("dcentvfy")
    run = subprocess.run(
        [tool, *(str(p) for p in built.source_paths[:20]), *(str(p) for p in built.paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
    assert not errors, errors


def test_sr_read_back_gives_the_volumes_of_results_json(with_dsc: BuiltMri) -> None:
    result = mri_summary(with_dsc.analysis, with_dsc.acquisition, MriSettings(), {}, []).to_json()
    volumes = _sr_volumes(next(p for p in with_dsc.paths if "SR_" in p.name))
    assert volumes == {
        "core": result["core_ml"],
        "tmax6": result["tmax6_ml"],
        "tmax10": result["tmax10_ml"],
        "mismatch": result["mismatch_ml"],
    }
    assert 0 < result["core_ml"] < result["tmax6_ml"]


def test_without_perfusion_the_sr_reports_the_core_and_unknown_decisions(
    dwi_only: BuiltMri,
) -> None:
    result = mri_summary(dwi_only.analysis, dwi_only.acquisition, MriSettings(), {}, []).to_json()
    sr_path = next(p for p in dwi_only.paths if "SR_" in p.name)
    assert _sr_volumes(sr_path) == {"core": result["core_ml"]}
    assert result["core_ml"] > 0 and result["tmax6_ml"] is None
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sr_path)).content
    (group,) = report.get_image_measurement_groups()
    answers = {e.value.meaning for e in group.get_qualitative_evaluations()}
    assert "Unknown" in answers and "No" not in answers


def test_segmentation_lies_on_the_dwi_source_grid(built: BuiltMri) -> None:
    seg = built.objects.seg
    src = built.sources[0]
    assert (seg.Rows, seg.Columns) == (DWI_MATRIX, DWI_MATRIX)
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    keys = [s.TrackingID for s in seg.SegmentSequence]
    expected = (
        ["core", "tmax6", "tmax10", "mismatch"] if built.analysis.perfusion_available else ["core"]
    )
    assert keys == expected
    volume = hd.seg.segread(next(p for p in built.paths if "SEG_" in p.name)).get_volume(
        combine_segments=False
    )
    core_ml = float(volume.array[..., 0].sum()) * float(np.prod(volume.spacing)) / 1000.0
    assert core_ml == pytest.approx(built.analysis.core_ml, abs=0.1)


def test_lesion_pages_outline_core_magenta_and_tmax6_green_on_the_dwi(with_dsc: BuiltMri) -> None:
    body = with_dsc.objects.lesions[0].pixel_array[80:-60]
    assert _colour_fraction(body, (255, 0, 255), tol=60) > 1e-4
    assert _colour_fraction(body, (0, 255, 0), tol=60) > 1e-4
    assert with_dsc.objects.lesions[0].SeriesDescription == "StrokeFlow MR stroke lesions"


def test_map_pages_are_adc_and_relative_dsc_maps(with_dsc: BuiltMri, dwi_only: BuiltMri) -> None:
    units = {spec.name: spec.unit for spec in with_dsc.content.maps}
    assert units == {
        "ADC": "x10^-6 mm²/s",
        "CBF": "relative",
        "CBV": "relative",
        "MTT": "s",
        "Tmax": "s",
    }
    assert len(with_dsc.objects.maps) == 5
    assert [spec.name for spec in dwi_only.content.maps] == ["ADC"]
    assert len(dwi_only.objects.maps) == 1
    # The DSC maps are drawn on their own grid, not the DWI one.
    cbf = with_dsc.content.maps[1]
    assert cbf.geometry is not None and cbf.values_zyx.shape[1] < DWI_MATRIX


def test_summary_without_perfusion_says_so_and_decides_nothing(dwi_only: BuiltMri) -> None:
    summary = dwi_only.content.summary
    assert all(d.met is None for d in summary.decisions)
    assert "Perfusion not available: core only" in summary.alerts
    assert dict(summary.volume_rows)["Tmax > 6 s"] == "n/a"
    page = dwi_only.objects.summary[0].pixel_array
    # The orange notice fills the empty curve area.
    assert _colour_fraction(_region_pixels(page, "curves"), (255, 160, 32), tol=40) > 0.01


def _with_orientation_offset(
    sources: list[pydicom.Dataset], offset: float
) -> list[pydicom.Dataset]:
    """Copies of the sources with the row cosines of the middle slice nudged by ``offset``."""
    out = [copy.deepcopy(ds) for ds in sources]
    middle = out[len(out) // 2]
    iop = [float(v) for v in middle.ImageOrientationPatient]
    iop[1] += offset
    middle.ImageOrientationPatient = [f"{v:.12g}" for v in iop]
    return out


def test_orientation_rounding_noise_between_slices_is_one_orientation(
    dwi_only: BuiltMri, tmp_path: Path
) -> None:
    # GE writes each slice's orientation from its own sums: differences in the 8th decimal.
    sources = _with_orientation_offset(dwi_only.sources, 3e-8)
    objects = build_result_objects(dwi_only.content, sources)
    assert objects.failures == []
    assert objects.seg is not None and objects.sr is not None
    shared = objects.seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [float(v) for v in shared.ImageOrientationPatient] == pytest.approx(
        [float(v) for v in dwi_only.sources[0].ImageOrientationPatient], abs=1e-7
    )


def test_a_result_object_that_fails_is_named_and_the_others_are_kept(
    dwi_only: BuiltMri, tmp_path: Path
) -> None:
    # One slice of another plane: no segmentation can share it, the pages still can.
    sources = _with_orientation_offset(dwi_only.sources, 0.05)
    objects = build_result_objects(dwi_only.content, sources)
    assert objects.seg is None and objects.sr is None
    assert objects.failures[0].startswith("lesion segmentation (SEG) not written: ")
    assert "orientation" in objects.failures[0]
    assert "measurement report (SR)" in objects.failures[1]
    assert objects.summary and objects.lesions and objects.maps
    names = {p.name for p in write_result_objects(objects, tmp_path)}
    assert any("SC_summary" in n for n in names) and not any("SEG" in n for n in names)
