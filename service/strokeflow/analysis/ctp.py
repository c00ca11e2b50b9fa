"""The CT perfusion pipeline: 4D HU in, maps, lesion volumes, decisions and quality out."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.ndimage import gaussian_filter1d

from strokeflow.analysis.brainmask import BrainMasks, brain_masks
from strokeflow.analysis.ctp_quality import acquisition_flags, input_flags, motion_flags
from strokeflow.analysis.decisions import LesionMetrics, evaluate_decisions, lesion_metrics
from strokeflow.analysis.denoise import profile_bilateral
from strokeflow.analysis.hemispheres import LEFT, RIGHT, Hemispheres, find_hemispheres, side_name
from strokeflow.analysis.inputs import (
    VascularCurve,
    bolus_arrival_index,
    partial_volume_scale,
    select_aif,
    select_vof,
)
from strokeflow.analysis.lesions import clean_mask, volume_ml
from strokeflow.analysis.maps import PerfusionMaps, compute_maps
from strokeflow.analysis.motion import MotionResult, bin_inplane, correct_motion
from strokeflow.analysis.quality import QualityFlag, QualityLimits, quality_ok
from strokeflow.analysis.resample import resample_uniform
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.timing import StageClock
from strokeflow.analysis.volume import Geometry, PerfusionSeries

#: Tissue with Tmax below this is "normally perfused" and serves as the rCBF reference.
NORMAL_TMAX_S = 4.0

#: Arterial and venous voxels must be blood-like before contrast (HU), and not touch
#: bone (HU above BONE_HU), whose edge smears into its neighbours when motion is corrected.
MAX_BLOOD_BASELINE_HU = 120.0
BONE_HU = 300.0


class AnalysisError(Exception):
    """The series cannot be analysed; the message says why in clinical terms."""


@dataclass
class CtpAnalysis:
    """Everything the CTP pipeline produced for one acquisition.

    Maps and masks are on the analysis grid ``geometry`` (after in-plane binning),
    axis order ``(z, y, x)``.
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
    decisions: dict[str, bool]
    lesion_side: str | None
    reference_cbf_ml_100g_min: float
    reference_description: str
    aif: VascularCurve
    vof: VascularCurve | None
    aif_scale: float
    grid_s: np.ndarray
    motion: MotionResult
    flags: list[QualityFlag]
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def quality_ok(self) -> bool:
        """True when no flag is a warning or critical."""
        return quality_ok(self.flags)


def analyse_ctp(series: PerfusionSeries, settings: CtpSettings | None = None) -> CtpAnalysis:
    """Run the whole CT perfusion analysis on one assembled acquisition.

    Parameters
    ----------
    series : PerfusionSeries
        ``(t, z, y, x)`` HU with per-slice acquisition times.
    settings : CtpSettings, optional
        Thresholds and method parameters; the published defaults when omitted.

    Returns
    -------
    CtpAnalysis

    Raises
    ------
    AnalysisError
        When no brain, no arterial input or too few usable frames are found.
    """
    settings = settings or CtpSettings()
    clock = StageClock()
    limits = QualityLimits()
    flags: list[QualityFlag] = []

    _, dy, _ = series.geometry.voxel_size_mm
    factor = max(1, round(settings.analysis_pixel_mm / dy))
    signal = bin_inplane(series.signal, factor) if factor > 1 else series.signal.astype(np.float32)
    geometry = series.geometry.downsampled(factor)
    dz, pixel_mm, _ = geometry.voxel_size_mm
    clock.lap("binning")

    motion = correct_motion(
        signal,
        pixel_mm,
        reference=0,
        max_motion_mm=settings.max_motion_mm,
        times_s=series.times_s.mean(axis=1),
    )
    keep = ~motion.excluded
    if np.count_nonzero(keep) < 8:
        raise AnalysisError(
            f"only {np.count_nonzero(keep)} of {keep.size} frames are usable after motion "
            "correction"
        )
    flags.extend(motion_flags(motion, limits))
    clock.lap("motion")

    uniform, grid_s = resample_uniform(
        motion.corrected[keep], series.times_s[keep], settings.temporal_step_s
    )
    step = settings.temporal_step_s
    clock.lap("resample")

    first = uniform[: min(2, uniform.shape[0])].mean(axis=0)
    prelim = brain_masks(first, (uniform - first).max(axis=0), pixel_mm, dz)
    if not prelim.brain.any():
        raise AnalysisError("no brain found inside the skull: is this a head CT perfusion?")
    arrival = bolus_arrival_index(uniform, prelim.brain)
    if arrival < limits.min_baseline_frames:
        flags.append(
            QualityFlag(
                "short_baseline",
                "warning",
                f"contrast arrives {grid_s[arrival] - grid_s[0]:.1f} s after the scan start: "
                "too few pre-contrast frames for a reliable baseline",
            )
        )
    baseline = uniform[:arrival].mean(axis=0)
    concentration = uniform - baseline
    masks = brain_masks(baseline, concentration.max(axis=0), pixel_mm, dz)
    clock.lap("masks")

    sigma_px = settings.smoothing_sigma_mm / pixel_mm
    smoothed = profile_bilateral(
        concentration,
        masks.tissue,
        sigma_px=sigma_px,
        radius_px=max(1, int(np.ceil(1.6 * sigma_px))),
        iterations=settings.smoothing_iterations,
        strength=settings.smoothing_strength,
    )
    if settings.temporal_sigma_s > 0:
        sigma_t = settings.temporal_sigma_s / settings.temporal_step_s
        smoothed = gaussian_filter1d(smoothed, sigma_t, axis=0, mode="nearest")
    clock.lap("smoothing")

    hemis = find_hemispheres(masks.brain, geometry)
    affected = preliminary_affected_side(smoothed, masks.tissue, hemis, step)
    aif, vof, aif_scale, aif_side = _vascular_inputs(
        concentration, masks, hemis, affected, geometry, step, baseline
    )
    flags.extend(input_flags(aif, vof, aif_scale, aif_side, affected, limits))
    clock.lap("aif_vof")

    aif_input = aif.curve * aif_scale
    if settings.temporal_sigma_s > 0:
        sigma_t = settings.temporal_sigma_s / settings.temporal_step_s
        aif_input = gaussian_filter1d(aif_input, sigma_t, mode="nearest")
    maps = compute_maps(
        smoothed,
        aif_input.astype(np.float32),
        step,
        method="osvd",
        oscillation_index=settings.oscillation_index,
        mask=masks.tissue,
        correct_cbf_bias=settings.correct_cbf_bias,
    )
    clock.lap("deconvolution")

    result = _lesions(maps, masks, hemis, geometry, settings)
    core, tmax6, tmax10, rcbf, ref_cbf, ref_text, lesion_side = result
    vv = geometry.voxel_volume_ml
    metrics = lesion_metrics(volume_ml(core, vv), volume_ml(tmax6, vv), volume_ml(tmax10, vv))
    decisions = evaluate_decisions(metrics)
    flags.extend(acquisition_flags(series, masks, concentration, arrival, limits))
    clock.lap("lesions")

    return CtpAnalysis(
        geometry=geometry,
        maps=maps,
        rcbf=rcbf,
        masks=masks,
        core=core,
        tmax6=tmax6,
        tmax10=tmax10,
        baseline_hu=baseline,
        metrics=metrics,
        decisions=decisions,
        lesion_side=lesion_side,
        reference_cbf_ml_100g_min=ref_cbf,
        reference_description=ref_text,
        aif=aif,
        vof=vof,
        aif_scale=aif_scale,
        grid_s=grid_s,
        motion=motion,
        flags=flags,
        timings_s=clock.timings,
    )


def preliminary_affected_side(
    smoothed: np.ndarray, tissue: np.ndarray, hemis: Hemispheres, step_s: float
) -> int:
    """Side whose tissue peaks late (bolus delay), before any deconvolution; 0 if none.

    The AIF must come from the unaffected side, so the side is guessed from time to
    peak: the hemisphere with clearly more tissue peaking 4 s after the brain's median.
    """
    curves = smoothed[:, tissue]
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
    baseline_hu: np.ndarray,
) -> tuple[VascularCurve, VascularCurve | None, float, int]:
    vv = geometry.voxel_volume_ml
    # Vessels reach a voxel beyond the brain mask (the sinus lies against the skull).
    # Unenhanced blood is ~40 HU: voxels far denser before contrast share bone, whose
    # edge smears into them when motion is corrected.
    blood_like = baseline_hu < MAX_BLOOD_BASELINE_HU
    near_bone = ndimage.binary_dilation(
        baseline_hu > BONE_HU, structure=np.ones((1, 3, 3), dtype=bool)
    )
    searchable = (masks.brain | masks.vessels) & blood_like & ~near_bone
    aif = None
    aif_side = 0
    if affected != 0:
        aif = select_aif(concentration, searchable & (hemis.side == -affected), step_s, vv)
        aif_side = -affected
    if aif is None:
        aif = select_aif(concentration, searchable, step_s, vv)
        aif_side = 0
    if aif is None:
        raise AnalysisError("no arterial input found: no early, strongly enhancing vessel")
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


def _lesions(
    maps: PerfusionMaps,
    masks: BrainMasks,
    hemis: Hemispheres,
    geometry: Geometry,
    settings: CtpSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, str, str | None]:
    tissue = masks.tissue
    vv = geometry.voxel_volume_ml
    tmax = np.nan_to_num(maps.tmax_s, nan=0.0)
    t6, t10 = settings.tmax_thresholds_s[0], settings.tmax_thresholds_s[1]
    tmax6 = clean_mask(tmax > t6, tissue, vv, settings.min_cluster_ml)
    tmax10 = clean_mask(tmax > t10, tissue, vv, settings.min_cluster_ml) & tmax6
    n_left = np.count_nonzero(tmax6 & (hemis.side == LEFT))
    n_right = np.count_nonzero(tmax6 & (hemis.side == RIGHT))
    lesion = 0
    if max(n_left, n_right) * vv >= 5.0:
        lesion = LEFT if n_left >= n_right else RIGHT
    cbf = np.nan_to_num(maps.cbf_ml_100g_min, nan=0.0)
    normal = tissue & (tmax < NORMAL_TMAX_S)
    if lesion != 0:
        contralateral = normal & (hemis.side == -lesion)
        reference_text = (
            f"mean CBF of {side_name(-lesion)} (contralateral) hemisphere tissue "
            f"with Tmax < {NORMAL_TMAX_S:g} s"
        )
    else:
        contralateral = normal
        reference_text = f"mean CBF of all brain tissue with Tmax < {NORMAL_TMAX_S:g} s"
    if np.count_nonzero(contralateral) < 50:
        contralateral = tissue
        reference_text = "mean CBF of all brain tissue (too little normal tissue)"
    reference = float(cbf[contralateral].mean())
    rcbf = np.where(tissue, cbf / max(reference, 1e-6), np.nan).astype(np.float32)
    raw_core = np.nan_to_num(rcbf, nan=1.0) < settings.core_rcbf_threshold
    if settings.core_requires_tmax_s > 0:
        raw_core &= tmax > settings.core_requires_tmax_s
    core = clean_mask(raw_core, tissue, vv, settings.min_cluster_ml)
    # Core is part of the hypoperfused tissue by definition.
    tmax6 |= core
    return core, tmax6, tmax10, rcbf, reference, reference_text, side_name(lesion)
