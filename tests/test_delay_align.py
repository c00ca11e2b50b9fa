"""Tissue curves shifted to one arrival before the filter, and back (``analysis.delay_align``).

Measured in docs/deconvolution.md ("The flow of delayed tissue read from delay-aligned
curves"): under a wide arterial input the study's filter mixes penumbra shells reached at
other times, the mixed curve is wider and its residue peaks low.
"""

from __future__ import annotations

import numpy as np
import pytest

from strokeflow.analysis.delay_align import MAX_TMAX_S, alignment_shifts_frames, shift_curves
from strokeflow.analysis.denoise import profile_bilateral
from strokeflow.analysis.voxels import put_voxel_curves, voxel_curves


def _bolus(t: np.ndarray, arrival: float) -> np.ndarray:
    x = np.clip(t - arrival, 0.0, None)
    return (x**3 * np.exp(-x / 1.5)).astype(np.float32)


def test_whole_frame_shifts_move_the_curve_and_hold_its_ends() -> None:
    t = np.arange(30, dtype=np.float32)
    curves = np.stack([_bolus(t, 5.0), _bolus(t, 12.0)], axis=1)
    out = shift_curves(curves, np.array([0.0, 7.0]))
    np.testing.assert_array_equal(out[:, 0], curves[:, 0])
    np.testing.assert_allclose(out[:23, 1], curves[:23, 0], atol=1e-4, rtol=0)
    # Read beyond the last frame: the last value held.
    np.testing.assert_array_equal(out[-7:, 1], curves[-1, 1])
    back = shift_curves(out, np.array([0.0, -7.0]))
    np.testing.assert_array_equal(back[:, 1][:7], out[0, 1])
    np.testing.assert_allclose(back[7:, 1], curves[7:, 1], atol=1e-4, rtol=0)


def test_a_fractional_shift_interpolates_linearly() -> None:
    curves = np.arange(10, dtype=np.float32)[:, None] * np.float32(2.0)
    out = shift_curves(curves, np.array([0.25]))
    np.testing.assert_allclose(out[:9, 0], 2.0 * (np.arange(9) + 0.25))
    with pytest.raises(ValueError, match="shift_frames"):
        shift_curves(curves, np.zeros(2))


def test_shifts_follow_the_smoothed_delay_beyond_a_dead_zone() -> None:
    tissue = np.ones((1, 20, 20), dtype=bool)
    tmax = np.full(tissue.shape, 1.0, np.float32)
    tmax[0, :, 15:] = 9.0
    tmax[0, 0, 0] = np.nan  # unread: the tissue's median
    shifts = np.zeros(tissue.shape, np.float32)
    shifts[tissue] = alignment_shifts_frames(
        tmax, tissue, sigma_px=1.0, dead_zone_s=2.0, step_s=0.5
    )
    # Normal tissue is left where it is; far from the border the delayed half moves by
    # its delay over the median (1 s, the normal tissue's) less 2 s.
    assert np.all(shifts[0, :, :12] == 0.0)
    np.testing.assert_allclose(shifts[0, :, 18:], (9.0 - 1.0 - 2.0) / 0.5, atol=1e-3)
    # Across the border the shift grows smoothly, not in one step.
    row = shifts[0, 10]
    assert np.all(np.diff(row) >= -1e-4) and 0 < row[15] < row[18]
    # An implausible Tmax is held at MAX_TMAX_S.
    tmax[0, :, 15:] = 60.0
    far = alignment_shifts_frames(tmax, tissue, sigma_px=1.0, dead_zone_s=0.0, step_s=1.0)
    assert far.max() == pytest.approx(MAX_TMAX_S - 1.0, abs=1e-3)
    with pytest.raises(ValueError, match="step_s"):
        alignment_shifts_frames(tmax, tissue, sigma_px=1.0, dead_zone_s=2.0, step_s=0.0)


def test_aligned_filtering_keeps_the_peak_of_mixed_shells() -> None:
    # Alternating stripes of tissue reached 0 s and 4 s late, one flow, and a filter as
    # wide in profile as noise makes it: it mixes them. Filtered as they are, the curves
    # widen and their peak falls; aligned first (and shifted back), each keeps its own
    # peak and timing.
    rng = np.random.default_rng(3)
    t = np.arange(40, dtype=np.float32)
    nz, ny, nx = 1, 24, 24
    tissue = np.ones((nz, ny, nx), dtype=bool)
    delay = np.where(np.arange(nx) % 2 == 0, 0.0, 4.0)
    delay_map = np.broadcast_to(delay, (nz, ny, nx)).astype(np.float32)
    series = np.zeros((t.size, nz, ny, nx), np.float32)
    curves = np.stack([_bolus(t, 8.0 + d) for d in delay_map[tissue]], axis=1)
    curves += rng.normal(0.0, 0.1, curves.shape).astype(np.float32)
    put_voxel_curves(series, tissue, curves)
    truth_peak = float(_bolus(t, 8.0).max())

    plain = profile_bilateral(series, tissue, sigma_px=1.5, radius_px=3, strength=1e3)
    # Tmax as a study map would read it (1 s and 5 s), not smoothed, no dead zone.
    shifts = alignment_shifts_frames(
        delay_map + 1.0, tissue, sigma_px=0.0, dead_zone_s=0.0, step_s=1.0
    )
    aligned = np.zeros_like(series)
    put_voxel_curves(aligned, tissue, shift_curves(voxel_curves(series, tissue), shifts))
    back = shift_curves(
        profile_bilateral(aligned, tissue, sigma_px=1.5, radius_px=3, strength=1e3), -shifts
    )
    late = delay_map[tissue] == 4.0
    assert np.median(plain[:, late].max(axis=0)) < 0.9 * truth_peak
    assert np.median(back[:, late].max(axis=0)) > 0.95 * truth_peak
    # Shifted back, the late stripes peak 4 s after the early ones, as they were acquired.
    lag = back[:, late].argmax(axis=0).mean() - back[:, ~late].argmax(axis=0).mean()
    assert lag == pytest.approx(4.0, abs=0.5)
