"""The CT perfusion pipeline: 4D HU in, maps, lesion volumes, decisions and quality out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
from scipy import ndimage
from scipy.ndimage import gaussian_filter1d

from strokeflow.analysis.brainmask import BrainMasks, brain_masks
from strokeflow.analysis.ctp_quality import (
    MAX_UNWASHED_TISSUE_ML,
    acquisition_flags,
    input_flags,
    motion_flags,
    tissue_truncation_flag,
    unwashed_tissue,
)
from strokeflow.analysis.decisions import (
    HYPOPERFUSION_TMAX_S,
    SEVERE_HYPOPERFUSION_TMAX_S,
    LesionMetrics,
    evaluate_assessable_decisions,
    lesion_metrics,
)
from strokeflow.analysis.delay_align import alignment_shifts_frames, shift_curves
from strokeflow.analysis.denoise import profile_bilateral, profile_bilateral_curves
from strokeflow.analysis.filter_width import (
    FilterWidth,
    aligned_oscillation_stride,
    choose_filter_width,
    flow_filter_share,
    tissue_contrast_to_noise,
)
from strokeflow.analysis.hemispheres import LEFT, RIGHT, Hemispheres, find_hemispheres
from strokeflow.analysis.inputs import (
    VascularCurve,
    arterial_rise_index,
    bolus_arrival_index,
    first_pass_start,
    partial_volume_scale,
    select_aif,
    select_vof,
)
from strokeflow.analysis.lesions import (
    TmaxRegion,
    ctp_lesion_masks,
    extra_tmax_regions,
    tmax_above,
    volume_ml,
)
from strokeflow.analysis.maps import PerfusionMaps, blend_flow, compute_maps, maps_on_grid
from strokeflow.analysis.motion import MotionResult, bin_inplane, correct_motion
from strokeflow.analysis.quality import QualityFlag, quality_ok
from strokeflow.analysis.resample import resample_uniform
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.slabs import SlabPlan, binning_factor, combine_slices, plan_slabs
from strokeflow.analysis.stages import AnalysisError, analysis_stage, usable_cpus
from strokeflow.analysis.timing import StageClock
from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.analysis.voxels import put_voxel_curves, voxel_curves

__all__ = ["AnalysisError", "CtpAnalysis", "analyse_ctp", "preliminary_affected_side"]

#: Arterial and venous voxels must be blood-like before contrast (HU), and not touch
#: bone (HU above BONE_HU), whose edge smears into its neighbours when motion is corrected.
MAX_BLOOD_BASELINE_HU = 120.0
BONE_HU = 300.0
#: An arterial input peaking lower than this is noise, not a bolus: even a small artery
#: at a quarter partial volume of a 300 HU first pass rises ~75 HU.
MIN_AIF_PEAK_HU = 30.0
#: Fewer time frames cannot sample a baseline, a first pass and its washout.
MIN_FRAMES = 8


#: Tmax>10 s (and what is derived from it) when the tissue has not washed out.
TRUNCATION_NOT_ASSESSABLE = "not assessable: scan too short"


@dataclass
class CtpAnalysis:
    """Everything the CTP pipeline produced for one acquisition.

    Maps and masks are on the analysis grid ``geometry`` (after slab combination and
    in-plane binning), axis order ``(z, y, x)``.

    ``tmax6`` and ``tmax10`` are the published Tmax > 6 s and > 10 s regions the
    decisions are made on; ``tmax_extra`` holds a site's other configured thresholds.

    ``not_assessable`` maps quantities and decision keys that must not be asserted
    (e.g. ``"tmax10_ml"``, ``"malignant_profile"``, ``"tmax12_ml"`` for an extra
    threshold) to the reason; their decisions are None.
    """

    geometry: Geometry
    maps: PerfusionMaps
    rcbf: np.ndarray
    masks: BrainMasks
    core: np.ndarray
    tmax6: np.ndarray
    tmax10: np.ndarray
    baseline_hu: np.ndarray
    metrics: LesionMetrics
    decisions: dict[str, bool | None]
    lesion_side: str | None
    reference_cbf_ml_100g_min: float
    reference_description: str
    aif: VascularCurve
    vof: VascularCurve | None
    aif_scale: float
    grid_s: np.ndarray
    motion: MotionResult
    flags: list[QualityFlag]
    slabs: SlabPlan
    arrival_s: float = 0.0
    unwashed_tissue_ml: float = 0.0
    not_assessable: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    tmax_extra: tuple[TmaxRegion, ...] = ()
    filter_width: FilterWidth | None = None

    @property
    def quality_ok(self) -> bool:
        """True when no flag is a warning or critical."""
        return quality_ok(self.flags)


@dataclass
class _Inputs:
    """Baseline-dependent intermediate results, recomputed if the baseline is moved."""

    arrival: int
    baseline: np.ndarray
    concentration: np.ndarray
    masks: BrainMasks
    smoothed: np.ndarray
    hemis: Hemispheres
    affected: int
    aif: VascularCurve
    vof: VascularCurve | None
    aif_scale: float
    aif_side: int
    filter_width: FilterWidth


def analyse_ctp(
    series: PerfusionSeries,
    settings: CtpSettings | None = None,
    on_grid: SlabPlan | None = None,
) -> CtpAnalysis:
    """Run the whole CT perfusion analysis on one assembled acquisition.

    Parameters
    ----------
    series : PerfusionSeries
        ``(t, z, y, x)`` HU with per-slice acquisition times.
    settings : CtpSettings, optional
        Thresholds and method parameters; the published defaults when omitted.
    on_grid : SlabPlan, optional
        ``series`` was read straight into the analysis grid: its slices were combined
        by this plan and its pixels binned to ``settings.analysis_pixel_mm`` already.

    Returns
    -------
    CtpAnalysis

    Raises
    ------
    AnalysisError
        When no brain, no arterial input or too few usable frames are found, or a stage
        fails numerically (``AnalysisError.stage`` names it).
    """
    settings = settings or CtpSettings()
    clock = StageClock()
    limits = settings.quality
    flags: list[QualityFlag] = []

    with analysis_stage("input"):
        if series.signal.shape[0] < MIN_FRAMES:
            raise AnalysisError(
                f"only {series.signal.shape[0]} time frames: perfusion analysis needs at "
                f"least {MIN_FRAMES}"
            )
    with analysis_stage("slabs"):
        if on_grid is None:
            slabs = plan_slabs(
                series.geometry.voxel_size_mm[0],
                series.signal.shape[1],
                settings.analysis_slab_mm,
                settings.thin_slice_below_mm,
            )
            series = combine_slices(series, slabs)
        else:
            slabs = on_grid
    if slabs.combined:
        flags.append(
            QualityFlag(
                "thin_slices_combined",
                "info",
                f"{slabs.input_slice_mm:g} mm slices analysed as {slabs.slab_mm:g} mm slabs "
                f"({slabs.slices_per_slab} slices averaged each"
                + (
                    f"; {slabs.dropped_slices} edge slice(s) left out)"
                    if slabs.dropped_slices
                    else ")"
                ),
            )
        )
    clock.lap("slabs")

    with analysis_stage("binning"):
        _, dy, _ = series.geometry.voxel_size_mm
        factor = 1 if on_grid is not None else binning_factor(dy, settings.analysis_pixel_mm)
        signal = (
            bin_inplane(series.signal, factor)
            if factor > 1
            # Read only from here on: a float32 series (read into the grid) is not copied.
            else np.asarray(series.signal, dtype=np.float32)
        )
        geometry = series.geometry.downsampled(factor)
        dz, pixel_mm, _ = geometry.voxel_size_mm
    clock.lap("binning")

    with analysis_stage("motion"):
        motion = correct_motion(
            signal,
            pixel_mm,
            reference=0,
            max_motion_mm=settings.max_motion_mm,
            times_s=series.times_s.mean(axis=1),
        )
        keep = ~motion.excluded
        if np.count_nonzero(keep) < MIN_FRAMES:
            raise AnalysisError(
                f"only {np.count_nonzero(keep)} of {keep.size} frames are usable after motion "
                "correction"
            )
        flags.extend(motion_flags(motion, limits))
    clock.lap("motion")

    with analysis_stage("resample"):
        # Every frame kept (the rule): the corrected series itself, not a 40 MB copy.
        acquired = (
            (motion.corrected, series.times_s)
            if keep.all()
            else (motion.corrected[keep], series.times_s[keep])
        )
        uniform, grid_s = resample_uniform(acquired[0], acquired[1], settings.temporal_step_s)
        step = settings.temporal_step_s
    clock.lap("resample")

    with analysis_stage("masks"):
        arrival = _bolus_arrival(uniform, pixel_mm, dz)
    clock.lap("arrival")

    inputs = _baseline_and_inputs(uniform, acquired, arrival, geometry, settings, clock)
    # The baseline must hold no arterial first pass: if the chosen artery started to
    # fill inside it, the baseline is cut before that rise and everything after redone.
    with analysis_stage("aif_vof"):
        start = first_pass_start(uniform, inputs.aif.voxels_zyx)
    if start is not None and start - 1 < inputs.arrival and inputs.arrival > 1:
        inputs = _baseline_and_inputs(
            uniform, acquired, max(1, start - 1), geometry, settings, clock
        )
    arrival, masks, smoothed = inputs.arrival, inputs.masks, inputs.smoothed
    if arrival < limits.min_baseline_frames:
        flags.append(
            QualityFlag(
                "short_baseline",
                "warning",
                f"contrast arrives {grid_s[arrival] - grid_s[0]:.1f} s after the scan start: "
                "too few pre-contrast frames for a reliable baseline",
            )
        )
    flags.extend(
        input_flags(
            inputs.aif, inputs.vof, inputs.aif_scale, inputs.aif_side, inputs.affected, limits
        )
    )

    with analysis_stage("deconvolution"):
        aif_input = inputs.aif.curve * inputs.aif_scale
        if settings.temporal_sigma_s > 0:
            sigma_t = settings.temporal_sigma_s / settings.temporal_step_s
            aif_input = gaussian_filter1d(aif_input, sigma_t, mode="nearest")
        deconvolve = partial(
            compute_maps,
            aif=aif_input.astype(np.float32),
            step_s=step,
            mask=masks.tissue,
            workers=usable_cpus(),
            method="osvd",
            oscillation_index=settings.oscillation_index,
            correct_cbf_bias=settings.correct_cbf_bias,
            # The residue at the fitted models' peak lag, not its maximum, which noise
            # raises in low-flow tissue (docs/deconvolution.md: core within 30 -> 34 of
            # the benchmark's 60 cases, 31 -> 33 of 60 at seeds 7000+).
            cbf_readout="value",
            # The core keeps the single-delay readout. Where the pair cannot lift Tmax
            # above the lowest threshold read (normal tissue) it is not searched.
            two_delay_tmax=settings.two_delay_tmax,
            two_delay_above_s=min(HYPOPERFUSION_TMAX_S, *settings.tmax_thresholds_s),
            unpaired_tmax=settings.unpaired_tmax,
            # Beyond 10 s the tissue is severely delayed and low in flow, and its noisy
            # onset reads early (the mean everywhere lost Tmax > 10 s cases at low dose).
            unpaired_mean_below_s=SEVERE_HYPOPERFUSION_TMAX_S,
            # ... unless the onset is well determined there (CtpSettings).
            unpaired_onset_sd_s=settings.unpaired_onset_sd_s or None,
            # The pair's flow only where the published 6 s gate searches: site thresholds
            # widen the search but leave the core alone.
            pair_flow_cap=settings.pair_flow_cap if settings.pair_flow_cap > 1 else None,
            pair_flow_above_s=HYPOPERFUSION_TMAX_S,
            # The core's reference and its noise margin (CtpSettings); the voxels' CBF is
            # the value readout either way.
            reference_calibration=settings.core_reference_calibration,
            cbf_noise_sd=settings.core_noise_margin_k > 0,
            noise_sigma_frames=settings.temporal_sigma_s / settings.temporal_step_s,
        )
        maps = deconvolve(smoothed)
    clock.lap("deconvolution")
    with analysis_stage("quality"):
        vv = geometry.voxel_volume_ml
        unwashed_ml = volume_ml(unwashed_tissue(smoothed, masks.tissue, arrival, step), vv)
    width = inputs.filter_width
    # The aligned flow's oscillation index at the acquired frame interval (CtpSettings),
    # except in a scan too short for the tissue: its delayed curves are cut before they
    # wash out, and that index then lowers the penumbra's flow into the core
    # (docs/deconvolution.md); the grid's own index there.
    if settings.flow_align_acquired_oscillation and unwashed_ml < MAX_UNWASHED_TISSUE_ML:
        stride = aligned_oscillation_stride(
            frame_interval_s(acquired[1]), step, width.aligned_flow_share
        )
        width = replace(width, aligned_oscillation_stride=stride)
    light_share = width.flow_share
    aligned_share = width.aligned_flow_share
    if light_share > 0 or aligned_share > 0:
        # Only where the core can lie (and a sample) are the flow's curves rebuilt and read.
        voxels = _flow_candidates(maps, masks.tissue, settings.core_requires_tmax_s)
        where = voxels.read
        study_maps = maps
    if aligned_share > 0:
        # The CBF of a study whose input is not sharp (in part) from curves filtered at the
        # study's width once aligned in time, so that the penumbra's shells, mixed by the
        # filter, keep their residue's peak; Tmax stays the study filter's.
        with analysis_stage("smoothing"):
            shifts = alignment_shifts_frames(
                maps.core_tmax_s,
                masks.tissue,
                sigma_px=settings.flow_align_sigma_mm / pixel_mm,
                dead_zone_s=settings.flow_align_dead_zone_s,
                step_s=step,
            )
        # No tissue delayed beyond the dead zone: the aligned curves would be the study
        # filter's own (filtered on the same uniform grid), and so would their flow.
        if shifts.any() or variable_sampling(acquired[1]):
            with analysis_stage("smoothing"):
                aligned_curves = _aligned_curves(
                    inputs.concentration,
                    masks.tissue,
                    where,
                    shifts,
                    settings,
                    sigma_px=inputs.filter_width.sigma_mm / pixel_mm,
                )
            clock.lap("aligned_smoothing")
            with analysis_stage("deconvolution"):
                # The oscillation index at the acquired frame interval (CtpSettings).
                aligned = _deconvolved_at(
                    partial(
                        deconvolve,
                        oscillation_stride=width.aligned_oscillation_stride,
                    ),
                    aligned_curves,
                    where,
                    pooled_noise=settings.core_noise_margin_k > 0,
                )
                del aligned_curves
                # The aligned flow stands in for the study filter's (its share is all the
                # light flow leaves: ``aligned_flow_share = 1 - flow_share``).
                maps = blend_flow(maps, _scaled_outside(study_maps, aligned, voxels), 1.0)
                del aligned
            clock.lap("aligned_deconvolution")
    if light_share > 0:
        # The CBF (and the core's reference) in part from lightly filtered curves, whose
        # lesion shells the filter has not mixed; Tmax stays the study filter's.
        with analysis_stage("smoothing"):
            flow_curves = _filtered_curves(
                inputs.concentration,
                acquired,
                inputs.baseline,
                masks.tissue,
                where,
                settings,
                sigma_px=settings.flow_filter_sigma_mm / pixel_mm,
                iterations=settings.flow_filter_iterations,
            )
        clock.lap("flow_smoothing")
        with analysis_stage("deconvolution"):
            light = _deconvolved_at(
                deconvolve, flow_curves, where, pooled_noise=settings.core_noise_margin_k > 0
            )
            del flow_curves
            light = _scaled_outside(study_maps, light, voxels)
            maps = blend_flow(maps, light, light_share)
            del light
        clock.lap("flow_deconvolution")

    with analysis_stage("lesions"):
        result = ctp_lesion_masks(
            maps, masks, inputs.hemis, geometry, settings, fill_tmax_rims=settings.two_delay_tmax
        )
        core, tmax6, tmax10, rcbf, ref_cbf, ref_text, lesion_side = result
        metrics = lesion_metrics(volume_ml(core, vv), volume_ml(tmax6, vv), volume_ml(tmax10, vv))
        tmax_extra = extra_tmax_regions(
            settings.tmax_thresholds_s,
            lambda t: tmax_above(
                maps,
                masks.tissue,
                vv,
                settings.min_cluster_ml,
                t,
                masks.unmeasured if settings.two_delay_tmax else None,
                vote_px=settings.tmax_vote_px,
            ),
            tmax6,
            vv,
        )
        flags.extend(acquisition_flags(series, masks, inputs.concentration, arrival, limits))
        truncation = tissue_truncation_flag(
            unwashed_ml, float(grid_s[-1] - grid_s[0]), SEVERE_HYPOPERFUSION_TMAX_S
        )
        not_assessable: dict[str, str] = {}
        if truncation is not None:
            flags.append(truncation)
            not_assessable = {
                "tmax10_ml": TRUNCATION_NOT_ASSESSABLE,
                "hypoperfusion_intensity_ratio": TRUNCATION_NOT_ASSESSABLE,
            }
            # A site's threshold at or above 10 s is as underestimated as Tmax > 10 s.
            for region in tmax_extra:
                if region.threshold_s >= SEVERE_HYPOPERFUSION_TMAX_S:
                    not_assessable[f"tmax{region.threshold_s:g}_ml"] = TRUNCATION_NOT_ASSESSABLE
        decisions = evaluate_assessable_decisions(metrics, not_assessable)
        for key, met in decisions.items():
            if met is None:
                not_assessable[key] = TRUNCATION_NOT_ASSESSABLE
    clock.lap("lesions")

    return CtpAnalysis(
        geometry=geometry,
        maps=maps,
        rcbf=rcbf,
        masks=masks,
        core=core,
        tmax6=tmax6,
        tmax10=tmax10,
        baseline_hu=inputs.baseline,
        metrics=metrics,
        decisions=decisions,
        lesion_side=lesion_side,
        reference_cbf_ml_100g_min=ref_cbf,
        reference_description=ref_text,
        aif=inputs.aif,
        vof=inputs.vof,
        aif_scale=inputs.aif_scale,
        grid_s=grid_s,
        motion=motion,
        flags=flags,
        slabs=slabs,
        arrival_s=float(grid_s[arrival] - grid_s[0]),
        unwashed_tissue_ml=round(unwashed_ml, 1),
        not_assessable=not_assessable,
        timings_s=clock.timings,
        tmax_extra=tmax_extra,
        filter_width=width,
    )


def variable_sampling(times_s: np.ndarray) -> bool:
    """True when the frame interval changes during the scan (dense-then-sparse protocols).

    Parameters
    ----------
    times_s : numpy.ndarray
        ``(t, z)`` acquisition times of the frames used.

    Returns
    -------
    bool
        The 90th percentile of the frame intervals exceeds 1.5 x their 10th percentile
        (percentiles, so that a frame or two dropped for motion do not count).
    """
    steps = _frame_steps_s(times_s)
    if steps.size < 4:
        return False
    low, high = np.percentile(steps, [10, 90])
    return bool(high > 1.5 * low)


def frame_interval_s(times_s: np.ndarray) -> float:
    """Typical interval between acquired frames (``variable_sampling``'s steps, median).

    Parameters
    ----------
    times_s : numpy.ndarray
        ``(t, z)``: per frame and slice, seconds.

    Returns
    -------
    float
        The median step, s; 0 with fewer than two frames.
    """
    steps = _frame_steps_s(times_s)
    return float(np.median(steps)) if steps.size else 0.0


def _frame_steps_s(times_s: np.ndarray) -> np.ndarray:
    # Steps between the frames' mean acquisition times (slices acquired at offsets).
    return np.diff(np.asarray(times_s, dtype=np.float64).mean(axis=1))


def _resample_within(
    curves: np.ndarray, mask: np.ndarray, times_s: np.ndarray, step_s: float
) -> np.ndarray:
    """``(t, n)`` curves of the ``mask`` voxels (``flatnonzero`` order) on the uniform grid.

    Only the masked voxels are interpolated (the filter changed nothing else); each slice
    keeps its clock, so the grid is the one :func:`resample_uniform` gives the series.
    """
    nt, nz = curves.shape[0], mask.shape[0]
    counts = mask.reshape(nz, -1).sum(axis=1)
    ends = np.cumsum(counts)
    width = max(1, int(counts.max()))
    packed = np.zeros((nt, nz, 1, width), dtype=np.float32)
    for z in range(nz):
        packed[:, z, 0, : counts[z]] = curves[:, ends[z] - counts[z] : ends[z]]
    uniform, _ = resample_uniform(packed, times_s, step_s)
    return np.concatenate([uniform[:, z, 0, : counts[z]] for z in range(nz)], axis=1)


def _blood_search(baseline_hu: np.ndarray, masks: BrainMasks) -> np.ndarray:
    """Voxels where arteries and veins may be sought: blood-like before contrast, no bone.

    Vessels reach a voxel beyond the brain mask (the sinus lies against the skull).
    Unenhanced blood is ~40 HU: voxels far denser before contrast share bone, whose
    edge smears into them when motion is corrected.
    """
    blood_like = baseline_hu < MAX_BLOOD_BASELINE_HU
    near_bone = ndimage.binary_dilation(
        baseline_hu > BONE_HU, structure=np.ones((1, 3, 3), dtype=bool)
    )
    return np.asarray((masks.brain | masks.vessels) & blood_like & ~near_bone)


def _bolus_arrival(uniform: np.ndarray, pixel_mm: float, dz_mm: float) -> int:
    """First contrast frame: the earlier of the arterial rise and the brain-wide rise.

    The brain-wide 99.5th percentile only moves when 0.5 % of the brain enhances, which a
    small artery cannot do (it then waits for the sinus, seconds later, and the baseline
    swallows the arterial first pass); the strongly enhancing blood-like voxels give
    the arterial rise directly, the percentile is the fallback.
    """
    first = uniform[: min(2, uniform.shape[0])].mean(axis=0)
    # max(u - f) = max(u) - f exactly (rounding is monotone), without a 4D difference.
    prelim = brain_masks(first, uniform.max(axis=0) - first, pixel_mm, dz_mm)
    if not prelim.brain.any():
        raise AnalysisError("no brain found inside the skull: is this a head CT perfusion?")
    arrival = bolus_arrival_index(uniform, prelim.brain)
    rise = arterial_rise_index(uniform, _blood_search(first, prelim))
    if rise is not None:
        # The frame before the first clear rise is still baseline (partial arrival).
        arrival = min(arrival, max(1, rise - 1))
    return arrival


def _baseline_and_inputs(
    uniform: np.ndarray,
    acquired: tuple[np.ndarray, np.ndarray],
    arrival: int,
    geometry: Geometry,
    settings: CtpSettings,
    clock: StageClock,
) -> _Inputs:
    """Baseline, masks, filtered curves and the vascular inputs for one bolus arrival."""
    dz, pixel_mm, _ = geometry.voxel_size_mm
    step = settings.temporal_step_s
    with analysis_stage("masks"):
        baseline = uniform[:arrival].mean(axis=0)
        concentration = uniform - baseline
        masks = brain_masks(baseline, concentration.max(axis=0), pixel_mm, dz)
        if not masks.tissue.any():
            raise AnalysisError("no analysable brain tissue found after baseline subtraction")
    clock.lap("masks")

    with analysis_stage("smoothing"):
        # Where arteries may be, and the arterial input of both hemispheres: it measures
        # the study's bandwidth for the filter, and it is the input where no side is
        # affected (or the affected side's other half holds none).
        searchable = _blood_search(baseline, masks)
        both_sides = select_aif(concentration, searchable, step, geometry.voxel_volume_ml)
        width = _filter_width(acquired, arrival, concentration, masks, both_sides, settings)
        smoothed = _filtered_series(
            concentration,
            acquired,
            baseline,
            masks.tissue,
            settings,
            sigma_px=width.sigma_mm / pixel_mm,
            iterations=settings.smoothing_iterations,
        )
        share = (
            flow_filter_share(width.arterial_fwhm_s, settings.smoothing_fwhm_range_s)
            if settings.flow_filter_iterations > 0
            else 0.0
        )
        if share > 0:
            # The light filter itself runs once the baseline is final (``analyse_ctp``).
            width = replace(
                width, flow_sigma_mm=settings.flow_filter_sigma_mm, flow_share=round(share, 3)
            )
        if settings.flow_align_dead_zone_s >= 0 and width.flow_share < 1:
            # The rest of the flow from delay-aligned curves, once Tmax is known.
            width = replace(width, aligned_flow_share=round(1.0 - width.flow_share, 3))
    clock.lap("smoothing")

    with analysis_stage("aif_vof"):
        hemis = find_hemispheres(masks.brain, geometry)
        affected = preliminary_affected_side(smoothed, masks.tissue, hemis, step)
        aif, vof, aif_scale, aif_side = _vascular_inputs(
            concentration, masks, hemis, affected, geometry, step, searchable, both_sides
        )
    clock.lap("aif_vof")
    return _Inputs(
        arrival=arrival,
        baseline=baseline,
        concentration=concentration,
        masks=masks,
        smoothed=smoothed,
        hemis=hemis,
        affected=affected,
        aif=aif,
        vof=vof,
        aif_scale=aif_scale,
        aif_side=aif_side,
        filter_width=width,
    )


#: Tissue whose study-filter CBF is below this share of the tissue's median CBF (widened by
#: ``FLOW_CANDIDATE_WIDEN_PX`` in plane) may be core once read from the light curves; every
#: ``FLOW_SAMPLE_STRIDE``-th tissue voxel is read too, for the level of the rest.
FLOW_CANDIDATE_SHARE = 0.75
FLOW_CANDIDATE_WIDEN_PX = 1
FLOW_SAMPLE_STRIDE = 16


@dataclass(frozen=True)
class _FlowVoxels:
    """The voxels whose flow the light curves read (``read = candidates | sample``)."""

    candidates: np.ndarray
    sample: np.ndarray

    @property
    def read(self) -> np.ndarray:
        return self.candidates | self.sample


def _flow_candidates(
    maps: PerfusionMaps, tissue: np.ndarray, core_requires_tmax_s: float
) -> _FlowVoxels:
    """Tissue whose flow the light curves must read: possible core, and a sample of the rest.

    Possible core is low-flow tissue (and its in-plane neighbours, which the study's filter
    mixed with it) where the study's Tmax lets a voxel be core: the light flow changes the
    CBF only, and the core needs ``Tmax > core_requires_tmax_s`` of the study's readout.
    """
    cbf = np.nan_to_num(maps.cbf_ml_100g_min, nan=0.0)
    level = float(np.median(cbf[tissue])) if tissue.any() else 0.0
    low = tissue & (cbf < FLOW_CANDIDATE_SHARE * level)
    side = 2 * FLOW_CANDIDATE_WIDEN_PX + 1
    low = ndimage.binary_dilation(low, np.ones((1, side, side), dtype=bool)) & tissue
    if core_requires_tmax_s > 0:
        low &= np.nan_to_num(maps.core_tmax_s, nan=0.0) > core_requires_tmax_s
    sample = np.zeros(tissue.size, dtype=bool)
    sample[np.flatnonzero(tissue.reshape(-1))[::FLOW_SAMPLE_STRIDE]] = True
    return _FlowVoxels(candidates=low, sample=sample.reshape(tissue.shape) & ~low)


def _deconvolved_at(
    deconvolve: Callable[..., PerfusionMaps],
    curves: np.ndarray,
    where: np.ndarray,
    *,
    pooled_noise: bool,
) -> PerfusionMaps:
    """Maps (on the grid, NaN elsewhere) of the ``(t, n)`` curves of the ``where`` voxels.

    The curves are deconvolved as they are; only a CBF noise map, whose variance is pooled
    over in-plane neighbours, needs them back on the grid.
    """
    if pooled_noise:
        grid = np.zeros((curves.shape[0], *where.shape), dtype=np.float32)
        put_voxel_curves(grid, where, curves)
        return deconvolve(grid, mask=where)
    return maps_on_grid(deconvolve(curves, mask=None), where)


def _scaled_outside(
    maps: PerfusionMaps, light: PerfusionMaps, voxels: _FlowVoxels
) -> PerfusionMaps:
    """``light`` filled outside ``voxels.read`` by ``maps`` scaled to the light curves' level.

    The scale of each flow map is the ratio of its sums over ``voxels.sample`` (the strided
    sample of the tissue that cannot be core).
    """
    read = voxels.read

    def fill(study: np.ndarray | None, light_map: np.ndarray | None) -> np.ndarray | None:
        if study is None or light_map is None:
            return light_map
        both = voxels.sample & np.isfinite(study) & np.isfinite(light_map)
        denom = float(study[both].sum())
        gain = float(light_map[both].sum()) / denom if denom > 0 else 1.0
        return np.where(read, light_map, study * np.float32(gain)).astype(np.float32)

    cbf = fill(maps.cbf_ml_100g_min, light.cbf_ml_100g_min)
    assert cbf is not None
    return replace(
        light,
        cbf_ml_100g_min=cbf,
        reference_cbf_ml_100g_min=fill(
            maps.reference_cbf_ml_100g_min, light.reference_cbf_ml_100g_min
        ),
        cbf_noise_sd_ml_100g_min=fill(
            maps.cbf_noise_sd_ml_100g_min, light.cbf_noise_sd_ml_100g_min
        ),
    )


def _filtered_series(
    concentration: np.ndarray,
    acquired: tuple[np.ndarray, np.ndarray],
    baseline: np.ndarray,
    tissue: np.ndarray,
    settings: CtpSettings,
    *,
    sigma_px: float,
    iterations: int,
) -> np.ndarray:
    """The concentration series with its tissue curves filtered (:func:`_filtered_curves`).

    Only tissue curves are filtered: every later step reads tissue voxels only.
    """
    smoothed = concentration.copy()
    curves = _filtered_curves(
        concentration,
        acquired,
        baseline,
        tissue,
        tissue,
        settings,
        sigma_px=sigma_px,
        iterations=iterations,
    )
    put_voxel_curves(smoothed, tissue, curves)
    return smoothed


def _filtered_curves(
    concentration: np.ndarray,
    acquired: tuple[np.ndarray, np.ndarray],
    baseline: np.ndarray,
    tissue: np.ndarray,
    select: np.ndarray,
    settings: CtpSettings,
    *,
    sigma_px: float,
    iterations: int,
) -> np.ndarray:
    """The bilaterally filtered ``(t, n)`` curves of the ``select`` voxels of ``tissue``.

    The profile-bilateral filter (``denoise.profile_bilateral``, spatial sigma
    ``sigma_px`` pixels, ``iterations`` passes, ``settings.smoothing_strength``) over all
    of ``tissue``, its curves rebuilt for ``select`` only (in ``numpy.flatnonzero``
    order); variable sampling is filtered on the acquired frames and then resampled; the
    temporal Gaussian (``settings.temporal_sigma_s``) follows.
    """
    step = settings.temporal_step_s
    tips = partial(
        profile_bilateral,
        select=select,
        sigma_px=sigma_px,
        radius_px=max(1, int(np.ceil(1.6 * sigma_px))),
        iterations=iterations,
        strength=settings.smoothing_strength,
    )
    frames, times_s = acquired
    if variable_sampling(times_s):
        # Filtered on the acquired frames, where the noise is independent from frame
        # to frame, then resampled: interpolating the sparse frames first spreads each
        # of their noise samples over several grid points, and that correlated noise
        # takes over the leading principal components the filter compares and keeps,
        # washing out the timing differences between lesion zones.
        curves = _resample_within(tips(frames - baseline, tissue), select, times_s, step)
    else:
        curves = tips(concentration, tissue)
    if settings.temporal_sigma_s > 0:
        sigma_t = settings.temporal_sigma_s / settings.temporal_step_s
        curves = gaussian_filter1d(curves, sigma_t, axis=0, mode="nearest")
    return curves


def _aligned_curves(
    concentration: np.ndarray,
    tissue: np.ndarray,
    select: np.ndarray,
    shifts: np.ndarray,
    settings: CtpSettings,
    *,
    sigma_px: float,
) -> np.ndarray:
    """The ``(t, n)`` curves of the ``select`` voxels, filtered once aligned in time.

    Each tissue curve is shifted by ``shifts`` (frames, ``numpy.flatnonzero(tissue)``
    order: ``delay_align.alignment_shifts_frames`` of the study's Tmax), the whole tissue
    is filtered as the study's filter does (sigma ``sigma_px``,
    ``settings.smoothing_iterations`` passes), the selected curves are shifted back and the
    temporal Gaussian follows. The curves are those of the uniform grid, whatever the
    sampling.
    """
    step = settings.temporal_step_s
    curves = profile_bilateral_curves(
        shift_curves(voxel_curves(concentration, tissue), shifts),
        tissue,
        select=select,
        sigma_px=sigma_px,
        radius_px=max(1, int(np.ceil(1.6 * sigma_px))),
        iterations=settings.smoothing_iterations,
        strength=settings.smoothing_strength,
    )
    shift_map = np.zeros(tissue.shape, dtype=np.float32)
    shift_map[tissue] = shifts
    curves = shift_curves(curves, -shift_map[select])
    if settings.temporal_sigma_s > 0:
        curves = gaussian_filter1d(curves, settings.temporal_sigma_s / step, axis=0, mode="nearest")
    return curves


def _filter_width(
    acquired: tuple[np.ndarray, np.ndarray],
    arrival: int,
    concentration: np.ndarray,
    masks: BrainMasks,
    probe: VascularCurve | None,
    settings: CtpSettings,
) -> FilterWidth:
    """The filter width this study's bandwidth and noise allow (``analysis.filter_width``).

    ``probe`` is the arterial input of both hemispheres on the unfiltered curves: the side
    the final one is taken from is only known once the filtered curves are compared.
    """
    if settings.smoothing_sigma_wide_mm == settings.smoothing_sigma_mm:
        return FilterWidth(settings.smoothing_sigma_mm, None, None, "one width for every study")
    step = settings.temporal_step_s
    frames, times_s = acquired
    # The uniform grid starts at the latest first image over slices (resample_uniform).
    arrival_s = float(np.asarray(times_s)[0].max()) + arrival * step
    return choose_filter_width(
        settings.smoothing_sigma_mm,
        settings.smoothing_sigma_wide_mm,
        None if probe is None else probe.fwhm_s,
        tissue_contrast_to_noise(frames, times_s, arrival_s, concentration, masks.tissue),
        settings.smoothing_fwhm_range_s,
        settings.smoothing_cnr_range,
    )


def preliminary_affected_side(
    smoothed: np.ndarray, tissue: np.ndarray, hemis: Hemispheres, step_s: float
) -> int:
    """Side whose tissue peaks late (bolus delay), before any deconvolution; 0 if none.

    The AIF must come from the unaffected side, so the side is guessed from time to
    peak: the hemisphere with clearly more tissue peaking 4 s after the brain's median.
    """
    curves = voxel_curves(smoothed, tissue)
    if curves.shape[1] == 0:
        return 0
    ttp = curves.argmax(axis=0) * step_s
    late = ttp > np.median(ttp) + 4.0
    side = hemis.side[tissue]
    n_left = int(np.count_nonzero(late & (side == LEFT)))
    n_right = int(np.count_nonzero(late & (side == RIGHT)))
    total = max(1, int(np.count_nonzero(side != 0)))
    if max(n_left, n_right) < 0.02 * total or abs(n_left - n_right) < 0.5 * max(n_left, n_right):
        return 0
    return LEFT if n_left > n_right else RIGHT


def _vascular_inputs(
    concentration: np.ndarray,
    masks: BrainMasks,
    hemis: Hemispheres,
    affected: int,
    geometry: Geometry,
    step_s: float,
    searchable: np.ndarray,
    both_sides: VascularCurve | None,
) -> tuple[VascularCurve, VascularCurve | None, float, int]:
    """Arterial input, venous output, partial-volume scale and the input's side.

    The input is taken from the unaffected side where one is affected, otherwise (or
    where that side holds none) it is ``both_sides``, ``select_aif`` over all of
    ``searchable``.
    """
    vv = geometry.voxel_volume_ml
    aif = None
    aif_side = 0
    if affected != 0:
        aif = select_aif(concentration, searchable & (hemis.side == -affected), step_s, vv)
        aif_side = -affected
    if aif is None:
        aif = both_sides
        aif_side = 0
    if aif is None:
        raise AnalysisError("no arterial input found: no early, strongly enhancing vessel")
    if aif.peak < MIN_AIF_PEAK_HU:
        raise AnalysisError(
            f"no contrast enhancement found: the earliest, strongest enhancing vessel rises "
            f"only {aif.peak:.0f} HU (an artery rises by hundreds); was contrast injected "
            "during this acquisition?"
        )
    # The superior sagittal sinus runs posterior, near the midline.
    _, ny, nx = masks.brain.shape
    yy = np.arange(ny)[:, None]
    cy, _ = hemis.centre_yx
    posterior = (yy - cy) * geometry.patient_posterior_sign_y() > 0
    _, _, dx = geometry.voxel_size_mm
    xx = np.arange(nx)[None, :]
    near_midline = np.abs(xx - hemis.centre_yx[1]) * dx < 25.0
    venous_region = searchable & (posterior & near_midline)[None]
    vof = select_vof(concentration, venous_region, aif, step_s)
    if vof is None:
        vof = select_vof(concentration, searchable, aif, step_s)
    scale = partial_volume_scale(aif, vof)
    return aif, vof, scale, aif_side
