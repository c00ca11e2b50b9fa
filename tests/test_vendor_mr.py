"""Real MR scanner DICOM from four vendors, analysed as a user would (read in place).

The folders of ``../shared/data/vendor`` are volunteers and phantoms, so the right core is
about 0 mL; each test pins what its README says a trustworthy reader does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest

from shared_data import shared_data
from strokeflow.analyze import analyze_paths

#: Any volunteer data set: a core above this is a false core.
MAX_VOLUNTEER_CORE_ML = 5.0


def _analyse(folder: str, out: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Run the real analysis; return (study entry, its MR analysis, output folder)."""
    outcome = analyze_paths([shared_data(f"vendor/{folder}")], out)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(outcome.results))
    (study,) = [s for s in on_disk["studies"] if s["analyses"]]
    (analysis,) = study["analyses"]
    assert analysis["kind"] == "mri"
    assert analysis["core_ml"] < MAX_VOLUNTEER_CORE_ML
    assert "dicom_errors" not in analysis, analysis.get("dicom_errors")
    for s in on_disk["studies"]:
        for series in s["series"]:
            assert "is not CT" not in series["reason"] or series["modality"] != "MR"
    return study, analysis, out / analysis["dicom_dir"]


def _series(study: dict[str, Any], number: int) -> dict[str, Any]:
    (series,) = [s for s in study["series"] if s["series_number"] == number]
    return series


def test_ge_oblique_dwi_with_orientation_jitter_gives_all_objects(tmp_path: Path) -> None:
    study, analysis, dicom_dir = _analyse("ge_signa_dwi_oblique", tmp_path)
    dwi = _series(study, 4)
    assert dwi["kind"] == "dwi" and "GE (0043,xx39)" in dwi["reason"]
    assert "b = 0, 1000" in dwi["reason"]
    seg = pydicom.dcmread(dicom_dir / "9004_SEG_lesions.dcm")
    assert seg.NumberOfFrames == analysis["analysis_grid"]["shape_zyx"][0]
    assert (dicom_dir / "9005_SR_measurements.dcm").exists()


def test_philips_dti_leaves_the_private_object_out_and_has_no_false_core(
    tmp_path: Path,
) -> None:
    study, analysis, _ = _analyse("philips_ingenia_dti_classic", tmp_path)
    dti = _series(study, 701)
    assert dti["kind"] == "dwi"
    assert "12 directions combined" in dti["reason"]
    assert "1 object left out: no ImagePositionPatient" in dti["reason"]
    assert any("left out" in w for w in analysis["warnings"])
    # The tiny Philips b-values are b0: two shells, not six.
    assert "b = 0, 1000 s/mm²" in dti["reason"]
    codes = {f["code"] for f in analysis["quality"]["flags"]}
    assert "symmetric_low_adc" in codes  # the deep white matter pattern, flagged


def test_siemens_mosaic_is_unpacked_into_25_slices(tmp_path: Path) -> None:
    study, analysis, dicom_dir = _analyse("siemens_prisma_mosaic_dwi", tmp_path)
    assert analysis["analysis_grid"]["shape_zyx"] == [25, 128, 128]
    dwi = _series(study, 4)
    assert dwi["kind"] == "dwi" and "25 slices" in dwi["reason"]
    seg = pydicom.dcmread(dicom_dir / "9004_SEG_lesions.dcm")
    z = sorted(
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in seg.PerFrameFunctionalGroupsSequence
    )
    # 25 slices 5.2 mm apart along an oblique normal (cos 6 degrees): ~124 mm of slab.
    assert len(z) == 25 and z[-1] - z[0] == pytest.approx(24 * 5.2 * 0.9949, abs=0.1)


def test_canon_untagged_images_are_the_b0(tmp_path: Path) -> None:
    study, analysis, _ = _analyse("canon_galan_dti", tmp_path)
    dti = _series(study, 7006)
    assert dti["kind"] == "dwi"
    assert "40 untagged images taken as b = 0" in dti["reason"]
    assert "b = 0, 1500 s/mm²" in dti["reason"]
    assert analysis["adc"]["source"] == "computed"  # from those b0 and the b = 1500 trace
    assert analysis["adc"]["b_value_s_mm2"] == 1500.0


def test_siemens_xa30_enhanced_scanner_adc_is_used(tmp_path: Path) -> None:
    study, analysis, dicom_dir = _analyse("siemens_xa30_enhanced_dwi", tmp_path)
    adc = _series(study, 11)
    assert adc["kind"] == "adc"
    assert analysis["adc_series_instance_uid"] == adc["series_instance_uid"]
    assert analysis["adc"]["source"] == "scanner"
    assert _series(study, 12)["kind"] == "dwi" and "b = 2500" in _series(study, 12)["reason"]
    assert analysis["analysis_grid"]["shape_zyx"] == [39, 72, 72]
    assert pydicom.dcmread(dicom_dir / "9004_SEG_lesions.dcm").NumberOfFrames == 39
