"""The validation family's truth is self-consistent: curves, volumes, time grids, seeds."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from strokeflow.analysis.constants import BRAIN_DENSITY_G_PER_ML, HEMATOCRIT_FACTOR
from strokeflow.analysis.decisions import evaluate_decisions, lesion_metrics
from strokeflow.phantom.bolus import arterial_curve, fine_grid_s
from strokeflow.phantom.family import simulate_lesion_case
from strokeflow.phantom.protocols import (
    PROTOCOLS,
    AcquisitionProtocol,
    acquisition_times_s,
    protocol_by_name,
)
from strokeflow.phantom.tiles import TileCase, simulate_tile_case

#: A small, fast acquisition for the lesion checks (4 x 5 mm, 1 s for 20 s).
SMALL = AcquisitionProtocol("test_small", interval_s=1.0, duration_s=20.0, slices=4)


@pytest.fixture(scope="module")
def tile_case() -> TileCase:
    return simulate_tile_case(protocol_by_name("1s_45s"), seed=3, noise=False)


def _tile_curve(
    case: TileCase, cbf: float, mtt: float, delay: float, residue: str
) -> tuple[np.ndarray, dict[str, Any]]:
    for i, t in enumerate(case.truth["tiles"]):
        if (t["cbf_ml_100g_min"], t["mtt_s"], t["delay_s"], t["residue"]) == (
            cbf,
            mtt,
            delay,
            residue,
        ):
            y, x = (t["y"][0] + 3, t["x"][0] + 3)
            assert case.tile_index[t["slice"], y, x] == i
            curve = case.series.signal[:, t["slice"], y, x].astype(np.float64)
            return curve - curve[0], t
    raise AssertionError("tile not found")


def _residue(t: np.ndarray, mtt: float, kind: str) -> np.ndarray:
    if kind == "exponential":
        return np.exp(-t / mtt)
    if kind == "gamma":
        x = 3.0 * t / mtt
        return np.exp(-x) * (1 + x + x * x / 2)
    return (t < mtt).astype(np.float64)


@pytest.mark.parametrize("residue", ["exponential", "gamma", "box"])
def test_tile_curve_is_the_direct_convolution_of_its_truth(
    tile_case: TileCase, residue: str
) -> None:
    curve, tile = _tile_curve(tile_case, 40.0, 8.0, 3.0, residue)
    # Independent of the generator's grid and trapezoid rule: a 0.005 s midpoint sum.
    dt = 0.005
    fine = np.arange(0.0, 50.0, dt)
    arrival = tile_case.truth["protocol"]["arrival_s"]
    peak = float(np.max(tile_case.truth["arterial_curve_hu"]))
    aif = arterial_curve(fine_grid_s(50.0), arrival, 1.0, 1.0)
    aif_fine = np.interp(fine - tile["delay_s"], fine_grid_s(50.0), aif, left=0.0)
    r = _residue(fine + dt / 2, tile["mtt_s"], residue)
    k = BRAIN_DENSITY_G_PER_ML / HEMATOCRIT_FACTOR * tile["cbf_ml_100g_min"] / 6000.0
    expected = k * np.convolve(aif_fine, r)[: fine.size] * dt
    times = np.asarray(tile_case.truth["frame_times_s"])[:, tile["slice"]]
    # The arterial peak of the case was drawn by its seed: scale by the sampled AIF.
    aif_at_frames = np.interp(times, fine_grid_s(50.0), aif)
    scale = peak / aif_at_frames.max()
    np.testing.assert_allclose(
        curve, scale * np.interp(times, fine, expected), atol=0.02 * curve.max()
    )


def test_tile_delay_is_a_pure_shift_so_tmax_is_the_delay(tile_case: TileCase) -> None:
    # Every residue peaks at t = 0, so Tmax is the delay exactly when a delayed tile's
    # curve is the undelayed one shifted in time (1 s frames, integer delays).
    for residue in ("exponential", "gamma", "box"):
        base, _ = _tile_curve(tile_case, 40.0, 4.0, 0.0, residue)
        for delay in (3.0, 6.0):
            shifted, tile = _tile_curve(tile_case, 40.0, 4.0, delay, residue)
            assert tile["tmax_s"] == delay
            d = int(delay)
            np.testing.assert_allclose(shifted[d:], base[:-d], atol=1e-3 * base.max())
            np.testing.assert_allclose(shifted[:d], 0.0, atol=1e-3 * base.max())


def test_tile_area_ratio_gives_its_cbv(tile_case: TileCase) -> None:
    aif = np.asarray(tile_case.truth["arterial_curve_hu"])
    for residue in ("exponential", "gamma", "box"):
        for cbf, mtt in ((20.0, 2.0), (40.0, 4.0), (60.0, 4.0)):
            curve, tile = _tile_curve(tile_case, cbf, mtt, 0.0, residue)
            cbv = HEMATOCRIT_FACTOR / BRAIN_DENSITY_G_PER_ML * 100.0 * curve.sum() / aif.sum()
            assert cbv == pytest.approx(tile["cbv_ml_100g"], rel=0.03)
            assert tile["cbv_ml_100g"] == pytest.approx(cbf * mtt / 60.0, rel=1e-3)


def test_lesion_truth_volumes_are_the_truth_masks() -> None:
    case = simulate_lesion_case("medium", SMALL, seed=7, noise=False)
    t, zones, ml = case.truth, case.zones_fine, case.fine_voxel_ml
    assert t["core_ml"] == pytest.approx(np.count_nonzero(zones == 5) * ml, abs=1e-3)
    assert t["tmax6_ml"] == pytest.approx(np.count_nonzero(zones >= 2) * ml, abs=1e-3)
    assert t["tmax10_ml"] == pytest.approx(np.count_nonzero(zones >= 4) * ml, abs=1e-3)
    assert t["core_ml"] > 0 and t["tmax10_ml"] > t["core_ml"]
    metrics = lesion_metrics(t["core_ml"], t["tmax6_ml"], t["tmax10_ml"])
    assert t["decisions"] == evaluate_decisions(metrics)
    assert t["hir"] == metrics.hypoperfusion_intensity_ratio
    # Lesion tissue only, on the stated side of the midline.
    assert np.isin(case.labels_fine[zones > 0], (5, 6, 7)).all()
    x = (np.arange(zones.shape[2]) - (zones.shape[2] - 1) / 2.0)[None, None, :]
    side = 1 if t["lesion_side"] == "left" else -1
    assert (np.broadcast_to(x * side, zones.shape)[zones > 0] > 0).all()


def test_lesion_zones_straddle_both_tmax_thresholds_and_core_is_low_flow() -> None:
    case = simulate_lesion_case("small", SMALL, seed=11, noise=False)
    tmax = case.truth["zone_tmax_s"]
    assert 4.7 <= tmax["tmax_below_6"] < 6.0 < tmax["tmax_above_6"] <= 7.3
    assert 8.7 <= tmax["tmax_below_10"] < 10.0 < tmax["tmax_above_10"] <= 11.3
    mean = case.truth["mean_normal_cbf_ml_100g_min"]
    for c in case.truth["tissue_classes"]:
        rcbf = c["cbf_ml_100g_min"] / mean
        assert (rcbf < 0.3) == (c["zone"] == "core"), c


def test_thick_slice_is_the_mean_of_the_truth_slices_it_covers() -> None:
    thin = dataclasses.replace(SMALL, slices=10, slice_mm=2)
    thick = dataclasses.replace(SMALL, slices=4, slice_mm=5)
    fine = simulate_lesion_case(
        "small", dataclasses.replace(SMALL, slices=20, slice_mm=1), 5, noise=False
    ).series.signal
    for protocol, m in ((thin, 2), (thick, 5)):
        coarse = simulate_lesion_case("small", protocol, 5, noise=False).series.signal
        expected = fine.reshape(fine.shape[0], -1, m, *fine.shape[2:]).mean(axis=2)
        np.testing.assert_allclose(coarse, expected, atol=1e-2)


def test_protocols_produce_their_stated_time_grids() -> None:
    assert len(PROTOCOLS) >= 8
    for p in PROTOCOLS:
        times = acquisition_times_s(p)
        assert times.shape[1] == p.slices
        starts = times[:, 0] - times[0, 0]
        assert times[0, 0] == 0.0 and starts[-1] <= p.duration_s + 1e-9
        steps = np.diff(times[:, 0])
        assert starts[-1] + steps[-1] > p.duration_s - 1e-9
        if p.dense_until_s is None:
            np.testing.assert_allclose(steps, p.interval_s)
        else:
            dense = times[:-1, 0] < p.dense_until_s - 1e-9
            np.testing.assert_allclose(steps[dense], p.interval_s)
            np.testing.assert_allclose(steps[~dense], p.sparse_interval_s)
        offsets = times[0]
        if p.slice_timing == "simultaneous":
            assert (offsets == 0).all()
        else:
            assert 0 < offsets.max() < p.interval_s and (np.diff(offsets) >= 0).all()
    assert {1.0, 1.5, 2.0, 3.0} <= {p.interval_s for p in PROTOCOLS}
    assert {25.0, 35.0, 45.0, 60.0, 90.0} <= {p.duration_s for p in PROTOCOLS}
    assert {"spiral", "shuttle"} <= {p.slice_timing for p in PROTOCOLS}
    assert min(p.arrival_s for p in PROTOCOLS) <= 3 and max(p.arrival_s for p in PROTOCOLS) >= 12
    assert max(p.bolus_width for p in PROTOCOLS) >= 2.5
    assert {1, 10} <= {p.slice_mm for p in PROTOCOLS}
    short = acquisition_times_s(protocol_by_name("short_25s"))
    assert short.shape[0] == 17 and short[-1, 0] == pytest.approx(24.0)


def test_wider_bolus_keeps_the_dose_and_lowers_the_peak() -> None:
    fine = fine_grid_s(200.0)
    normal, wide = arterial_curve(fine, 5.0, 1.0), arterial_curve(fine, 5.0, 2.5)
    assert wide.sum() == pytest.approx(normal.sum(), rel=0.01)
    assert wide.max() < 0.5 * normal.max()
    assert (normal[fine < 5.0] == 0).all() and (wide[fine < 5.0] == 0).all()


def test_seeds_reproduce_and_differ() -> None:
    a = simulate_lesion_case("penumbral", SMALL, seed=21)
    b = simulate_lesion_case("penumbral", SMALL, seed=21)
    c = simulate_lesion_case("penumbral", SMALL, seed=22)
    np.testing.assert_array_equal(a.series.signal, b.series.signal)
    assert a.truth == b.truth
    assert not np.array_equal(a.series.signal, c.series.signal)
