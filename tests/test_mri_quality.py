"""DSC quality flags: each fires on the phantom variant with the problem, none on a clean one."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from strokeflow.analysis.dsc import frame_displacement_mm
from strokeflow.analysis.mri import (
    DiffusionImages,
    MriAcquisition,
    MriAnalysis,
    MriSettings,
    analyse_mri,
)
from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.phantom.mri import MriPhantom, MriPhantomOptions, simulate_mri

#: Small study: 64 x 64 x 6 slices, 45 frames of 1.5 s (67 s, the bolus is over).
SMALL = MriPhantomOptions(dwi_matrix=64, pwi_matrix=64, slices=6, frames=45, seed=7)
DSC_FLAGS = {"motion", "bolus_truncated", "poor_aif", "low_snr", "short_baseline"}


def _analyse(p: MriPhantom, settings: MriSettings | None = None) -> MriAnalysis:
    assert p.dsc is not None
    return analyse_mri(
        MriAcquisition(
            dwi=DiffusionImages(p.dwi, Geometry(p.dwi_affine_lps)),
            adc=None,
            pwi=PerfusionSeries(
                p.dsc, p.dsc_times_s, Geometry(p.pwi_affine_lps), echo_time_s=p.options.te_s
            ),
        ),
        settings or MriSettings(),
    )


def _codes(a: MriAnalysis) -> set[str]:
    return {f.code for f in a.flags}


@pytest.fixture(scope="module")
def clean() -> MriAnalysis:
    return _analyse(simulate_mri(SMALL))


def test_clean_study_raises_no_dsc_flag(clean: MriAnalysis) -> None:
    assert not _codes(clean) & DSC_FLAGS, clean.flags
    assert clean.quality_ok
    assert clean.frame_motion_mm is not None and clean.frame_motion_mm.max() < 1.0


def test_head_motion_during_the_run_is_flagged() -> None:
    moved = replace(SMALL, dsc_motion_mm=(0.0, -3.0), dsc_motion_from_frame=30)
    a = _analyse(simulate_mri(moved))
    flag = next(f for f in a.flags if f.code == "motion")
    assert flag.severity == "warning"
    assert "15 of 45 frames" in flag.message
    assert a.frame_motion_mm is not None
    # The frames before the move stay put; those after show the 3 mm shift.
    assert a.frame_motion_mm[:30].max() < 1.0
    assert np.median(a.frame_motion_mm[30:]) == pytest.approx(3.0, abs=1.0)


def test_strong_bolus_darkening_is_not_mistaken_for_motion() -> None:
    # TE 100 ms: the bolus darkens the whole brain by more than half at its peak.
    a = _analyse(simulate_mri(replace(SMALL, te_s=0.1)))
    assert "motion" not in _codes(a), a.flags
    assert a.frame_motion_mm is not None and a.frame_motion_mm.max() < 1.0


def test_scan_ending_during_the_bolus_is_flagged_critical() -> None:
    # 18 frames = 27 s: the delayed, hypoperfused tissue is still filling at the end.
    a = _analyse(simulate_mri(replace(SMALL, frames=18)))
    flag = next(f for f in a.flags if f.code == "bolus_truncated")
    assert flag.severity == "critical"
    assert not a.quality_ok


def test_saturated_arteries_leave_a_poor_arterial_input() -> None:
    # A strong bolus read at a long TE saturates every artery: only partial-volume
    # voxels are left, whose peak is hardly above the tissue's.
    a = _analyse(simulate_mri(replace(SMALL, arterial_peak_r2_s=500.0, te_s=0.06)))
    flag = next(f for f in a.flags if f.code == "poor_aif")
    assert "x the tissue peak" in flag.message
    assert "aif_saturation" in _codes(a)


def test_noisy_series_is_flagged_low_snr() -> None:
    a = _analyse(simulate_mri(replace(SMALL, dsc_snr=8.0)))
    flag = next(f for f in a.flags if f.code == "low_snr")
    assert flag.severity == "warning"


def test_quality_limits_set_in_the_toml_file_reach_the_mr_analysis(
    tmp_path: Path, clean: MriAnalysis
) -> None:
    from strokeflow.config import load_settings

    toml = tmp_path / "strokeflow.toml"
    # The clean study's SNR and arterial width are fine by the defaults, not by these.
    toml.write_text("[analysis.mri.quality]\nmin_dsc_snr = 1e6\nmax_aif_fwhm_s = 1.0\n")
    settings = load_settings(toml).analysis.mri
    assert settings.quality.min_dsc_snr == 1e6
    strict = _analyse(simulate_mri(SMALL), settings)
    assert {"low_snr", "poor_aif"} <= _codes(strict)
    assert "arterial bolus is wide" in next(f for f in strict.flags if f.code == "poor_aif").message
    assert not _codes(clean) & {"low_snr", "poor_aif"}
    toml.write_text("[analysis.mri]\nmin_dsc_snr = 5.0\n")
    with pytest.raises(ValueError, match=r"min_dsc_snr moved to \[analysis.mri.quality\]"):
        load_settings(toml)


def test_frame_displacement_follows_a_shifted_head() -> None:
    head = np.zeros((4, 32, 32), dtype=bool)
    head[:, 8:24, 10:22] = True
    signal = np.where(head, 1000.0, 10.0)[None].repeat(6, axis=0).astype(np.float32)
    # Bolus: the head darkens to 40 % in frame 2; frames 4-5 moved 2 pixels along x.
    signal[2] = np.where(head, 400.0, 10.0)
    signal[4:] = np.roll(signal[4:], 2, axis=3)
    d = frame_displacement_mm(signal, head, (5.0, 1.5, 1.5))
    np.testing.assert_allclose(d, [0, 0, 0, 0, 3.0, 3.0], atol=1e-6)
