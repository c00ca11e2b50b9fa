"""The per-voxel readout noise (analysis.flow_noise) and the posterior rCBF of
benchmarks/core_decision.py."""

from __future__ import annotations

import numpy as np

from benchmark_modules import load_benchmark
from strokeflow.analysis.deconvolution import osvd_deconvolver
from strokeflow.analysis.flow_noise import value_noise_sd


def _aif(n: int, step_s: float) -> np.ndarray:
    t = np.arange(n) * step_s
    x = np.clip(t - 8.0, 0, None)
    return (300.0 * (x / 4.0) ** 3 * np.exp(-x / 1.5)).astype(np.float32)


def test_value_noise_sd_matches_the_scatter_of_the_residue_at_a_lag() -> None:
    cd = load_benchmark("core_decision")
    rng = np.random.default_rng(3)
    n, step_s, sigma_hu = 50, 1.0, 2.0
    aif = _aif(n, step_s)
    # Noise only (no contrast): the oSVD keeps its most regularised rungs, as for the
    # low, noisy curves where the margin matters; the residue at any lag is a linear
    # function of the noise, whose scatter the estimate must give.
    conc = rng.normal(0.0, sigma_hu, size=(n, 1, 40, 40)).astype(np.float32)
    tissue = np.ones((1, 40, 40), dtype=bool)
    sd = value_noise_sd(conc, aif, step_s, tissue, 0.0, cd.SETTINGS.oscillation_index)
    dec = osvd_deconvolver(aif, step_s, oscillation_index=cd.SETTINGS.oscillation_index)
    k, rung = dec.residues(conc.reshape(n, -1))
    on_rung = rung == np.bincount(rung).argmax()
    lags = k[5:25][:, on_rung]
    empirical = cd.FLOW_SCALE * float(np.median(lags.std(axis=1)))
    predicted = float(np.median(sd.reshape(-1)[on_rung]))
    assert 0.8 < predicted / empirical < 1.25


def test_posterior_rcbf_moves_toward_the_nearer_dense_mode_by_the_noise_variance() -> None:
    cd = load_benchmark("core_decision")
    rng = np.random.default_rng(5)
    # Core voxels near 0.15 and penumbra near 0.55, each read with noise 0.06.
    truth = np.concatenate([np.full(2000, 0.15), np.full(6000, 0.55)])
    rcbf = (truth + rng.normal(0.0, 0.06, truth.size)).astype(np.float32)
    sd = np.full(truth.size, 0.06)
    everywhere = np.ones(truth.size, dtype=bool)
    post = cd.tweedie_rcbf(rcbf, sd, everywhere)
    # Shrinkage: the posterior is nearer the truth on average than the reading.
    assert np.mean(np.abs(post - truth)) < np.mean(np.abs(rcbf - truth))
    # Without noise the reading is kept.
    assert np.allclose(cd.tweedie_rcbf(rcbf, 0.0 * sd, everywhere), rcbf)
