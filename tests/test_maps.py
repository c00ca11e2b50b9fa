"""Perfusion maps from curves, and resampling of irregular per-slice time series."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest

from strokeflow.analysis.maps import compute_maps
from strokeflow.analysis.resample import resample_uniform
from strokeflow.phantom.physics import arterial_input, tissue_enhancement

STEP_S = 1.0
T_S = np.arange(0.0, 60.0, STEP_S)
AIF = arterial_input(T_S, arrival_s=8.0, peak=400.0)


def _noisy(curves: np.ndarray, noise_hu: float, reps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tiled = np.repeat(curves, reps, axis=1)
    return (tiled + rng.normal(0.0, noise_hu, tiled.shape)).astype(np.float32)


@pytest.mark.parametrize("delay_s", [0.0, 1.0, 2.5, 4.0, 6.0, 8.0])
def test_tmax_recovers_delay(delay_s: float) -> None:
    curve = tissue_enhancement(T_S, AIF, 50.0, 4.0, delay_s=delay_s)
    maps = compute_maps(curve[:, None].astype(np.float32), AIF, STEP_S)
    assert maps.tmax_s[0] == pytest.approx(delay_s, abs=1.0)


def test_tmax_tracks_delay_under_noise() -> None:
    # With noise the oSVD regularises more, and the smoothed residue peaks later than
    # its onset: a constant lag (about +1.3 s here), while differences in delay survive.
    delays = np.array([0.0, 1.0, 2.5, 4.0, 6.0, 8.0])
    curves = np.stack([tissue_enhancement(T_S, AIF, 50.0, 4.0, delay_s=d) for d in delays], axis=1)
    maps = compute_maps(_noisy(curves, 1.0, 40), AIF, STEP_S)
    lag = np.median(maps.tmax_s.reshape(delays.size, 40), axis=1) - delays
    assert np.all((lag > -0.5) & (lag < 2.0))
    assert np.ptp(lag) < 0.7


def test_negative_lag_tmax_is_clipped_to_zero() -> None:
    # Tissue that enhances 3 s before the arterial curve: a wrapped-around residue peak.
    curve = tissue_enhancement(T_S, AIF, 50.0, 4.0, delay_s=-3.0)
    maps = compute_maps(curve[:, None].astype(np.float32), AIF, STEP_S)
    assert maps.tmax_s[0] == 0.0


def test_cbv_area_ratio_within_5_percent_at_moderate_noise() -> None:
    cbfs, mtts = [20.0, 40.0, 60.0], [3.0, 6.0]
    curves = np.stack(
        [tissue_enhancement(T_S, AIF, f, m, delay_s=2.0) for f in cbfs for m in mtts], axis=1
    )
    truth = np.array([f * m / 60.0 for f in cbfs for m in mtts])
    maps = compute_maps(_noisy(curves, 2.0, 50), AIF, STEP_S)
    cbv = maps.cbv_ml_100g.reshape(len(truth), 50).mean(axis=1)
    np.testing.assert_allclose(cbv, truth, rtol=0.05)


def test_cbf_close_to_truth_for_long_transit_times() -> None:
    curve = tissue_enhancement(T_S, AIF, 40.0, 8.0, delay_s=1.0)
    maps = compute_maps(curve[:, None].astype(np.float32), AIF, STEP_S)
    assert maps.cbf_ml_100g_min[0] == pytest.approx(40.0, rel=0.15)


def test_mtt_is_central_volume_ratio() -> None:
    curves = np.stack([tissue_enhancement(T_S, AIF, 30.0, m) for m in (3.0, 6.0, 9.0)], axis=1)
    maps = compute_maps(_noisy(curves, 1.0, 5), AIF, STEP_S)
    np.testing.assert_allclose(
        maps.mtt_s, 60.0 * maps.cbv_ml_100g / maps.cbf_ml_100g_min, rtol=1e-5
    )
    assert np.all(np.diff(maps.mtt_s.reshape(3, 5).mean(axis=1)) > 0)


def test_ttp_finds_the_tissue_peak_from_grid_start() -> None:
    curve = np.exp(-0.5 * ((T_S - 23.4) / 3.0) ** 2)
    maps = compute_maps(curve[:, None].astype(np.float32), AIF, STEP_S)
    assert maps.ttp_s[0] == pytest.approx(23.4, abs=0.2)


def test_masked_voxels_are_nan_and_maps_keep_frame_shape() -> None:
    curve = tissue_enhancement(T_S, AIF, 40.0, 4.0)
    conc = np.broadcast_to(curve[:, None, None, None], (T_S.size, 2, 3, 4)).astype(np.float32)
    mask = np.zeros((2, 3, 4), dtype=bool)
    mask[1, :, 1:3] = True
    maps = compute_maps(conc, AIF, STEP_S, mask=mask)
    for values in (maps.cbf_ml_100g_min, maps.cbv_ml_100g, maps.mtt_s, maps.tmax_s, maps.ttp_s):
        assert values.shape == (2, 3, 4)
        assert values.dtype == np.float32
        assert np.all(np.isnan(values[~mask]))
        assert np.all(np.isfinite(values[mask]))


def test_non_finite_curves_give_nan_not_garbage() -> None:
    conc = np.stack([tissue_enhancement(T_S, AIF, 40.0, 4.0)] * 3, axis=1).astype(np.float32)
    conc[10, 1] = np.nan
    maps = compute_maps(conc, AIF, STEP_S)
    assert np.isnan(maps.cbf_ml_100g_min[1])
    assert np.all(np.isfinite(maps.cbf_ml_100g_min[[0, 2]]))


@pytest.mark.parametrize("method", ["osvd", "ssvd"])
def test_chunking_gives_identical_results(method: Literal["osvd", "ssvd"]) -> None:
    delays = np.linspace(0.0, 8.0, 9)
    curves = np.stack([tissue_enhancement(T_S, AIF, 40.0, 5.0, delay_s=d) for d in delays], axis=1)
    conc = _noisy(curves, 2.0, 11)
    mask = np.ones(conc.shape[1], dtype=bool)
    mask[::7] = False
    whole = compute_maps(conc, AIF, STEP_S, method=method, mask=mask)
    chunked = compute_maps(
        conc,
        AIF,
        STEP_S,
        method=method,
        mask=mask,
        chunk_voxels=13,
    )
    for name in ("cbf_ml_100g_min", "cbv_ml_100g", "mtt_s", "tmax_s", "ttp_s"):
        np.testing.assert_allclose(
            getattr(chunked, name), getattr(whole, name), rtol=1e-5, atol=1e-6, equal_nan=True
        )


def test_compute_maps_reports_bad_inputs() -> None:
    conc = np.zeros((T_S.size, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="one sample per frame"):
        compute_maps(conc, AIF[:-1], STEP_S)
    with pytest.raises(ValueError, match="no positive area"):
        compute_maps(conc, np.zeros(T_S.size), STEP_S)
    with pytest.raises(ValueError, match="mask"):
        compute_maps(conc, AIF, STEP_S, mask=np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="flow_window_s"):
        compute_maps(conc, AIF, STEP_S, flow_window_s=(-1.0, 3.0))


def test_resample_irregular_dense_then_sparse_sampling() -> None:
    times = np.concatenate([np.arange(0.0, 30.0, 1.0), np.arange(30.0, 61.0, 3.0)])
    signal = (2.0 * times + 5.0)[:, None] * np.ones((1, 4))  # linear: interpolation is exact
    out, grid = resample_uniform(signal, times, 0.5)
    np.testing.assert_allclose(grid, np.arange(0.0, 60.5, 0.5))
    assert out.shape == (grid.size, 4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 2], 2.0 * grid + 5.0, rtol=1e-6)


def test_resample_per_slice_shifted_times_to_one_common_grid() -> None:
    nt, nz = 30, 3
    offsets = np.array([0.0, 0.4, 1.3])
    times = np.arange(nt)[:, None] * 2.0 + offsets[None, :]
    # Every slice samples the same underlying curve at its own times.
    curve = np.sin(times / 7.0)
    signal = np.broadcast_to(curve[:, :, None, None], (nt, nz, 2, 2)).copy()
    out, grid = resample_uniform(signal, times, 1.0)
    assert grid[0] == pytest.approx(1.3)  # latest first time over slices
    assert grid[-1] <= times[-1].min() + 1e-9  # earliest last time
    assert out.shape == (grid.size, nz, 2, 2)
    truth = np.sin(grid / 7.0)
    for z in range(nz):
        np.testing.assert_allclose(out[:, z, 1, 0], truth, atol=0.015)  # h^2/8 max|f"|
    # Slices now agree with each other despite their different clocks.
    np.testing.assert_allclose(out[:, 0], out[:, 2], atol=0.02)


def test_resample_rejects_non_increasing_times() -> None:
    times = np.array([0.0, 1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="frame 2"):
        resample_uniform(np.zeros((4, 3)), times, 0.5)
    with pytest.raises(ValueError, match="too little time"):
        resample_uniform(np.zeros((2, 1, 1, 1)), np.array([[0.0], [0.5]]), 1.0)


def test_noisy_curves_never_give_nan_tmax_inside_the_mask() -> None:
    t = np.arange(0.0, 60.0, 1.0)
    aif = arterial_input(t)
    rng = np.random.default_rng(3)
    clean = np.stack([tissue_enhancement(t, aif, 5.0, 10.0, delay_s=d) for d in (0, 6, 12)], 1)
    curves = np.repeat(clean, 200, axis=1) + rng.normal(0.0, 2.0, (t.size, 600))
    maps = compute_maps(curves.astype(np.float32), aif, 1.0)
    assert np.isfinite(maps.tmax_s).all()
    assert np.isfinite(maps.cbf_ml_100g_min).all()


@pytest.mark.parametrize("step_s", [1.0, 3.0])
def test_fitted_tmax_of_a_box_residue_is_its_onset_not_a_point_of_its_plateau(
    step_s: float,
) -> None:
    # A box residue is flat for its whole transit time: the maximum of the regularised
    # oSVD residue lands anywhere on it, while the fitted residue model starts at the delay.
    t = np.arange(0.0, 60.0 + step_s / 2, step_s)
    aif = arterial_input(t, arrival_s=6.0, peak=400.0)
    delays = np.array([2.0, 6.0, 9.5])
    curves = np.stack(
        [tissue_enhancement(t, aif, 30.0, 10.0, d, residue_kind="box") for d in delays], axis=1
    )
    noisy = _noisy(curves, 1.0, 20, seed=5)
    fit = compute_maps(noisy, aif, step_s, fitted_tmax=True)
    svd = compute_maps(noisy, aif, step_s)
    fit_err = np.median(fit.tmax_s.reshape(3, 20), axis=1) - delays
    svd_err = np.median(svd.tmax_s.reshape(3, 20), axis=1) - delays
    assert np.all(np.abs(fit_err) < 1.0)
    assert np.max(np.abs(svd_err)) > 2.0


def test_cbf_of_a_noisy_long_residue_is_not_inflated_by_its_tail() -> None:
    # Low flow, long transit time: the oSVD residue is low and long, and its noise maxima
    # far along the tail exceed its regularised peak; searching near the fitted onset
    # keeps the CBF of such hypoperfused tissue closer to the truth.
    curve = tissue_enhancement(T_S, AIF, 12.0, 12.0, delay_s=4.0)
    noisy = _noisy(curve[:, None], 2.0, 300, seed=11)
    near = compute_maps(noisy, AIF, STEP_S).cbf_ml_100g_min.mean()
    wide = compute_maps(noisy, AIF, STEP_S, flow_window_s=None).cbf_ml_100g_min.mean()
    assert abs(near / 12.0 - 1.0) < abs(wide / 12.0 - 1.0)
    assert near < wide


def test_cbf_bias_correction_applies_to_the_flow_read_near_the_fitted_onset() -> None:
    # Short transit time: regularisation lowers the residue peak; the correction must
    # act on the CBF the flow window reads, not on a value that window then replaces.
    curve = tissue_enhancement(T_S, AIF, 60.0, 3.0, delay_s=1.0)[:, None].astype(np.float32)
    plain = compute_maps(curve, AIF, STEP_S).cbf_ml_100g_min[0]
    corrected = compute_maps(curve, AIF, STEP_S, correct_cbf_bias=True).cbf_ml_100g_min[0]
    assert corrected > plain * 1.03
    assert abs(corrected - 60.0) < abs(plain - 60.0)
