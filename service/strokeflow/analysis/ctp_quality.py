"""Quality flags of the CT perfusion pipeline: motion, arterial/venous input, acquisition."""

from __future__ import annotations

import numpy as np

from strokeflow.analysis.brainmask import BrainMasks
from strokeflow.analysis.inputs import VascularCurve
from strokeflow.analysis.motion import MotionResult
from strokeflow.analysis.quality import QualityFlag, QualityLimits
from strokeflow.analysis.volume import PerfusionSeries
from strokeflow.analysis.voxels import voxel_curves

#: A tissue curve has washed out when, over the last ``TAIL_WINDOW_S`` of the scan, it is
#: back below this fraction of its peak; one that is still above has not completed its
#: first pass (or not even peaked), so its CBV, MTT and Tmax are cut short.
MAX_TISSUE_TAIL_FRACTION = 0.75
TAIL_WINDOW_S = 2.0
#: Only curves whose peak stands this far above their own baseline noise are judged:
#: the tail of a curve lost in noise says nothing about the scan length.
MIN_JUDGED_PEAK_SNR = 5.0
#: Tissue volume whose curves have not washed out that makes the scan too short.
MAX_UNWASHED_TISSUE_ML = 5.0


def motion_flags(motion: MotionResult, limits: QualityLimits) -> list[QualityFlag]:
    """Frames excluded for uncorrectable motion, and motion that was corrected."""
    flags: list[QualityFlag] = []
    n_excluded = int(np.count_nonzero(motion.excluded))
    if n_excluded:
        flags.append(
            QualityFlag(
                "motion",
                "warning",
                f"{n_excluded} of {motion.excluded.size} frames excluded for uncorrectable "
                "motion: " + "; ".join(motion.messages),
            )
        )
    moved = float(np.max(motion.displacement_mm[~motion.excluded], initial=0.0))
    if moved > limits.motion_note_mm:
        # On the phantom, 4 mm of corrected motion shrinks a 20 mL core by a third: the
        # resampled frames blur lesion borders and smear edges into pseudo-enhancement.
        flags.append(
            QualityFlag(
                "motion_corrected",
                "warning",
                f"head motion up to {moved:.1f} mm was corrected by rigid registration; "
                "the core may be underestimated: check the source images",
            )
        )
    return flags


def input_flags(
    aif: VascularCurve,
    vof: VascularCurve | None,
    scale: float,
    aif_side: int,
    affected: int,
    limits: QualityLimits,
) -> list[QualityFlag]:
    """Poor arterial input, truncated bolus, missing venous output."""
    flags: list[QualityFlag] = []
    problems = []
    if aif.peak * scale < limits.min_aif_peak:
        problems.append(f"arterial peak {aif.peak * scale:.0f} HU is low")
    if aif.fwhm_s > limits.max_aif_fwhm_s:
        problems.append(f"arterial bolus is wide (FWHM {aif.fwhm_s:.0f} s)")
    if scale > limits.max_pv_scale:
        problems.append(f"venous area is {scale:.1f} x the arterial area (partial volume)")
    if affected != 0 and aif_side == 0:
        problems.append("no artery found in the unaffected hemisphere")
    if problems:
        flags.append(QualityFlag("poor_aif", "warning", "; ".join(problems)))
    truncated = aif.tail_fraction > limits.max_aif_tail_fraction
    if vof is not None and vof.tail_fraction > limits.max_vof_tail_fraction:
        truncated = True
    if truncated:
        tail = vof.tail_fraction if vof is not None else aif.tail_fraction
        flags.append(
            QualityFlag(
                "bolus_truncated",
                "critical",
                f"scan too short: the venous curve is still at {100 * tail:.0f} % of its peak "
                "at the last frame; CBV, MTT and Tmax are underestimated",
            )
        )
    if vof is None:
        flags.append(
            QualityFlag("no_vof", "info", "no venous output found; AIF not volume-corrected")
        )
    return flags


def acquisition_flags(
    series: PerfusionSeries,
    masks: BrainMasks,
    concentration: np.ndarray,
    arrival: int,
    limits: QualityLimits,
) -> list[QualityFlag]:
    """Incomplete coverage, missing frames, low signal-to-noise."""
    flags: list[QualityFlag] = []
    dz = series.geometry.voxel_size_mm[0]
    covered_mm = dz * int(np.count_nonzero(masks.brain.any(axis=(1, 2))))
    if covered_mm < limits.min_coverage_mm:
        flags.append(
            QualityFlag(
                "incomplete_coverage",
                "warning",
                f"brain coverage is only {covered_mm:.0f} mm: volumes outside the slab are missed",
            )
        )
    missing = series.missing.mean(axis=0)
    worst = int(np.argmax(missing))
    if missing[worst] > limits.max_missing_fraction:
        flags.append(
            QualityFlag(
                "missing_frames",
                "warning",
                f"{int(series.missing[:, worst].sum())} of {series.missing.shape[0]} frames "
                f"missing at slice {worst + 1}; they were interpolated in time",
            )
        )
    tissue = masks.tissue
    if arrival >= 2 and tissue.any():
        # Per-voxel noise from the baseline frames; enhancement from the mean tissue
        # curve, whose peak is not inflated by noise as a per-voxel maximum would be.
        noise = float(np.median(voxel_curves(concentration[:arrival], tissue).std(axis=0, ddof=1)))
        enhancement = float(voxel_curves(concentration, tissue).mean(axis=1).max())
        snr = enhancement / max(noise, 1e-6)
        if snr < limits.min_snr:
            flags.append(
                QualityFlag(
                    "low_snr",
                    "warning",
                    f"low signal-to-noise: tissue enhancement {enhancement:.1f} HU against "
                    f"{noise:.1f} HU noise",
                )
            )
    return flags


def unwashed_tissue(
    smoothed: np.ndarray, tissue: np.ndarray, arrival: int, step_s: float
) -> np.ndarray:
    """Tissue voxels whose curve has not peaked and washed out before the last frame.

    Parameters
    ----------
    smoothed : numpy.ndarray
        ``(n, z, y, x)`` filtered tissue enhancement on the uniform grid.
    tissue : numpy.ndarray
        ``(z, y, x)`` bool analysable tissue.
    arrival : int
        First contrast frame (the frames before it give each voxel's noise).
    step_s : float
        Grid step.

    Returns
    -------
    numpy.ndarray
        ``(z, y, x)`` bool: judged voxels (peak above ``MIN_JUDGED_PEAK_SNR`` x noise) whose
        mean over the last ``TAIL_WINDOW_S`` is above ``MAX_TISSUE_TAIL_FRACTION`` of the peak.
    """
    out = np.zeros(tissue.shape, dtype=bool)
    curves = voxel_curves(smoothed, tissue)
    n = curves.shape[0]
    if curves.shape[1] == 0 or n < 4:
        return out
    peak = curves.max(axis=0)
    tail = curves[-max(1, round(TAIL_WINDOW_S / step_s)) :].mean(axis=0)
    if arrival >= 3:
        noise = curves[:arrival].std(axis=0, ddof=1)
    else:
        # Too few baseline frames: frame-to-frame differences, which hold the noise
        # (times sqrt 2) and little of the slow bolus.
        noise = np.diff(curves, axis=0).std(axis=0, ddof=1) / np.sqrt(2.0)
    judged = peak > MIN_JUDGED_PEAK_SNR * np.maximum(noise, 1e-6)
    out[tissue] = judged & (tail > MAX_TISSUE_TAIL_FRACTION * peak)
    return out


def tissue_truncation_flag(
    unwashed_ml: float, last_frame_s: float, tmax_threshold_s: float
) -> QualityFlag | None:
    """Critical flag when too much tissue has not washed out at the end of the scan."""
    if unwashed_ml < MAX_UNWASHED_TISSUE_ML:
        return None
    return QualityFlag(
        "tissue_truncated",
        "critical",
        f"scan too short for the tissue: {unwashed_ml:.0f} mL of brain tissue has not peaked "
        f"and washed out by the last frame ({last_frame_s:.0f} s); Tmax is underestimated "
        f"there, so Tmax > {tmax_threshold_s:g} s, the hypoperfusion intensity ratio and the "
        "malignant profile are not assessable; core and Tmax > 6 s may be underestimated",
    )
