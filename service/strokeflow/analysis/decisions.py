"""Treatment-selection rule sets (target mismatch and malignant profile) in one table.

Every rule set is named and versioned, and its thresholds live in ``RULE_SETS`` only, so
that the SR, the summary page and the JSON cite the same numbers. Volumes are in mL;
the mismatch ratio is Tmax>6 s volume / core volume (infinite when the core is empty).

The rule sets were defined on Tmax > 6 s and Tmax > 10 s volumes, so those two are always
measured at exactly these thresholds (:data:`PUBLISHED_TMAX_S`); a site's other thresholds
(``tmax_thresholds_s``) only add volumes, named by their value
(:func:`extra_tmax_thresholds_s`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

#: Tmax (s) of the hypoperfused tissue of the mismatch rules (DEFUSE 3, EXTEND, DEFUSE 2).
HYPOPERFUSION_TMAX_S = 6.0
#: Tmax (s) of the severe hypoperfusion of DEFUSE 2, its malignant profile and the HIR.
SEVERE_HYPOPERFUSION_TMAX_S = 10.0
#: The thresholds the rule sets were published with: always measured, whatever a site sets.
PUBLISHED_TMAX_S = (HYPOPERFUSION_TMAX_S, SEVERE_HYPOPERFUSION_TMAX_S)

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Criterion:
    """One comparison, e.g. ``core_ml < 70``."""

    quantity: str
    op: str
    threshold: float

    def holds(self, values: Mapping[str, float]) -> bool:
        """True when the criterion is met by ``values``."""
        return _OPS[self.op](values[self.quantity], self.threshold)

    def __str__(self) -> str:
        return f"{self.quantity} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class RuleSet:
    """A named decision: true when ``all`` its criteria hold (or ``any``, when ``any_of``)."""

    key: str
    name: str
    version: str
    reference: str
    criteria: tuple[Criterion, ...]
    any_of: bool = False

    def evaluate(self, values: dict[str, float]) -> bool:
        """Apply the rule to the lesion metrics."""
        results = [c.holds(values) for c in self.criteria]
        return any(results) if self.any_of else all(results)

    def evaluate_known(self, values: Mapping[str, float]) -> bool | None:
        """Apply the rule when some quantities may be unknown (absent from ``values``).

        Three-valued (Kleene) logic: a criterion on an unknown quantity is unknown; the
        rule is still decided when the known criteria settle it (one false criterion of
        an "all of" rule, one true criterion of an "any of" rule), and None otherwise.
        """
        results = [c.holds(values) if c.quantity in values else None for c in self.criteria]
        settling = bool(self.any_of)
        if settling in results:
            return settling
        return None if None in results else not settling

    def describe(self) -> str:
        """Human-readable rule, e.g. ``core_ml < 70 and mismatch_ml >= 15``."""
        joiner = " or " if self.any_of else " and "
        return joiner.join(str(c) for c in self.criteria)


RULE_SETS: tuple[RuleSet, ...] = (
    RuleSet(
        key="defuse3",
        name="DEFUSE 3 target mismatch",
        version="2018",
        reference="Albers et al., N Engl J Med 2018;378:708-718",
        criteria=(
            Criterion("core_ml", "<", 70.0),
            Criterion("mismatch_ml", ">=", 15.0),
            Criterion("mismatch_ratio", ">=", 1.8),
        ),
    ),
    RuleSet(
        key="defuse2",
        name="DEFUSE 2 target mismatch",
        version="2012",
        reference="Lansberg et al., Lancet Neurol 2012;11:860-867",
        criteria=(
            Criterion("mismatch_ratio", ">=", 1.8),
            Criterion("mismatch_ml", ">=", 15.0),
            Criterion("core_ml", "<", 70.0),
            Criterion("tmax10_ml", "<", 100.0),
        ),
    ),
    RuleSet(
        key="extend",
        name="EXTEND perfusion mismatch",
        version="2019",
        reference="Ma et al., N Engl J Med 2019;380:1795-1803",
        criteria=(
            Criterion("core_ml", "<", 70.0),
            Criterion("mismatch_ml", ">", 10.0),
            Criterion("mismatch_ratio", ">", 1.2),
        ),
    ),
    RuleSet(
        key="malignant_profile",
        name="DEFUSE 2 malignant profile",
        version="2012",
        reference="Lansberg et al., Lancet Neurol 2012;11:860-867",
        criteria=(Criterion("core_ml", ">=", 100.0), Criterion("tmax10_ml", ">=", 100.0)),
        any_of=True,
    ),
)

#: Hypoperfusion intensity ratio above which collaterals are usually poor (Olivot 2014).
HIR_POOR_COLLATERALS = 0.4


def extra_tmax_thresholds_s(configured_s: Iterable[float]) -> tuple[float, ...]:
    """The configured Tmax thresholds that add volumes beside the published ones.

    Parameters
    ----------
    configured_s : iterable of float
        A site's ``tmax_thresholds_s``, in seconds.

    Returns
    -------
    tuple of float
        Ascending, without repeats and without :data:`PUBLISHED_TMAX_S` (always measured).

    Raises
    ------
    ValueError
        If a threshold is not a finite number above 0 s.
    """
    values = [float(t) for t in configured_s]
    bad = [t for t in values if not (math.isfinite(t) and t > 0)]
    if bad:
        raise ValueError(f"tmax_thresholds_s must be finite and above 0 s; got {bad}")
    return tuple(sorted({t for t in values if t not in PUBLISHED_TMAX_S}))


@dataclass(frozen=True)
class LesionMetrics:
    """Volumes and ratios that the decisions are made on (mL, rounded to 0.1 mL).

    Rounding happens first, so that the numbers a reader sees are the numbers decided on.
    ``tmax6_ml`` and ``tmax10_ml`` are measured at the published 6 s and 10 s
    (:data:`PUBLISHED_TMAX_S`), whatever thresholds a site configures.
    """

    core_ml: float
    tmax6_ml: float
    tmax10_ml: float
    mismatch_ml: float
    mismatch_ratio: float | None
    hypoperfusion_intensity_ratio: float | None
    core_to_penumbra_ratio: float | None

    def decision_inputs(self) -> dict[str, float]:
        """Values for the rule sets; an empty core gives an infinite mismatch ratio."""
        ratio = math.inf if self.mismatch_ratio is None else self.mismatch_ratio
        return {
            "core_ml": self.core_ml,
            "tmax6_ml": self.tmax6_ml,
            "tmax10_ml": self.tmax10_ml,
            "mismatch_ml": self.mismatch_ml,
            "mismatch_ratio": ratio,
        }


def lesion_metrics(core_ml: float, tmax6_ml: float, tmax10_ml: float) -> LesionMetrics:
    """Derive mismatch volume and the ratios from the three lesion volumes.

    Parameters
    ----------
    core_ml, tmax6_ml, tmax10_ml : float
        Ischaemic core, Tmax > 6 s and Tmax > 10 s volumes in mL.

    Returns
    -------
    LesionMetrics
        Mismatch = Tmax>6 - core (not below 0); ratio = Tmax>6 / core (None when the
        core is 0); HIR = Tmax>10 / Tmax>6 (None when Tmax>6 is 0); core-to-penumbra
        ratio = core / mismatch (None when the mismatch is 0).
    """
    if min(core_ml, tmax6_ml, tmax10_ml) < 0:
        raise ValueError("lesion volumes must not be negative")
    core = round(float(core_ml), 1)
    tmax6 = round(float(tmax6_ml), 1)
    tmax10 = round(float(tmax10_ml), 1)
    mismatch = round(max(tmax6 - core, 0.0), 1)
    return LesionMetrics(
        core_ml=core,
        tmax6_ml=tmax6,
        tmax10_ml=tmax10,
        mismatch_ml=mismatch,
        mismatch_ratio=round(tmax6 / core, 2) if core > 0 else None,
        hypoperfusion_intensity_ratio=round(tmax10 / tmax6, 2) if tmax6 > 0 else None,
        core_to_penumbra_ratio=round(core / mismatch, 2) if mismatch > 0 else None,
    )


def evaluate_decisions(metrics: LesionMetrics) -> dict[str, bool]:
    """Apply every rule set in ``RULE_SETS``; keys are the rule sets' ``key``."""
    values = metrics.decision_inputs()
    return {rule.key: rule.evaluate(values) for rule in RULE_SETS}


def evaluate_assessable_decisions(
    metrics: LesionMetrics, not_assessable: Collection[str]
) -> dict[str, bool | None]:
    """Apply every rule set when some quantities cannot be assessed.

    Parameters
    ----------
    metrics : LesionMetrics
        The measured volumes and ratios.
    not_assessable : collection of str
        Decision inputs (keys of ``LesionMetrics.decision_inputs``, e.g. ``"tmax10_ml"``)
        that must not be relied on, e.g. because the scan ended before the tissue washed out.

    Returns
    -------
    dict of str to bool or None
        Keyed like ``RULE_SETS``; None where the rule depends on an unassessable quantity
        and the others do not settle it.
    """
    values = {k: v for k, v in metrics.decision_inputs().items() if k not in not_assessable}
    return {rule.key: rule.evaluate_known(values) for rule in RULE_SETS}


def rule_table() -> dict[str, dict[str, str]]:
    """Every rule set as plain text (name, version, rule, reference), keyed like the decisions."""
    return {
        r.key: {
            "name": r.name,
            "version": r.version,
            "rule": r.describe(),
            "reference": r.reference,
        }
        for r in RULE_SETS
    }
