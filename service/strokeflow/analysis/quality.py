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
    """Limits that raise the flags (CT defaults)."""

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
