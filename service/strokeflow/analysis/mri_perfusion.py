"""The DSC half of the MR stroke analysis: delta-R2*, arterial input, maps and Tmax, in DWI space.

The perfusion grid is registered to the diffusion result (:mod:`.mri_diffusion`), so that the
Tmax masks can be resampled onto the DWI grid the core is measured on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokeflow.analysis.coregister import RigidResult, register_rigid, resample_mask
from strokeflow.analysis.ctp import AnalysisError, preliminary_affected_side
from strokeflow.analysis.denoise import smooth_within_mask
from strokeflow.analysis.diffusion import (
    mr_brain_mask,
)
from strokeflow.analysis.dsc import (
    DeltaR2,
    DscAif,
    frame_displacement_mm,
    select_dsc_aif,
    to_delta_r2,
)
from strokeflow.analysis.hemispheres import find_hemispheres
from strokeflow.analysis.maps import PerfusionMaps, compute_maps
from strokeflow.analysis.motion import bin_inplane
from strokeflow.analysis.mri_diffusion import DiffusionResult, brain_box, cropped_geometry
from strokeflow.analysis.mri_types import MriSettings
from strokeflow.analysis.quality import QualityFlag
from strokeflow.analysis.resample import resample_uniform
from strokeflow.analysis.stages import usable_cpus
from strokeflow.analysis.timing import StageClock
from strokeflow.analysis.volume import Geometry, PerfusionSeries


@dataclass(frozen=True)
class PerfusionResult:
    """DSC maps and Tmax on the binned perfusion grid, registered to the diffusion result."""

    geometry: Geometry
    maps: PerfusionMaps
    tissue: np.ndarray
    tmax_filled: np.ndarray  # Tmax (s) also just outside the tissue, 0 outside the brain
    aif: DscAif
    grid_s: np.ndarray
    registration: RigidResult
    frame_motion_mm: np.ndarray


def analyse_perfusion(
    pwi: PerfusionSeries,
    diffusion: DiffusionResult,
    settings: MriSettings,
    flags: list[QualityFlag],
    clock: StageClock,
) -> PerfusionResult:
    """Delta-R2*, arterial input, oSVD maps and Tmax of the DSC series, in DWI space.

    Parameters
    ----------
    pwi : PerfusionSeries
        The DSC series (signal, times, geometry, echo time).
    diffusion : DiffusionResult
        The diffusion result the perfusion is registered to.
    settings : MriSettings
        Binning, temporal and deconvolution settings and the quality limits.
    flags : list of QualityFlag
        The analysis' flags; the DSC findings are appended.
    clock : StageClock
        Stage timings.

    Returns
    -------
    PerfusionResult
        On the binned perfusion grid, with the registration to the DWI grid.

    Raises
    ------
    AnalysisError
        When the series has no echo time, no brain or no arterial input.
    """
    if pwi.echo_time_s is None or not pwi.echo_time_s > 0:
        raise AnalysisError("DSC series without EchoTime: delta-R2* cannot be computed")
    _, dy, _ = pwi.geometry.voxel_size_mm
    factor = max(1, round(settings.analysis_pixel_mm / dy))
    # Bin once, before anything else: every later step runs on the binned grid.
    signal = bin_inplane(pwi.signal, factor)
    geometry = pwi.geometry.downsampled(factor)
    dz, pixel_mm, dx = geometry.voxel_size_mm
    step = settings.temporal_step_s
    # Frames 2-5 are in the T1 steady state and before the bolus on any usable run.
    early = signal[min(2, signal.shape[0] - 1) : min(6, signal.shape[0])].mean(axis=0)
    brain = mr_brain_mask(early, pixel_mm)
    if not brain.any():
        raise AnalysisError("no brain found in the DSC perfusion images")
    # Motion is a property of the acquired frames, not of the interpolated grid.
    motion = frame_displacement_mm(signal, brain, (dz, pixel_mm, dx))
    # Everything after this looks at the brain only: its bounding box is half the grid.
    rows, cols = brain_box(brain)
    signal, brain = signal[..., rows, cols], brain[:, rows, cols]
    geometry = cropped_geometry(geometry, rows.start, cols.start)
    uniform, grid_s = resample_uniform(signal, pwi.times_s, step)
    del signal
    clock.lap("dsc_resample")

    dr2 = to_delta_r2(uniform, brain, pwi.echo_time_s)
    del uniform
    n_baseline = dr2.baseline.stop - dr2.baseline.start
    if n_baseline < settings.quality.min_baseline_frames:
        flags.append(
            QualityFlag(
                "short_baseline",
                "warning",
                f"only {n_baseline} pre-contrast frames before the bolus: the baseline "
                "signal is uncertain",
            )
        )
    clock.lap("dsc_delta_r2")

    registration = _register(diffusion, dr2.s0, geometry, settings)
    if registration.applied:
        tx, ty, tz = registration.translation_mm
        flags.append(
            QualityFlag(
                "series_motion",
                "info",
                f"the head moved {registration.displacement_mm:.1f} mm between the diffusion "
                f"and perfusion series (shift {tx:.1f}, {ty:.1f}, {tz:.1f} mm LPS); "
                "corrected by rigid registration",
            )
        )
    # Diffusion tissue (CSF excluded by its ADC) brought into the perfusion grid.
    inverse = np.linalg.inv(registration.rigid_lps)
    tissue_from_dwi = resample_mask(
        diffusion.tissue, diffusion.geometry, geometry, brain.shape, rigid_lps=inverse
    )
    peak = dr2.delta_r2_s.max(axis=0)
    candidate = tissue_from_dwi & brain
    typical = float(np.median(peak[candidate])) if candidate.any() else 0.0
    # Large vessels: enhancement far above tissue (their own curves are not tissue).
    vessels = ndimage.binary_dilation(brain & (peak > 4.0 * max(typical, 1e-3)))
    tissue = candidate & ~vessels
    if np.count_nonzero(tissue) < 50:
        raise AnalysisError(
            "the perfusion slab does not overlap the brain tissue of the diffusion series"
        )
    clock.lap("coregistration")

    sigma_px = settings.smoothing_sigma_mm / pixel_mm
    smoothed = smooth_within_mask(dr2.delta_r2_s, tissue, (sigma_px, sigma_px))
    hemis = find_hemispheres(brain, geometry)
    affected = preliminary_affected_side(smoothed, tissue, hemis, step)
    vv = geometry.voxel_volume_ml
    aif = None
    aif_side = 0
    if affected != 0:
        aif = select_dsc_aif(dr2, dr2.delta_r2_s, brain & (hemis.side == -affected), step, vv)
        aif_side = -affected
    if aif is None:
        aif = select_dsc_aif(dr2, dr2.delta_r2_s, brain, step, vv)
        aif_side = 0
    if aif is None:
        raise AnalysisError(
            "no arterial input found: no early, strongly enhancing, unsaturated vessel"
        )
    clock.lap("aif")

    maps = compute_maps(
        smoothed,
        aif.curve.curve.astype(np.float32),
        step,
        method="osvd",
        oscillation_index=settings.oscillation_index,
        mask=tissue,
        correct_tmax_lag=settings.correct_tmax_bias,
        workers=usable_cpus(),
    )
    clock.lap("deconvolution")
    tmax_filled = _fill_outside(maps.tmax_s, tissue, brain, geometry)
    flags.extend(_dsc_flags(dr2, smoothed, tissue, aif, aif_side, affected, motion, settings))
    clock.lap("tmax")
    return PerfusionResult(geometry, maps, tissue, tmax_filled, aif, grid_s, registration, motion)


def _fill_outside(
    tmax_s: np.ndarray, tissue: np.ndarray, brain: np.ndarray, geometry: Geometry
) -> np.ndarray:
    """Tmax with the brain's non-tissue voxels (vessels, CSF, rim) given the nearest tissue
    value, and 0 outside the brain.

    The DWI tissue decides where the lesion may be; near the perfusion grid's tissue
    border, interpolation must not mix in the NaN (or 0) of excluded voxels, which would
    shrink the lesion by half a perfusion voxel all around.
    """
    valid = tissue & np.isfinite(tmax_s)
    if not valid.any():
        return np.zeros(tmax_s.shape, dtype=np.float32)
    _, nearest = ndimage.distance_transform_edt(
        ~valid, sampling=geometry.voxel_size_mm, return_indices=True
    )
    filled = tmax_s[tuple(nearest)]
    return np.asarray(np.where(brain, filled, 0.0), dtype=np.float32)


def _register(
    diffusion: DiffusionResult, s0: np.ndarray, geometry: Geometry, settings: MriSettings
) -> RigidResult:
    if not settings.register:
        return RigidResult(np.eye(4), False, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0, 0.0, 0.0)
    return register_rigid(diffusion.reference, diffusion.geometry, diffusion.brain, s0, geometry)


def _dsc_flags(
    dr2: DeltaR2,
    smoothed: np.ndarray,
    tissue: np.ndarray,
    aif: DscAif,
    aif_side: int,
    affected: int,
    motion_mm: np.ndarray,
    settings: MriSettings,
) -> list[QualityFlag]:
    limits = settings.quality
    flags: list[QualityFlag] = []
    worst = float(np.max(motion_mm))
    if worst > limits.max_frame_motion_mm:
        n_moved = int(np.count_nonzero(motion_mm > limits.max_frame_motion_mm))
        flags.append(
            QualityFlag(
                "motion",
                "warning",
                f"head motion during the perfusion scan: {n_moved} of {motion_mm.size} frames "
                f"displaced by up to {worst:.1f} mm (not corrected)",
            )
        )
    tissue_curve = smoothed[:, tissue].mean(axis=1)
    tissue_peak = float(tissue_curve.max())
    problems = []
    curve = aif.curve
    if tissue_peak > 0 and curve.peak < limits.min_aif_tissue_peak_ratio * tissue_peak:
        problems.append(
            f"arterial delta-R2* peak is only {curve.peak / tissue_peak:.1f} x the tissue peak"
        )
    if curve.fwhm_s > limits.max_aif_fwhm_s:
        problems.append(f"arterial bolus is wide (FWHM {curve.fwhm_s:.0f} s)")
    if affected != 0 and aif_side == 0:
        problems.append("no artery found in the unaffected hemisphere")
    if problems:
        flags.append(QualityFlag("poor_aif", "warning", "; ".join(problems)))
    if aif.n_saturated_rejected:
        flags.append(
            QualityFlag(
                "aif_saturation",
                "info",
                f"{aif.n_saturated_rejected} arterial voxels with signal at the noise floor "
                "(saturated) were not used for the arterial input",
            )
        )
    tail = tissue_curve[-1] / tissue_peak if tissue_peak > 0 else 1.0
    if curve.tail_fraction > limits.max_aif_tail_fraction or tail > limits.max_tissue_tail_fraction:
        flags.append(
            QualityFlag(
                "bolus_truncated",
                "critical",
                f"scan too short: tissue delta-R2* still at {100 * tail:.0f} % of its peak at "
                "the last frame; Tmax is underestimated",
            )
        )
    base = dr2.baseline
    if base.stop - base.start >= 2 and tissue.any():
        noise = float(np.median(dr2.delta_r2_s[base][:, tissue].std(axis=0, ddof=1)))
        snr = tissue_peak / max(noise, 1e-6)
        if snr < limits.min_dsc_snr:
            flags.append(
                QualityFlag(
                    "low_snr",
                    "warning",
                    f"low signal-to-noise: tissue delta-R2* peak {tissue_peak:.1f}/s against "
                    f"{noise:.1f}/s noise",
                )
            )
    return flags
