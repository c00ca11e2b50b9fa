"""Quality flags a neuroradiologist needs to trust (or distrust) a perfusion result."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True)
class QualityFlag:
    """One finding about the acquisition or the analysis.

    ``info`` is a note (the result stands); ``warning`` and ``critical`` mean the
    numbers must be checked against the images before they are used.
    """

    code: str
    severity: Severity
    message: str

    def as_dict(self) -> dict[str, str]:
        """Plain dictionary for JSON."""
        return asdict(self)


def quality_ok(flags: list[QualityFlag]) -> bool:
    """True when no flag is a warning or critical."""
    return all(f.severity == "info" for f in flags)


@dataclass(frozen=True)
class QualityLimits:
    """Limits that raise the CT perfusion analysis' flags (``[analysis.ctp.quality]``).

    Attributes
    ----------
    motion_note_mm : float
        Corrected in-plane motion above this raises ``motion_corrected``.
    min_aif_peak : float
        An arterial peak (HU, after the partial-volume scale) below this raises ``poor_aif``.
    max_aif_fwhm_s : float
        An arterial bolus wider than this (full width at half maximum) raises ``poor_aif``.
    max_vof_tail_fraction, max_aif_tail_fraction : float
        Venous or arterial enhancement at the last frame above this fraction of its peak
        raises ``bolus_truncated``.
    min_snr : float
        Mean tissue enhancement over its baseline noise below this raises ``low_snr``.
    min_coverage_mm : float
        Brain coverage along the slices below this raises ``incomplete_coverage``.
    max_missing_fraction : float
        A slice missing more than this fraction of its frames raises ``missing_frames``.
    min_baseline_frames : int
        Fewer frames before the bolus arrives raise ``short_baseline``.
    max_pv_scale : float
        A venous area more than this many times the arterial area (arterial partial
        volume) raises ``poor_aif``.
    """

    motion_note_mm: float = 2.0
    min_aif_peak: float = 100.0
    max_aif_fwhm_s: float = 14.0
    max_vof_tail_fraction: float = 0.35
    max_aif_tail_fraction: float = 0.35
    min_snr: float = 1.5
    min_coverage_mm: float = 30.0
    max_missing_fraction: float = 0.1
    min_baseline_frames: int = 2
    max_pv_scale: float = 2.5


@dataclass(frozen=True)
class MriQualityLimits:
    """Limits that raise the MR analysis' flags (``[analysis.mri.quality]``).

    Attributes
    ----------
    max_frame_motion_mm : float
        DSC frames whose head outline moves more than this raise ``motion``.
    min_dsc_snr : float
        Tissue delta-R2* peak over its baseline noise below this raises ``low_snr``.
    min_baseline_frames : int
        Fewer clean pre-bolus frames raise ``short_baseline``.
    min_aif_tissue_peak_ratio : float
        An arterial delta-R2* peak below this many tissue peaks raises ``poor_aif``.
    max_aif_fwhm_s : float
        An arterial bolus wider than this (full width at half maximum) raises ``poor_aif``.
    max_aif_tail_fraction : float
        Arterial delta-R2* at the last frame above this fraction of its peak raises
        ``bolus_truncated``.
    max_tissue_tail_fraction : float
        The same for the mean tissue curve.
    symmetric_low_adc_warning_ml : float
        Bilateral symmetric low ADC from this volume on is a warning (the size of a false
        core that would matter); below it, an information.
    max_adc_disagreement : float
        Relative disagreement (median over tissue) between the scanner's and the computed
        ADC above this raises ``adc_disagreement``.
    """

    max_frame_motion_mm: float = 2.0
    min_dsc_snr: float = 3.0
    min_baseline_frames: int = 3
    min_aif_tissue_peak_ratio: float = 3.0
    max_aif_fwhm_s: float = 14.0
    max_aif_tail_fraction: float = 0.35
    max_tissue_tail_fraction: float = 0.5
    symmetric_low_adc_warning_ml: float = 5.0
    max_adc_disagreement: float = 0.15
