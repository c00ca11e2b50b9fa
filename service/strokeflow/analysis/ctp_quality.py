"""Quality flags of the CT perfusion pipeline: motion, arterial/venous input, acquisition."""

from __future__ import annotations

import numpy as np

from strokeflow.analysis.brainmask import BrainMasks
from strokeflow.analysis.inputs import VascularCurve
from strokeflow.analysis.motion import MotionResult
from strokeflow.analysis.quality import QualityFlag, QualityLimits
from strokeflow.analysis.volume import PerfusionSeries


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
        noise = float(np.median(concentration[:arrival, tissue].std(axis=0, ddof=1)))
        enhancement = float(concentration[:, tissue].mean(axis=1).max())
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
