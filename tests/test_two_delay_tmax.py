"""Two-delay residue-model fit: the delays and shares of a voxel that mixes two tissues."""

from __future__ import annotations

import numpy as np
import pytest

from strokeflow.analysis.maps import compute_maps
from strokeflow.analysis.residue_fit import residue_fitter
from strokeflow.phantom.physics import arterial_input, tissue_enhancement

STEP_S = 1.0
T_S = np.arange(0.0, 60.0, STEP_S)
AIF = arterial_input(T_S, arrival_s=8.0, peak=400.0)


def _mixed(late_share: float, early_s: float, late_s: float) -> np.ndarray:
    """``(t,)`` curve of a voxel holding two tissues of one flow and MTT, two delays."""
    early = tissue_enhancement(T_S, AIF, 30.0, 5.0, delay_s=early_s)
    late = tissue_enhancement(T_S, AIF, 30.0, 5.0, delay_s=late_s)
    return (1.0 - late_share) * early + late_share * late


@pytest.mark.parametrize("late_share", [0.25, 0.75])
def test_two_delay_fit_finds_both_delays_and_the_share_of_a_mixed_voxel(
    late_share: float,
) -> None:
    curve = _mixed(late_share, 6.0, 11.0)[:, None]
    fitter = residue_fitter(AIF, STEP_S)
    pair = fitter.fit_two_delays(curve, np.array([8.5]))
    assert pair.accepted[0]
    assert abs(pair.early_delay_s[0] - 6.0) <= 0.5
    assert abs(pair.late_delay_s[0] - 11.0) <= 0.5
    assert abs(pair.late_share[0] - late_share) < 0.1
    # The single-delay onset lies between the two: it cannot say which tissue dominates.
    single = fitter.fit_models(curve, np.array([8.5])).delay_s[0]
    assert 5.0 < single < 10.0
    dominant = pair.dominant_delay_s(np.array([single]))[0]
    assert dominant == (pair.late_delay_s[0] if late_share > 0.5 else pair.early_delay_s[0])


def test_two_delay_tmax_leaves_unmixed_tissue_near_the_default_readout() -> None:
    rng = np.random.default_rng(5)
    delays = np.array([4.0, 7.0, 9.0, 11.0])
    clean = np.stack([tissue_enhancement(T_S, AIF, 30.0, 5.0, delay_s=d) for d in delays], 1)
    reps = 30
    noisy = np.repeat(clean, reps, axis=1) + rng.normal(0.0, 0.5, (T_S.size, delays.size * reps))
    curves = noisy.astype(np.float32)
    default = compute_maps(curves, AIF, STEP_S).tmax_s.reshape(delays.size, reps)
    two = compute_maps(curves, AIF, STEP_S, two_delay_tmax=True).tmax_s.reshape(delays.size, reps)
    np.testing.assert_allclose(np.median(two, axis=1), delays, atol=0.6)
    np.testing.assert_allclose(np.median(two, axis=1), np.median(default, axis=1), atol=0.5)


def test_a_curve_without_enhancement_gets_no_pair() -> None:
    pair = residue_fitter(AIF, STEP_S).fit_two_delays(-np.ones((T_S.size, 1)), np.array([4.0]))
    assert not pair.accepted[0]
    assert pair.late_share[0] == 0.0
    assert pair.dominant_delay_s(np.array([4.0]))[0] == 4.0


@pytest.mark.parametrize("late_share", [0.25, 0.75])
def test_the_candidate_model_search_finds_the_pair_the_whole_table_finds(
    late_share: float,
) -> None:
    curve = _mixed(late_share, 6.0, 11.0)[:, None]
    fitter = residue_fitter(AIF, STEP_S)
    cheap = fitter.fit_two_delays(curve, np.array([8.5]))
    full = fitter.fit_two_delays(curve, np.array([8.5]), candidate_models=None)
    assert cheap.accepted[0] and full.accepted[0]
    assert abs(cheap.early_delay_s[0] - full.early_delay_s[0]) <= 0.5
    assert abs(cheap.late_delay_s[0] - full.late_delay_s[0]) <= 0.5
    assert abs(cheap.late_share[0] - full.late_share[0]) < 0.05


def test_two_delay_maps_keep_the_single_delay_readout_for_the_core() -> None:
    rng = np.random.default_rng(7)
    delays = np.array([3.0, 6.0, 8.0, 10.0])
    clean = np.stack([_mixed(0.6, d - 3.0, d + 1.0) for d in delays], 1)
    noisy = np.repeat(clean, 20, axis=1) + rng.normal(0.0, 0.5, (T_S.size, delays.size * 20))
    curves = noisy.astype(np.float32)
    default = compute_maps(curves, AIF, STEP_S)
    two = compute_maps(curves, AIF, STEP_S, two_delay_tmax=True)
    assert default.single_delay_tmax_s is None
    np.testing.assert_array_equal(default.core_tmax_s, default.tmax_s)
    # The core and its reference read the same Tmax as without the pair search ...
    np.testing.assert_array_equal(two.core_tmax_s, default.tmax_s)
    np.testing.assert_array_equal(two.cbf_ml_100g_min, default.cbf_ml_100g_min)
    # ... while the Tmax map, where a pair is accepted, follows the dominant, later tissue.
    dominant = np.repeat(delays + 1.0, 20)
    changed = two.tmax_s != default.tmax_s
    assert changed.mean() > 0.2
    err_two = np.abs(two.tmax_s - dominant)[changed]
    err_default = np.abs(default.tmax_s - dominant)[changed]
    assert np.median(err_two) < np.median(err_default)


def test_pairs_are_searched_only_where_their_window_reaches_the_threshold() -> None:
    delays = np.array([1.0, 9.0])
    clean = np.stack([_mixed(0.6, d - 3.0, d + 1.0) for d in delays], 1)
    curves = clean.astype(np.float32)
    every = compute_maps(curves, AIF, STEP_S, two_delay_tmax=True)
    gated = compute_maps(curves, AIF, STEP_S, two_delay_tmax=True, two_delay_above_s=6.0)
    # The early voxel's window ends below 6 s: it keeps the single-delay readout ...
    assert gated.tmax_s[0] == every.single_delay_tmax_s[0] != every.tmax_s[0]
    # ... and the late one gets its pair as without the gate.
    assert gated.tmax_s[1] == every.tmax_s[1] != every.single_delay_tmax_s[1]
