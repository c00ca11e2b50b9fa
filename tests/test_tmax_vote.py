"""The Tmax regions are cleaned by a 5 x 5 in-plane majority vote, the core by 3 x 3.

Measured in docs/deconvolution.md ("A wider vote for the Tmax regions"): under a wide
arterial input a shell's Tmax spreads by about +-1.3 s around its truth, so the side of a
threshold with more tissue lends the region its noise (8-10 s shells read above 10 s).
"""

from __future__ import annotations

import numpy as np
import pytest

from strokeflow.analysis.ctp import analyse_ctp
from strokeflow.analysis.lesions import clean_mask, tmax_above
from strokeflow.analysis.maps import PerfusionMaps
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.phantom.ctp import simulate_ctp
from strokeflow.phantom.ctp_options import CtpPhantomOptions


def _maps(tmax: np.ndarray) -> PerfusionMaps:
    zeros = np.zeros(tmax.shape, np.float32)
    return PerfusionMaps(zeros, zeros, zeros, tmax.astype(np.float32), zeros)


def test_a_wider_vote_evens_out_noise_on_both_sides_of_a_threshold() -> None:
    # 60 columns of tissue at 9 s beside 20 at 11 s, Tmax noise SD 2.5 s: the raw
    # threshold at 10 s takes a third of the 9 s tissue and leaves a third of the 11 s.
    rng = np.random.default_rng(3)
    truth = np.zeros((4, 80, 80), dtype=bool)
    truth[:, :, 60:] = True
    tmax = np.where(truth, 11.0, 9.0) + rng.normal(0.0, 2.5, truth.shape)
    tissue = np.ones(truth.shape, dtype=bool)
    volume = {
        vote: int(np.count_nonzero(tmax_above(_maps(tmax), tissue, 1.0, 0.0, 10.0, vote_px=vote)))
        for vote in (3, 5)
    }
    true_n = int(np.count_nonzero(truth))
    assert volume[3] > 1.2 * true_n
    assert abs(volume[5] - true_n) < 0.2 * true_n
    assert abs(volume[5] - true_n) < abs(volume[3] - true_n) / 2


def test_a_straight_border_stays_where_it_is() -> None:
    region = np.zeros((2, 40, 40), dtype=bool)
    region[:, :, 17:] = True
    tissue = np.ones(region.shape, dtype=bool)
    np.testing.assert_array_equal(clean_mask(region, tissue, 1.0, 0.0, vote_px=5), region)


@pytest.mark.parametrize("vote", [1, 2, 4])
def test_the_vote_window_is_odd_and_at_least_3(vote: int) -> None:
    mask = np.ones((1, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="vote_px"):
        clean_mask(mask, mask, 1.0, 0.0, vote_px=vote)
    with pytest.raises(ValueError, match="tmax_vote_px"):
        CtpSettings(tmax_vote_px=vote)


def test_the_analysis_votes_on_the_tmax_regions_only() -> None:
    phantom = simulate_ctp(CtpPhantomOptions(seed=4, matrix=96, slices=6))
    series = PerfusionSeries(
        signal=phantom.hu,
        times_s=np.repeat(phantom.times_s[:, None], phantom.hu.shape[1], axis=1),
        geometry=Geometry(phantom.affine_lps),
    )
    wide = analyse_ctp(series, CtpSettings())
    narrow = analyse_ctp(series, CtpSettings(tmax_vote_px=3))
    np.testing.assert_array_equal(wide.maps.tmax_s, narrow.maps.tmax_s)
    np.testing.assert_array_equal(wide.core, narrow.core)
    assert not np.array_equal(wide.tmax6, narrow.tmax6)
    vv = wide.geometry.voxel_volume_ml
    assert wide.metrics.tmax6_ml == pytest.approx(narrow.metrics.tmax6_ml, rel=0.1, abs=5 * vv)
