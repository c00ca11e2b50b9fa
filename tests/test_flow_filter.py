"""The CBF of a sharp-input study is read from lightly filtered curves; Tmax is not.

Measured in docs/deconvolution.md ("The flow read from lightly filtered curves"): the
study's bilateral filter mixes the curves of lesion shells reached 2-4 s apart, whose
mixed residue peaks low, so penumbra reads as core and the core's border as penumbra.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark_modules import load_benchmark
from strokeflow.analysis.ctp import analyse_ctp
from strokeflow.analysis.filter_width import flow_filter_share
from strokeflow.analysis.maps import PerfusionMaps, blend_flow, maps_on_grid
from strokeflow.analysis.settings import CtpSettings
from strokeflow.phantom.family import simulate_lesion_case
from strokeflow.phantom.protocols import protocol_by_name


def test_the_share_falls_from_a_sharp_to_a_wide_input() -> None:
    assert flow_filter_share(5.0, (6.0, 10.0)) == 1.0
    assert flow_filter_share(8.0, (6.0, 10.0)) == pytest.approx(0.5)
    assert flow_filter_share(12.0, (6.0, 10.0)) == 0.0
    # No arterial input measured: the study's filter alone.
    assert flow_filter_share(None, (6.0, 10.0)) == 0.0


def _maps(cbf: float, tmax: float) -> PerfusionMaps:
    shape = (1, 2, 2)
    return PerfusionMaps(
        cbf_ml_100g_min=np.full(shape, cbf, np.float32),
        cbv_ml_100g=np.full(shape, 4.0, np.float32),
        mtt_s=np.full(shape, 60.0 * 4.0 / cbf, np.float32),
        tmax_s=np.full(shape, tmax, np.float32),
        ttp_s=np.full(shape, 9.0, np.float32),
        reference_cbf_ml_100g_min=np.full(shape, cbf + 1.0, np.float32),
    )


def test_blending_mixes_the_flow_only() -> None:
    study, light = _maps(30.0, 7.0), _maps(50.0, 3.0)
    half = blend_flow(study, light, 0.25)
    np.testing.assert_allclose(half.cbf_ml_100g_min, 35.0)
    np.testing.assert_allclose(half.reference_cbf_ml_100g_min, 36.0)
    np.testing.assert_allclose(half.mtt_s, 60.0 * 4.0 / 35.0, rtol=1e-6)
    np.testing.assert_array_equal(half.tmax_s, study.tmax_s)
    np.testing.assert_array_equal(half.cbv_ml_100g, study.cbv_ml_100g)
    np.testing.assert_array_equal(blend_flow(study, light, 0.0).cbf_ml_100g_min, 30.0)
    with pytest.raises(ValueError, match="share"):
        blend_flow(study, light, 1.5)


def test_a_sharp_study_reads_its_flow_lightly_filtered_and_keeps_its_tmax() -> None:
    case = simulate_lesion_case("large_core", protocol_by_name("1s_45s"), seed=7003)
    lit = analyse_ctp(case.series, CtpSettings())
    plain = analyse_ctp(case.series, CtpSettings(flow_filter_iterations=0))
    width = lit.filter_width
    assert width is not None and width.flow_share == 1.0 and width.flow_sigma_mm == 2.0
    assert plain.filter_width is not None and plain.filter_width.flow_share == 0.0
    np.testing.assert_array_equal(lit.maps.tmax_s, plain.maps.tmax_s)
    assert not np.array_equal(lit.maps.cbf_ml_100g_min, plain.maps.cbf_ml_100g_min)
    # The light curves are deconvolved where the core can lie and on a sample of the rest;
    # the rest is the study filter's flow scaled to theirs: a whole map, no holes.
    tissue = lit.masks.tissue
    np.testing.assert_array_equal(
        np.isfinite(lit.maps.cbf_ml_100g_min[tissue]),
        np.isfinite(plain.maps.cbf_ml_100g_min[tissue]),
    )
    # The shells beside the core no longer read as core: closer to the truth.
    truth = float(case.truth["core_ml"])
    assert abs(lit.metrics.core_ml - truth) < abs(plain.metrics.core_ml - truth)


def test_a_noise_margin_reads_the_same_light_flow_on_the_grid() -> None:
    # With a CBF noise margin the light curves go back onto the grid (their noise is
    # pooled in plane); the flow they give is the one of the flat curves.
    case = simulate_lesion_case("medium", protocol_by_name("1s_45s"), seed=7001)
    flat = analyse_ctp(case.series, CtpSettings())
    pooled = analyse_ctp(case.series, CtpSettings(core_noise_margin_k=0.5))
    assert pooled.filter_width is not None and pooled.filter_width.flow_share == 1.0
    np.testing.assert_array_equal(pooled.maps.cbf_ml_100g_min, flat.maps.cbf_ml_100g_min)
    noise = pooled.maps.cbf_noise_sd_ml_100g_min
    assert noise is not None and flat.maps.cbf_noise_sd_ml_100g_min is None
    tissue = pooled.masks.tissue
    assert np.isfinite(noise[tissue]).mean() > 0.95 and np.nanmedian(noise[tissue]) > 0


def test_a_wide_input_reads_its_flow_from_delay_aligned_curves() -> None:
    # Under a wide input the light curves are too noisy, and the study's filter mixes the
    # penumbra's shells, which then read low. Aligned in time first, the delayed shells
    # keep more of their flow; Tmax is the study filter's either way (the case is not
    # one the method was chosen on).
    case = simulate_lesion_case("medium", protocol_by_name("1.5s_60s_wide"), seed=41)
    aligned = analyse_ctp(case.series, CtpSettings())
    plain = analyse_ctp(case.series, CtpSettings(flow_align_dead_zone_s=-1.0))
    width = aligned.filter_width
    assert width is not None and width.flow_share == 0.0 and width.flow_sigma_mm is None
    assert width.aligned_flow_share == 1.0
    assert plain.filter_width is not None and plain.filter_width.aligned_flow_share == 0.0
    np.testing.assert_array_equal(aligned.maps.tmax_s, plain.maps.tmax_s)
    tissue = aligned.masks.tissue
    np.testing.assert_array_equal(
        np.isfinite(aligned.maps.cbf_ml_100g_min[tissue]),
        np.isfinite(plain.maps.cbf_ml_100g_min[tissue]),
    )
    truth = load_benchmark("core_budget").truth_on_grid(case, aligned)
    true_cbf = truth.cbf_ml_100g_min
    shells = (
        tissue
        & (truth.tissue_fraction > 0.99)
        & (truth.tmax_s >= 6.0)
        & (truth.tmax_s < 10.0)
        & (true_cbf >= 15.0)
    )
    assert np.count_nonzero(shells) > 500
    read = {
        name: float(np.nanmedian(a.maps.cbf_ml_100g_min[shells] / true_cbf[shells]))
        for name, a in (("aligned", aligned), ("plain", plain))
    }
    assert read["plain"] < 0.65 and read["aligned"] > read["plain"] + 0.1, read
    assert read["aligned"] < 1.0, read


def test_the_light_filter_needs_valid_settings() -> None:
    with pytest.raises(ValueError, match="flow_filter_iterations"):
        CtpSettings(flow_filter_iterations=-1)
    with pytest.raises(ValueError, match="flow_filter_sigma_mm"):
        CtpSettings(flow_filter_sigma_mm=0.0)
    with pytest.raises(ValueError, match="flow_align_sigma_mm"):
        CtpSettings(flow_align_sigma_mm=0.0)
    with pytest.raises(ValueError, match="flow_align_dead_zone_s"):
        CtpSettings(flow_align_dead_zone_s=float("inf"))


def test_maps_of_a_few_voxels_go_back_onto_the_grid() -> None:
    where = np.zeros((1, 2, 3), dtype=bool)
    where[0, 0, 1] = where[0, 1, 2] = True
    flat = PerfusionMaps(
        cbf_ml_100g_min=np.array([10.0, 20.0], np.float32),
        cbv_ml_100g=np.array([1.0, 2.0], np.float32),
        mtt_s=np.array([6.0, 6.0], np.float32),
        tmax_s=np.array([2.0, 8.0], np.float32),
        ttp_s=np.array([9.0, 12.0], np.float32),
        reference_cbf_ml_100g_min=np.array([11.0, 21.0], np.float32),
    )
    grid = maps_on_grid(flat, where)
    assert grid.cbf_ml_100g_min.shape == where.shape
    assert grid.cbf_ml_100g_min[0, 0, 1] == 10.0 and grid.tmax_s[0, 1, 2] == 8.0
    assert grid.reference_cbf_ml_100g_min is not None
    assert grid.reference_cbf_ml_100g_min[0, 1, 2] == 21.0
    assert np.isnan(grid.cbf_ml_100g_min[~where]).all()
    assert grid.single_delay_tmax_s is None and grid.cbf_noise_sd_ml_100g_min is None
    with pytest.raises(ValueError, match="voxels"):
        maps_on_grid(flat, np.ones((1, 2, 3), dtype=bool))


def _study_maps() -> tuple[PerfusionMaps, np.ndarray]:
    """Tissue at CBF 40 and Tmax 1 s with two low-flow blocks, one delayed, one not."""
    shape = (2, 40, 40)
    cbf = np.full(shape, 40.0, np.float32)
    tmax = np.full(shape, 1.0, np.float32)
    cbf[:, 5:10, 5:10] = 8.0  # low flow, delayed: may be core
    tmax[:, 3:12, 3:12] = 8.0
    cbf[:, 25:30, 25:30] = 8.0  # low flow, on time: cannot be core
    maps = PerfusionMaps(
        cbf_ml_100g_min=cbf,
        cbv_ml_100g=np.full(shape, 4.0, np.float32),
        mtt_s=60.0 * 4.0 / cbf,
        tmax_s=tmax,
        ttp_s=np.full(shape, 9.0, np.float32),
        reference_cbf_ml_100g_min=cbf * np.float32(1.1),
    )
    return maps, np.ones(shape, dtype=bool)


def test_light_flow_is_read_where_the_studys_tmax_allows_a_core() -> None:
    from strokeflow.analysis.ctp import FLOW_SAMPLE_STRIDE, _flow_candidates

    maps, tissue = _study_maps()
    voxels = _flow_candidates(maps, tissue, 6.0)
    delayed = np.zeros(tissue.shape, dtype=bool)
    delayed[:, 4:11, 4:11] = True  # the block widened by one pixel (all of it delayed)
    np.testing.assert_array_equal(voxels.candidates, delayed)
    assert not (voxels.candidates & voxels.sample).any()
    assert abs(voxels.sample.sum() - tissue.sum() / FLOW_SAMPLE_STRIDE) <= delayed.sum() / 8
    # Without the core's Tmax condition any low flow may be core.
    ungated = _flow_candidates(maps, tissue, 0.0)
    assert ungated.candidates[:, 24:31, 24:31].all() and ungated.candidates[delayed].all()


def test_the_rest_takes_the_light_level_of_the_sample() -> None:
    from strokeflow.analysis.ctp import _flow_candidates, _scaled_outside

    study, tissue = _study_maps()
    voxels = _flow_candidates(study, tissue, 6.0)
    # The light curves read 1.25 x the study's flow on the sample and 2 x in the candidates:
    # the rest is scaled by the sample's 1.25 only.
    light_cbf = np.where(voxels.candidates, 2.0, 1.25) * study.cbf_ml_100g_min
    light_cbf = np.where(voxels.read, light_cbf, np.nan).astype(np.float32)
    assert study.reference_cbf_ml_100g_min is not None
    light = PerfusionMaps(
        cbf_ml_100g_min=light_cbf,
        cbv_ml_100g=study.cbv_ml_100g,
        mtt_s=study.mtt_s,
        tmax_s=study.tmax_s,
        ttp_s=study.ttp_s,
        reference_cbf_ml_100g_min=light_cbf * np.float32(1.1),
    )
    filled = _scaled_outside(study, light, voxels)
    rest = ~voxels.read
    np.testing.assert_allclose(filled.cbf_ml_100g_min[rest], 1.25 * study.cbf_ml_100g_min[rest])
    np.testing.assert_array_equal(filled.cbf_ml_100g_min[voxels.read], light_cbf[voxels.read])
    assert filled.reference_cbf_ml_100g_min is not None
    np.testing.assert_allclose(
        filled.reference_cbf_ml_100g_min[rest], 1.25 * study.reference_cbf_ml_100g_min[rest]
    )


def test_a_study_with_nothing_to_shift_keeps_its_filters_flow() -> None:
    # With no tissue delayed beyond the dead zone the aligned curves are the study
    # filter's own: its flow is kept as it is, and nothing is filtered a second time.
    case = simulate_lesion_case("small", protocol_by_name("low_output"), seed=43)
    still = analyse_ctp(case.series, CtpSettings(flow_align_dead_zone_s=60.0))
    plain = analyse_ctp(case.series, CtpSettings(flow_align_dead_zone_s=-1.0))
    assert still.filter_width is not None and still.filter_width.aligned_flow_share > 0
    assert "aligned_smoothing" not in still.timings_s
    np.testing.assert_array_equal(still.maps.cbf_ml_100g_min, plain.maps.cbf_ml_100g_min)
    assert still.metrics == plain.metrics
