"""The delay-aligned flow's oSVD reads its oscillation index at the acquired frame interval.

Measured in docs/deconvolution.md ("The oscillation index of the delay-aligned flow at the
acquired frame interval"): curves acquired every 2 s and interpolated to the 1 s grid
oscillate only a quarter as much on the grid, so the grid's index let the low, noisy
residues of core tissue keep rungs whose noise raised their flow (the core read 1.1-1.5 x
its true CBF under a late, wide bolus).
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_modules import load_benchmark
from strokeflow.analysis.ctp import analyse_ctp, frame_interval_s
from strokeflow.analysis.deconvolution import (
    oscillation_index,
    osvd_deconvolver,
    second_differences,
)
from strokeflow.analysis.filter_width import aligned_oscillation_stride
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.phantom.ctp import simulate_ctp
from strokeflow.phantom.ctp_options import CtpPhantomOptions
from strokeflow.phantom.family import simulate_lesion_case
from strokeflow.phantom.physics import arterial_input, tissue_enhancement
from strokeflow.phantom.protocols import protocol_by_name


def test_second_differences_at_a_stride() -> None:
    x = np.random.default_rng(0).normal(size=(40, 3))
    np.testing.assert_allclose(second_differences(x), np.diff(x, 2, axis=0), atol=1e-12)
    np.testing.assert_allclose(second_differences(x, 2.0), x[4:] - 2 * x[2:-2] + x[:-4])
    # A fractional stride reads between the samples, linearly.
    t = np.arange(40.0)
    want = np.stack(
        [
            x[3:, c] - 2 * np.interp(t[3:] - 1.5, t, x[:, c]) + np.interp(t[3:] - 3.0, t, x[:, c])
            for c in range(3)
        ],
        axis=1,
    )
    np.testing.assert_allclose(second_differences(x, 1.5), want, atol=1e-12)
    for bad in (0.5, float("nan"), float("inf"), 25.0):
        with pytest.raises(ValueError, match="stride"):
            second_differences(x, bad)


def test_the_index_at_the_acquired_interval_sees_the_acquired_oscillation() -> None:
    # Noise sampled every 2 s, interpolated to 1 s: on the grid it oscillates a quarter as
    # much as the acquired samples do; two samples apart, about as much (the midpoints are
    # averages, a little smoother). Noise drawn on the grid itself reads alike either way.
    rng = np.random.default_rng(1)
    coarse = 1.0 + rng.normal(size=(31, 200))
    fine = np.stack([np.interp(np.arange(61.0), np.arange(0.0, 61.0, 2.0), c) for c in coarse.T], 1)
    acquired = oscillation_index(coarse)
    assert np.median(oscillation_index(fine) / acquired) == pytest.approx(0.25, abs=0.05)
    assert np.median(oscillation_index(fine, 2.0) / acquired) == pytest.approx(0.71, abs=0.08)
    white = 1.0 + rng.normal(size=(61, 200))
    ratio = oscillation_index(white, 2.0) / oscillation_index(white)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)


def test_each_voxel_keeps_the_least_regularised_rung_below_target_at_the_stride() -> None:
    t_s = np.arange(0.0, 60.0)
    aif = arterial_input(t_s, arrival_s=8.0, peak=400.0)
    target = 0.095
    dec = osvd_deconvolver(aif, 1.0, oscillation_index=target, oscillation_stride=2.0)
    assert dec.oscillation_stride == 2.0
    clean = tissue_enhancement(t_s, aif, 40.0, 4.0, delay_s=2.0)
    conc = clean[:, None] + np.random.default_rng(3).normal(0.0, 2.0, (t_s.size, 200))
    k, rung = dec.residues(conc)
    chosen = rung > 0
    assert chosen.any()
    assert np.all(oscillation_index(k, 2.0)[chosen] < target * 1.001)
    # The grid's own index lets the same curves keep less regularised rungs.
    _, rung_grid = osvd_deconvolver(aif, 1.0, oscillation_index=target).residues(conc)
    assert np.all(rung_grid >= rung) and np.mean(rung_grid) > np.mean(rung)
    with pytest.raises(ValueError, match="oscillation_stride"):
        osvd_deconvolver(aif, 1.0, oscillation_stride=0.5)


def test_the_stride_follows_the_frame_interval_and_the_aligned_share() -> None:
    assert aligned_oscillation_stride(2.0, 1.0, 1.0) == 2.0
    assert aligned_oscillation_stride(3.0, 1.0, 0.5) == 2.0
    assert aligned_oscillation_stride(1.5, 1.0, 1.0) == 1.5
    assert aligned_oscillation_stride(2.0, 1.0, 0.0) == 1.0
    assert aligned_oscillation_stride(1.0, 1.0, 1.0) == 1.0
    assert aligned_oscillation_stride(0.5, 1.0, 1.0) == 1.0
    assert aligned_oscillation_stride(float("nan"), 1.0, 1.0) == 1.0
    times = np.arange(0.0, 60.0, 2.0)[:, None] + np.array([[0.0, 0.5]])
    assert frame_interval_s(times) == 2.0
    assert frame_interval_s(times[:1]) == 0.0


def test_a_late_wide_bolus_reads_its_core_flow_without_the_noise_lift() -> None:
    # Low cardiac output (2 s sampling, arrival 9 s, bolus twice as wide): the whole CBF
    # is read from the aligned curves. A seed outside the benchmark's bases.
    case = simulate_lesion_case("medium", protocol_by_name("low_output"), seed=5091)
    now = analyse_ctp(case.series, CtpSettings())
    grid = analyse_ctp(case.series, CtpSettings(flow_align_acquired_oscillation=False))
    width, grid_width = now.filter_width, grid.filter_width
    assert width is not None and width.aligned_flow_share == 1.0
    assert width.aligned_oscillation_stride == 2.0
    assert grid_width is not None and grid_width.aligned_oscillation_stride == 1.0
    np.testing.assert_array_equal(now.maps.tmax_s, grid.maps.tmax_s)
    truth = load_benchmark("core_budget").truth_on_grid(case, now)
    core = now.masks.tissue & (truth.core_fraction >= 0.999) & (truth.tissue_fraction > 0.99)
    assert np.count_nonzero(core) > 200
    true_cbf = truth.cbf_ml_100g_min[core]
    read = {
        name: float(np.nanmedian(a.maps.cbf_ml_100g_min[core] / true_cbf))
        for name, a in (("now", now), ("grid", grid))
    }
    assert read["grid"] > 1.12 and 0.8 < read["now"] < 1.05, read
    true_core = float(case.truth["core_ml"])
    assert abs(now.metrics.core_ml - true_core) < abs(grid.metrics.core_ml - true_core) - 3.0


def test_a_scan_too_short_for_the_tissue_keeps_the_grids_index() -> None:
    # 17 frames x 1.5 s: the delayed tissue has not washed out by the last frame. Its cut
    # curves under the stricter index read the penumbra low (core 26.8 against 19.1 mL,
    # 22.3 with the grid's index), so the grid's index stays: the same analysis as without.
    phantom = simulate_ctp(
        CtpPhantomOptions(seed=2, matrix=96, slices=6, frames=17, arterial_arrival_s=5.0)
    )
    series = PerfusionSeries(
        signal=phantom.hu,
        times_s=np.repeat(phantom.times_s[:, None], phantom.hu.shape[1], axis=1),
        geometry=Geometry(phantom.affine_lps),
    )
    short = analyse_ctp(series, CtpSettings())
    grid = analyse_ctp(series, CtpSettings(flow_align_acquired_oscillation=False))
    assert short.unwashed_tissue_ml >= 5.0
    width = short.filter_width
    assert width is not None and width.aligned_flow_share > 0
    assert width.aligned_oscillation_stride == 1.0
    np.testing.assert_array_equal(short.maps.cbf_ml_100g_min, grid.maps.cbf_ml_100g_min)
    assert short.metrics.core_ml == grid.metrics.core_ml
