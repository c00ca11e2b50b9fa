"""The analysis summary: one typed, validated record of what an analysis found.

Both pipelines end in an :class:`AnalysisSummary`
(:func:`strokeflow.report.results_json.ctp_summary`,
:func:`strokeflow.report.results_json.mri_summary`). Everything a person or a program reads
is written from it: the results.json entry (:meth:`AnalysisSummary.to_json`, the one
writer), the job row, the CLI line, and the summary page and SR
(:func:`strokeflow.report.content.result_content`).

Tmax volumes are named by their threshold: Tmax > 6 s and > 10 s, on which the
published rules are decided, are always present; a site's other thresholds add
entries of their own (``tmax_volumes_ml`` in results.json, keyed by the value in seconds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from strokeflow import __version__
from strokeflow.analysis.decisions import (
    HIR_POOR_COLLATERALS,
    HYPOPERFUSION_TMAX_S,
    PUBLISHED_TMAX_S,
    RULE_SETS,
    SEVERE_HYPOPERFUSION_TMAX_S,
    LesionMetrics,
    rule_table,
)
from strokeflow.analysis.inputs import VascularCurve
from strokeflow.analysis.lesions import TmaxRegion
from strokeflow.analysis.quality import QualityFlag, quality_ok
from strokeflow.analysis.volume import Geometry

AnalysisKind = Literal["ctp", "mri"]
#: What each kind is called on the pages and in the series descriptions.
TITLES: dict[str, str] = {"ctp": "CT perfusion", "mri": "MR stroke"}
_SIDES = (None, "left", "right")


def _check_volume(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite volume of at least 0 mL; got {value}")


@dataclass(frozen=True)
class TmaxVolume:
    """The volume of tissue with Tmax above one threshold.

    Attributes
    ----------
    threshold_s : float
        The threshold in seconds; every name, code and label is made from it.
    volume_ml : float or None
        None when it was not measured (no perfusion series) or is not assessable.
    not_assessable : str or None
        Why the acquisition cannot support it (e.g. "not assessable: scan too short").
    """

    threshold_s: float
    volume_ml: float | None
    not_assessable: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold_s) and self.threshold_s > 0):
            raise ValueError(f"Tmax threshold must be above 0 s; got {self.threshold_s}")
        _check_volume(self.label, self.volume_ml)
        if self.not_assessable is not None and self.volume_ml is not None:
            raise ValueError(f"{self.label}: a volume that is not assessable must be None")

    @property
    def published(self) -> bool:
        """True for the thresholds the decision rules were defined with (6 s, 10 s)."""
        return self.threshold_s in PUBLISHED_TMAX_S

    @property
    def key(self) -> str:
        """Region key and SR tracking identifier, e.g. ``"tmax6"``, ``"tmax4.5"``."""
        return f"tmax{self.threshold_s:g}"

    @property
    def quantity(self) -> str:
        """Name of the quantity (``not_assessable`` key), e.g. ``"tmax10_ml"``."""
        return f"{self.key}_ml"

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``"Tmax > 6 s"``."""
        return f"Tmax > {self.threshold_s:g} s"


def tmax_volumes(
    metrics: LesionMetrics | None,
    extra: Sequence[TmaxRegion],
    not_assessable: Mapping[str, str],
) -> tuple[TmaxVolume, ...]:
    """The published Tmax volumes and a site's extra ones, by ascending threshold.

    Parameters
    ----------
    metrics : LesionMetrics or None
        The published volumes; None without perfusion (every volume is then None).
    extra : sequence of TmaxRegion
        A site's other thresholds.
    not_assessable : mapping of str to str
        Reasons by quantity (``"tmax10_ml"``, ``"tmax12_ml"``); those volumes are None.
    """
    measured: dict[float, float | None] = {
        HYPOPERFUSION_TMAX_S: None if metrics is None else metrics.tmax6_ml,
        SEVERE_HYPOPERFUSION_TMAX_S: None if metrics is None else metrics.tmax10_ml,
    }
    for region in extra:
        measured[region.threshold_s] = None if metrics is None else region.volume_ml
    out = []
    for threshold in sorted(measured):
        reason = not_assessable.get(TmaxVolume(threshold, None).quantity)
        out.append(TmaxVolume(threshold, None if reason else measured[threshold], reason))
    return tuple(out)


def curve_json(
    curve: VascularCurve,
    grid_s: np.ndarray,
    geometry: Geometry,
    unit: str,
    digits: tuple[int, int],
) -> dict[str, Any]:
    """A vascular curve as results.json writes it.

    Parameters
    ----------
    curve : VascularCurve
        The curve and its voxels.
    grid_s : numpy.ndarray
        Sample times (s).
    geometry : Geometry
        Grid of the voxels.
    unit : str
        Suffix of the value keys: ``"hu"`` gives ``curve_hu`` and ``peak_hu``.
    digits : (int, int)
        Decimals of the curve samples and of the peak.
    """
    return {
        "times_s": [round(float(t), 2) for t in grid_s - grid_s[0]],
        f"curve_{unit}": [round(float(v), digits[0]) for v in curve.curve],
        "location_lps_mm": curve.location_lps_mm(geometry),
        "voxels_zyx": curve.voxels_zyx.astype(int).tolist(),
        f"peak_{unit}": round(curve.peak, digits[1]),
        "time_to_peak_s": round(curve.ttp_s, 2),
        "fwhm_s": round(curve.fwhm_s, 2),
        "tail_fraction": round(curve.tail_fraction, 3),
    }


#: Keys the summary writes itself; a modality's ``details`` must not repeat them.
_COMMON_KEYS = frozenset(
    {
        "kind",
        "series_instance_uids",
        "perfusion_available",
        "core_ml",
        "tmax6_ml",
        "tmax10_ml",
        "tmax_volumes_ml",
        "mismatch_ml",
        "mismatch_ratio",
        "hypoperfusion_intensity_ratio",
        "core_to_penumbra_ratio",
        "lesion_side",
        "decisions",
        "not_assessable",
        "decision_rules",
        "collaterals",
        "thresholds",
        "quality",
        "warnings",
        "method",
        "timings_s",
    }
)


@dataclass(frozen=True)
class AnalysisSummary:
    """What one analysis found, in the form every output is written from.

    Attributes
    ----------
    kind : {"ctp", "mri"}
        The pipeline.
    series_instance_uids : tuple of str
        Series analysed.
    core_ml : float
        Ischaemic core (mL, rounded to 0.1).
    tmax : tuple of TmaxVolume
        By ascending threshold; always holds the published 6 s and 10 s.
    mismatch_ml, mismatch_ratio, hypoperfusion_intensity_ratio, core_to_penumbra_ratio
        None when not measured, not assessable or undefined (an empty core).
    lesion_side : {"left", "right"} or None
    decisions : mapping of str to bool or None
        By rule-set key; None when the rule cannot be decided.
    not_assessable : mapping of str to str
        Quantities and decisions the acquisition cannot support, with the reason.
    perfusion_available : bool
        False for an MR study without DSC: Tmax volumes and mismatch are then None.
    flags : tuple of QualityFlag
    core_thresholds : mapping of str to float
        The core definition's thresholds (results.json ``thresholds``).
    min_cluster_ml : float
        Smallest lesion cluster kept.
    method : mapping of str to Any
        The method in words and parameters (results.json ``method``, without the
        software, which the writer adds).
    details : mapping of str to Any
        The modality's own results.json entries (curves, grid, motion, ADC, ...).
    warnings : tuple of str
        Assembly warnings.
    timings_s : mapping of str to float
        Stage timings.
    study_instance_uid : str
        The study (the parent entry of results.json, so not in :meth:`to_json`).
    """

    kind: AnalysisKind
    series_instance_uids: tuple[str, ...]
    core_ml: float
    tmax: tuple[TmaxVolume, ...]
    mismatch_ml: float | None
    mismatch_ratio: float | None
    hypoperfusion_intensity_ratio: float | None
    core_to_penumbra_ratio: float | None
    lesion_side: str | None
    decisions: Mapping[str, bool | None]
    not_assessable: Mapping[str, str]
    perfusion_available: bool
    flags: tuple[QualityFlag, ...]
    core_thresholds: Mapping[str, float]
    min_cluster_ml: float
    method: Mapping[str, Any]
    details: Mapping[str, Any]
    warnings: tuple[str, ...] = ()
    timings_s: Mapping[str, float] = field(default_factory=dict)
    study_instance_uid: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TITLES:
            raise ValueError(f"kind must be one of {sorted(TITLES)}; got {self.kind!r}")
        _check_volume("core_ml", self.core_ml)
        _check_volume("mismatch_ml", self.mismatch_ml)
        thresholds = [t.threshold_s for t in self.tmax]
        if thresholds != sorted(set(thresholds)):
            raise ValueError(f"tmax thresholds must ascend without repeats; got {thresholds}")
        missing = [t for t in PUBLISHED_TMAX_S if t not in thresholds]
        if missing:
            raise ValueError(f"tmax must hold the published thresholds; {missing} missing")
        if not self.perfusion_available and any(t.volume_ml is not None for t in self.tmax):
            raise ValueError("Tmax volumes without perfusion: perfusion_available is False")
        for name in ("mismatch_ratio", "hypoperfusion_intensity_ratio", "core_to_penumbra_ratio"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite ratio of at least 0; got {value}")
        if self.lesion_side not in _SIDES:
            raise ValueError(f"lesion_side must be left, right or None; got {self.lesion_side!r}")
        unknown = set(self.decisions) - {r.key for r in RULE_SETS}
        if unknown:
            raise ValueError(f"decisions of unknown rule sets: {sorted(unknown)}")
        repeated = _COMMON_KEYS & set(self.details)
        if repeated:
            raise ValueError(f"details repeat the summary's own entries: {sorted(repeated)}")

    @property
    def title(self) -> str:
        """E.g. ``"CT perfusion"``: starts every page title and series description."""
        return TITLES[self.kind]

    @property
    def quality_ok(self) -> bool:
        """True when no flag is a warning or critical."""
        return quality_ok(list(self.flags))

    def tmax_ml(self, threshold_s: float) -> float | None:
        """The Tmax > ``threshold_s`` volume (None when not measured or not assessable).

        Raises
        ------
        KeyError
            If no volume was measured at that threshold.
        """
        for volume in self.tmax:
            if volume.threshold_s == threshold_s:
                return volume.volume_ml
        raise KeyError(f"no Tmax > {threshold_s:g} s volume")

    @property
    def tmax6_ml(self) -> float | None:
        """The published Tmax > 6 s volume."""
        return self.tmax_ml(HYPOPERFUSION_TMAX_S)

    @property
    def tmax10_ml(self) -> float | None:
        """The published Tmax > 10 s volume."""
        return self.tmax_ml(SEVERE_HYPOPERFUSION_TMAX_S)

    def to_json(self) -> dict[str, Any]:
        """The ``studies[].analyses`` entry of results.json (JSON-serialisable)."""
        hir = self.hypoperfusion_intensity_ratio
        return {
            "kind": self.kind,
            "series_instance_uids": list(self.series_instance_uids),
            "perfusion_available": self.perfusion_available,
            "core_ml": self.core_ml,
            "tmax6_ml": self.tmax6_ml,
            "tmax10_ml": self.tmax10_ml,
            "tmax_volumes_ml": {f"{t.threshold_s:g}": t.volume_ml for t in self.tmax},
            "mismatch_ml": self.mismatch_ml,
            "mismatch_ratio": self.mismatch_ratio,
            "hypoperfusion_intensity_ratio": hir,
            "core_to_penumbra_ratio": self.core_to_penumbra_ratio,
            "lesion_side": self.lesion_side,
            "decisions": dict(self.decisions),
            "not_assessable": dict(self.not_assessable),
            "decision_rules": rule_table(),
            "collaterals": {
                "hypoperfusion_intensity_ratio": hir,
                "poor_if_above": HIR_POOR_COLLATERALS,
            },
            "thresholds": {
                **self.core_thresholds,
                "tmax_s_above": [t.threshold_s for t in self.tmax],
                "min_cluster_ml": self.min_cluster_ml,
            },
            **self.details,
            "quality": {"ok": self.quality_ok, "flags": [f.as_dict() for f in self.flags]},
            "warnings": list(self.warnings),
            "method": {**self.method, "software": f"StrokeFlow {__version__}"},
            "timings_s": dict(self.timings_s),
        }

    def job_fields(self) -> dict[str, Any]:
        """The job row's result columns (the published volumes and the decisions)."""
        return {
            "core_ml": self.core_ml,
            "tmax6_ml": self.tmax6_ml,
            "tmax10_ml": self.tmax10_ml,
            "mismatch_ml": self.mismatch_ml,
            "mismatch_ratio": self.mismatch_ratio,
            "decisions": dict(self.decisions),
        }
