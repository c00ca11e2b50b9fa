"""A whole MR stroke study through real DICOM: recognition, assembly, analysis, JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from strokeflow.analysis.mri import MriSettings, analyse_mri
from strokeflow.assemble.files import scan_paths
from strokeflow.assemble.mri import assemble_mri, classify_mr_series
from strokeflow.assemble.series import StudyInventory, build_inventory
from strokeflow.phantom.mri import MriPhantom, MriPhantomOptions, simulate_mri
from strokeflow.phantom.mri_dicom import write_mri_phantom_cli, write_mri_study
from strokeflow.report.nifti import write_mri_maps
from strokeflow.report.results_json import mri_summary


def _study(folder: Path) -> StudyInventory:
    headers, problems = scan_paths([folder])
    assert problems == []
    studies = build_inventory(headers)
    assert len(studies) == 1
    return studies[0]


@pytest.fixture(scope="module")
def siemens_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[MriPhantom, StudyInventory]:
    phantom = simulate_mri(
        MriPhantomOptions(dwi_matrix=128, pwi_matrix=64, slices=10, frames=50, seed=5)
    )
    folder = tmp_path_factory.mktemp("mri_siemens")
    write_mri_study(phantom, folder, vendor="siemens", dwi_split_series=True)
    return phantom, _study(folder)


def test_series_of_a_mixed_study_are_recognised(
    siemens_study: tuple[MriPhantom, StudyInventory],
) -> None:
    _, study = siemens_study
    roles = {r.description: r for r in classify_mr_series(study)}
    assert roles["t2_tirm_tra_dark-fluid FLAIR"].role == "other"
    assert "FLAIR" in roles["t2_tirm_tra_dark-fluid FLAIR"].reason
    assert roles["SWI_Images"].role == "other" and "SWI" in roles["SWI_Images"].reason
    # One series per b-value: both are DWI, each with its own b-value.
    dwi = [r for r in classify_mr_series(study) if r.role == "dwi"]
    assert sorted(b for r in dwi for b in r.b_values) == [0.0, 1000.0]
    assert all("Siemens" in r.reason for r in dwi)
    assert roles["ep2d_diff_3scan_trace_ADC"].role == "adc"
    assert roles["ep2d_perf"].role == "dsc" and "50 time points" in roles["ep2d_perf"].reason


def test_mri_study_matches_truth(
    siemens_study: tuple[MriPhantom, StudyInventory], caplog: pytest.LogCaptureFixture
) -> None:
    phantom, study = siemens_study
    with caplog.at_level(logging.INFO, logger="strokeflow.assemble.mri"):
        acq = assemble_mri(study)
    assert acq is not None and acq.dwi is not None and acq.adc is not None
    assert acq.pwi is not None and acq.pwi.echo_time_s == pytest.approx(0.03)
    assert len(acq.dwi_series_uids) == 2
    assert "ignored: FLAIR" in caplog.text
    a = analyse_mri(acq)
    t = phantom.truth
    assert a.metrics is not None
    assert abs(a.metrics.core_ml - t["core_ml"]) < 5.0
    assert abs(a.metrics.tmax6_ml - t["tmax6_ml"]) < 0.1 * t["tmax6_ml"]
    assert a.decisions == t["decisions"]
    assert a.quality_ok, a.flags

    settings = MriSettings()
    entry = mri_summary(a, acq, settings, dict(a.timings_s), list(acq.warnings)).to_json()
    ct_keys = {
        "kind", "series_instance_uids", "core_ml", "tmax6_ml", "tmax10_ml", "mismatch_ml",
        "mismatch_ratio", "hypoperfusion_intensity_ratio", "core_to_penumbra_ratio",
        "lesion_side", "decisions", "decision_rules", "collaterals", "thresholds",
        "rcbf_reference", "aif", "vof", "motion", "analysis_grid", "quality", "warnings",
        "method", "timings_s",
    }  # fmt: skip
    assert ct_keys <= set(entry)
    assert entry["kind"] == "mri" and entry["perfusion_available"] is True
    assert entry["adc_series_instance_uid"] == acq.adc_series_uid
    assert entry["pwi_series_instance_uids"] == list(acq.pwi_series_uids)
    assert entry["aif"]["saturated_voxels_rejected"] > 0
    json.dumps(entry)


def test_maps_are_written(siemens_study: tuple[MriPhantom, StudyInventory], tmp_path: Path) -> None:
    _, study = siemens_study
    acq = assemble_mri(study)
    assert acq is not None
    paths = write_mri_maps(analyse_mri(acq), tmp_path)
    names = {p.name for p in paths}
    assert {"core_mask.nii.gz", "tmax6_mask.nii.gz", "pwi_tmax_s.nii.gz"} <= names


def test_cli_body_writes_a_core_only_study_with_truth(tmp_path: Path) -> None:
    line = write_mri_phantom_cli(
        tmp_path, perfusion=False, dwi_matrix=64, slices=8, vendor="philips", seed=4
    )
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert f"core {truth['core_ml']:.1f} mL" in line
    acq = assemble_mri(_study(tmp_path))
    assert acq is not None and acq.pwi is None
    a = analyse_mri(acq)
    assert not a.perfusion_available
    entry = mri_summary(a, acq, MriSettings(), {}, []).to_json()
    assert entry["perfusion_available"] is False
    assert entry["tmax6_ml"] is None and entry["decisions"]["defuse3"] is None
    assert abs(entry["core_ml"] - truth["core_ml"]) < 5.0


def test_cli_body_rejects_unknown_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--vendor must be one of"):
        write_mri_phantom_cli(tmp_path, vendor="acme")


def test_study_with_only_structural_series_has_nothing_for_mri(tmp_path: Path) -> None:
    phantom = simulate_mri(
        MriPhantomOptions(dwi_matrix=32, slices=4, perfusion=False, adc_map=False)
    )
    paths = write_mri_study(phantom, tmp_path)
    for p in paths:  # keep FLAIR and SWI only
        if p.parent.name not in ("flair", "swi"):
            p.unlink()
    study = _study(tmp_path)
    assert {r.role for r in classify_mr_series(study)} == {"other"}
    assert assemble_mri(study) is None
