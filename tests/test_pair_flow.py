"""CBF of a voxel whose curve mixes two delays: the pair's flow (``pair_flow_cap``)."""

from __future__ import annotations

import numpy as np

from strokeflow.analysis.maps import compute_maps
from strokeflow.analysis.residue_fit import residue_fitter
from strokeflow.phantom.physics import arterial_input, tissue_enhancement

STEP_S = 1.0
T_S = np.arange(0.0, 60.0, STEP_S)
AIF = arterial_input(T_S, arrival_s=8.0, peak=400.0)
CBF, MTT_S = 30.0, 5.0


def _curves(late_s: float) -> np.ndarray:
    """``(t, 2)``: an even mix of delays 6 s and ``late_s``, and the 6 s tissue alone."""
    early = tissue_enhancement(T_S, AIF, CBF, MTT_S, delay_s=6.0)
    late = tissue_enhancement(T_S, AIF, CBF, MTT_S, delay_s=late_s)
    return np.stack([0.5 * (early + late), early], axis=1).astype(np.float32)


def _cbf(curves: np.ndarray, cap: float | None) -> np.ndarray:
    maps = compute_maps(
        curves,
        AIF,
        STEP_S,
        cbf_readout="value",
        two_delay_tmax=True,
        two_delay_above_s=6.0,
        pair_flow_cap=cap,
    )
    return maps.cbf_ml_100g_min


def test_the_pair_returns_the_total_flow_of_its_two_components() -> None:
    curves = _curves(9.0)
    fitter = residue_fitter(AIF, STEP_S)
    fit = fitter.fit_models(curves, np.array([7.0, 6.0]), two_delays=True)
    assert fit.pair is not None
    assert fit.pair.accepted[0]
    # The single delay stretches its model over both and reads less flow; the pair does not.
    assert fit.pair.flow_per_s[0] > 1.2 * fit.flow_per_s[0]
    # Without an accepted pair the single-delay flow is returned.
    if not fit.pair.accepted[1]:
        assert fit.pair.flow_per_s[1] == fit.flow_per_s[1]


def test_a_mixed_voxel_reads_nearer_its_flow_and_a_single_tissue_is_unchanged() -> None:
    for late_s, cap in ((8.0, 1.5), (9.0, 1.5), (9.0, 1.25)):
        curves = _curves(late_s)
        before, after = _cbf(curves, None), _cbf(curves, cap)
        single = before[1]
        # The mix of two delays reads low: its residue peak is spread over both.
        assert before[0] < 0.85 * single
        assert before[0] < after[0] <= cap * before[0] * (1 + 1e-6)
        assert abs(after[0] - single) < abs(before[0] - single)
        np.testing.assert_allclose(after[1], single, rtol=0.01)


def test_pure_noise_and_unmixed_noisy_tissue_are_not_raised() -> None:
    rng = np.random.default_rng(3)
    tissue = tissue_enhancement(T_S, AIF, CBF, MTT_S, delay_s=7.0)
    curves = (tissue[:, None] + rng.normal(0.0, 1.0, (T_S.size, 200))).astype(np.float32)
    before, after = _cbf(curves, None), _cbf(curves, 1.5)
    assert np.all(after >= before - 1e-6)
    # A single delayed tissue at this noise seldom gets a pair: its median flow stays.
    assert abs(np.median(after) / np.median(before) - 1.0) < 0.03
