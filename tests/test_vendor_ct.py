"""Real scanner CT from ``../shared/data/vendor`` (read in place): a Toshiba Aquilion ONE
4D perfusion stored one series per time point, and a GE HiSpeed head CT with gantry tilt."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared_data import shared_data
from strokeflow.analyze import NothingToAnalyseError, analyze_paths
from strokeflow.assemble import (
    AssemblyError,
    StudyInventory,
    assemble_ctp,
    build_inventory,
    scan_paths,
)
from strokeflow.assemble.ctp import check_analysable, slice_geometry
from strokeflow.assemble.series import (
    cluster_positions,
    positions_along_normal,
    slice_normal,
    tilt_deg,
)


def _study(folder: str) -> StudyInventory:
    headers, problems = scan_paths([shared_data(folder)])
    assert problems == []
    (study,) = build_inventory(headers)
    return study


def _cli_analyze(folder: Path, out: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("strokeflow")
    return subprocess.run(
        [str(exe), "analyze", str(folder), "--out", str(out), "--no-dicom"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


TOSHIBA = "vendor/toshiba_aquilion_4dctp_headers"
GE_TILT = "vendor/ge_hispeed_ct_tilt"


def test_toshiba_19_series_are_one_perfusion_of_19_time_points() -> None:
    study = _study(TOSHIBA)
    assert len(study.series) == 19
    assert {s.series_number for s in study.series} == {8}
    assert {s.kind for s in study.series} == {"ctp"}
    (merged,) = {s.merged_series_uids for s in study.series}
    assert sorted(merged) == sorted(s.series_uid for s in study.series)
    assert any(
        s.reason.startswith("time point 19 of 19 of one CT perfusion exported as 19 series")
        for s in study.series
    )
    (acq,) = assemble_ctp(study)
    assert acq.series_uids == list(merged)
    assert acq.perfusion.signal.shape == (19, 4, 2, 3)
    np.testing.assert_allclose(acq.perfusion.times_s[:, 0], np.arange(19.0))
    assert np.diff(acq.slice_positions_mm) == pytest.approx([0.5, 0.5, 0.5])


def test_toshiba_perfusion_is_refused_for_its_2x3_matrix(tmp_path: Path) -> None:
    study = _study(TOSHIBA)
    (acq,) = assemble_ctp(study)
    with pytest.raises(AssemblyError, match=r"19 time points x 4 slices recognised \(19 series"):
        check_analysable(acq)
    with pytest.raises(NothingToAnalyseError, match=r"2 x 3 image matrix .* cannot be analysed"):
        analyze_paths([shared_data(TOSHIBA)], tmp_path / "api")
    proc = _cli_analyze(shared_data(TOSHIBA), tmp_path / "cli")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "CT perfusion of 19 time points x 4 slices recognised" in proc.stderr
    assert "2 x 3 image matrix" in proc.stderr


def test_ge_tilted_head_ct_is_a_non_contrast_ct_with_its_tilt() -> None:
    (series,) = _study(GE_TILT).series
    assert series.kind == "ncct"
    assert series.n_positions == 28
    assert "gantry tilt 18.5 deg (sheared grid)" in series.reason


def test_ge_tilted_geometry_is_sheared_with_the_true_slice_spacing() -> None:
    instances = _study(GE_TILT).instances
    assert tilt_deg(instances) == pytest.approx(18.5, abs=0.05)
    z_mm, slice_of = cluster_positions(positions_along_normal(instances))
    gaps = np.diff(z_mm)
    # 4 mm slices, then 7 mm slices: the spacing along the normal, not along the table
    # (4.22 mm and 7.38 mm there).
    assert gaps[:13] == pytest.approx([4.0] * 13, abs=0.01)
    assert gaps[14:] == pytest.approx([7.0] * 13, abs=0.01)
    geometry, warning = slice_geometry(instances, slice_of, z_mm, "series GE")
    assert warning is not None and "non-uniform slice gaps" in warning
    affine = geometry.affine_lps
    normal = slice_normal(instances[0].orientation or ())
    step = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    # The slice axis runs along the table, 18.5 degrees off the normal: a sheared grid.
    np.testing.assert_allclose(step, [0.0, 0.0, 1.0], atol=1e-6)
    assert np.degrees(np.arccos(step @ normal)) == pytest.approx(18.5, abs=0.05)
    mean_gap = (z_mm[-1] - z_mm[0]) / (z_mm.size - 1)
    assert geometry.voxel_size_mm[0] == pytest.approx(mean_gap)
    assert geometry.voxel_volume_ml == pytest.approx(mean_gap * 0.4882812**2 / 1000.0)


def test_ge_tilted_head_ct_analyze_says_what_it_found(tmp_path: Path) -> None:
    proc = _cli_analyze(shared_data(GE_TILT), tmp_path / "cli")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "ncct - static volume, 28 slices" in proc.stderr
    assert "gantry tilt 18.5 deg" in proc.stderr
