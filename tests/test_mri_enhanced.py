"""Pixel containers and recognition on synthetic data: enhanced multi-frame DSC, DWI and
CT perfusion give the classic results; BOLD is not DSC, a field map is not DWI, a mosaic
without its CSA geometry is refused.

The enhanced files are written by highdicom's legacy conversion (per-frame functional
groups: plane position, frame acquisition time, rescale, b-value) from the phantoms'
classic single-frame series, so the two forms hold the same pixels and times.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicomfactory import write_ct_volume
from strokeflow.analyze import AnalyzeOptions, analyze_paths
from strokeflow.assemble.files import scan_paths
from strokeflow.assemble.mri import assemble_mri, classify_mr_series
from strokeflow.assemble.series import build_inventory
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.phantom.mri import MriPhantomOptions, simulate_mri
from strokeflow.phantom.mri_dicom import write_mri_study

FAST = AnalyzeOptions(write_maps=False, write_dicom=False)
VOLUMES = ("core_ml", "tmax6_ml", "tmax10_ml")


def _enhance(files: list[Path], out: Path, modality: str) -> None:
    """Replace single-frame files by one legacy converted enhanced multi-frame file."""
    datasets = [pydicom.dcmread(p) for p in files]
    converter = (
        hd.legacy.LegacyConvertedEnhancedMRImage
        if modality == "MR"
        else hd.legacy.LegacyConvertedEnhancedCTImage
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # window attributes the phantom does not write
        enhanced = converter(
            datasets,
            series_instance_uid=datasets[0].SeriesInstanceUID,
            series_number=int(datasets[0].SeriesNumber),
            sop_instance_uid=hd.UID(),
            instance_number=1,
        )
    for p in files:
        p.unlink()
    enhanced.save_as(out, enforce_file_format=True)


def _analysis(folder: Path) -> dict[str, Any]:
    outcome = analyze_paths([folder], folder.parent / f"{folder.name}_out", FAST)
    (analysis,) = [a for s in outcome.results["studies"] for a in s["analyses"]]
    return analysis


@pytest.fixture(scope="module")
def mri_classic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    phantom = simulate_mri(
        MriPhantomOptions(dwi_matrix=64, pwi_matrix=48, slices=6, frames=40, seed=7)
    )
    folder = tmp_path_factory.mktemp("mri") / "classic"
    write_mri_study(phantom, folder)
    return folder


def test_enhanced_dsc_gives_the_classic_volumes(mri_classic: Path, tmp_path: Path) -> None:
    enhanced = tmp_path / "enhanced"
    shutil.copytree(mri_classic, enhanced)
    _enhance(sorted((enhanced / "dsc").iterdir()), enhanced / "dsc" / "enhanced.dcm", "MR")
    classic_a, enhanced_a = _analysis(mri_classic), _analysis(enhanced)
    assert enhanced_a["perfusion_available"] is True
    for key in VOLUMES:
        assert enhanced_a[key] == pytest.approx(classic_a[key], abs=0.05), key
    assert enhanced_a["decisions"] == classic_a["decisions"]


def test_bold_time_series_without_a_bolus_is_not_dsc(mri_classic: Path, tmp_path: Path) -> None:
    bold = tmp_path / "bold"
    shutil.copytree(mri_classic, bold)
    rng = np.random.default_rng(0)
    baseline: dict[str, np.ndarray] = {}
    for path in sorted((bold / "dsc").iterdir()):
        ds = pydicom.dcmread(path)
        key = str(ds.ImagePositionPatient)
        first = baseline.setdefault(key, ds.pixel_array.astype(np.float64))
        # A resting-state BOLD run: the same image with 1 % fluctuations, no bolus.
        noisy = first * (1.0 + 0.01 * rng.standard_normal()) + rng.normal(0, 2, first.shape)
        ds.PixelData = np.clip(noisy, 0, 65535).astype(np.uint16).tobytes()
        ds.SeriesDescription = "rest_bold_ep2d"
        ds.save_as(path)
    (study,) = build_inventory(scan_paths([bold])[0])
    (role,) = [r for r in classify_mr_series(study) if r.description == "rest_bold_ep2d"]
    assert role.role == "other"
    assert role.reason.startswith("resting-state BOLD, no bolus")
    acquisition = assemble_mri(study)
    assert acquisition is not None and acquisition.pwi is None


def test_enhanced_ct_perfusion_gives_the_classic_volumes(tmp_path: Path) -> None:
    phantom = simulate_ctp(CtpPhantomOptions(matrix=96, slices=8, seed=3))
    classic = tmp_path / "classic"
    paths = write_ctp_study(phantom, classic, extra_series=False, shuffle_names=False)
    enhanced = tmp_path / "enhanced"
    shutil.copytree(classic, enhanced)
    images = [enhanced / p.relative_to(classic) for p in paths if p.suffix == ".dcm"]
    _enhance(images, enhanced / "ctp_enhanced.dcm", "CT")
    (study,) = build_inventory(scan_paths([enhanced])[0])
    (series,) = study.series
    assert series.kind == "ctp", series.reason
    classic_a = _analysis(classic)
    outcome = analyze_paths([enhanced], tmp_path / "out", AnalyzeOptions(write_maps=False))
    (enhanced_a,) = outcome.results["studies"][0]["analyses"]
    for key in VOLUMES:
        assert enhanced_a[key] == pytest.approx(classic_a[key], abs=0.05), key
    # The result objects reference the enhanced image; the SEG has one frame per slice.
    assert "dicom_errors" not in enhanced_a, enhanced_a.get("dicom_errors")
    seg = pydicom.dcmread(tmp_path / "out" / enhanced_a["dicom_dir"] / "9004_SEG_lesions.dcm")
    assert int(seg.NumberOfFrames) == 8 * len(seg.SegmentSequence)


def test_field_map_with_diffusion_b_value_zero_is_not_dwi(
    mri_classic: Path, tmp_path: Path
) -> None:
    # Philips writes DiffusionBValue 0 on every image, field maps and ASL included.
    folder = tmp_path / "fieldmap"
    shutil.copytree(mri_classic, folder)
    for path in sorted((folder / "flair").iterdir()):
        ds = pydicom.dcmread(path)
        ds.DiffusionBValue = 0.0
        ds.SeriesDescription = "B0_map_shimmed"
        ds.save_as(path)
    (study,) = build_inventory(scan_paths([folder])[0])
    roles = {r.description: r for r in classify_mr_series(study)}
    assert roles["B0_map_shimmed"].role == "other"
    assert roles["B0_map_shimmed"].reason.startswith("static MR")
    acquisition = assemble_mri(study)
    assert acquisition is not None and len(acquisition.dwi_series_uids) == 1


def test_enhanced_dwi_with_two_b_values_per_slice_gives_the_classic_core_and_a_seg(
    mri_classic: Path, tmp_path: Path
) -> None:
    enhanced = tmp_path / "enhanced_dwi"
    shutil.copytree(mri_classic, enhanced)
    _enhance(sorted((enhanced / "dwi").iterdir()), enhanced / "dwi" / "enhanced.dcm", "MR")
    outcome = analyze_paths([enhanced], tmp_path / "out", AnalyzeOptions(write_maps=False))
    (analysis,) = outcome.results["studies"][0]["analyses"]
    assert analysis["core_ml"] == pytest.approx(_analysis(mri_classic)["core_ml"], abs=0.05)
    assert "dicom_errors" not in analysis
    seg = pydicom.dcmread(tmp_path / "out" / analysis["dicom_dir"] / "9004_SEG_lesions.dcm")
    # One frame per slice and segment (the source has two frames per slice).
    n_slices = analysis["analysis_grid"]["shape_zyx"][0]
    assert int(seg.NumberOfFrames) == n_slices * len(seg.SegmentSequence)


def test_a_mosaic_without_its_csa_header_is_refused_not_read_as_one_slice(
    tmp_path: Path,
) -> None:
    write_ct_volume(tmp_path, np.zeros((2, 8, 8)), image_type=("ORIGINAL", "PRIMARY", "MOSAIC"))
    headers, problems = scan_paths([tmp_path])
    assert headers == []
    assert [p.reason for p in problems] == [
        "ImageType MOSAIC without NumberOfImagesInMosaic in the CSA header"
    ] * 2


def test_two_diffusion_acquisitions_are_never_pooled(mri_classic: Path, tmp_path: Path) -> None:
    folder = tmp_path / "repeat"
    shutil.copytree(mri_classic, folder)
    repeat_uid = hd.UID()
    (folder / "dwi_repeat").mkdir()
    for path in sorted((folder / "dwi").iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesNumber = repeat_uid, 31
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = hd.UID()
        ds.save_as(folder / "dwi_repeat" / path.name)
    (study,) = build_inventory(scan_paths([folder])[0])
    assert sum(r.role == "dwi" for r in classify_mr_series(study)) == 2
    acquisition = assemble_mri(study)
    assert acquisition is not None and len(acquisition.dwi_series_uids) == 1
    assert any("a separate diffusion acquisition" in w for w in acquisition.warnings)
