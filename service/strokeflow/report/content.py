"""What the result objects say, built once from an :class:`AnalysisSummary`.

The regions (SEG segments, SR groups), the summary page's volume rows, decisions and
alerts, and the SR's decisions and parameters are the same for every modality and are
built here; a modality adds only what differs (:class:`ModalityParts`: the core
definition, the masks, the maps, the anatomy, the curves and its method in words).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.sr.coding import Code

from strokeflow import __version__
from strokeflow.analysis.decisions import (
    HIR_POOR_COLLATERALS,
    HYPOPERFUSION_TMAX_S,
    RULE_SETS,
    SEVERE_HYPOPERFUSION_TMAX_S,
)
from strokeflow.analysis.inputs import VascularCurve
from strokeflow.analysis.quality import QualityFlag
from strokeflow.analysis.volume import Geometry
from strokeflow.report.render import (
    CORE_RGB,
    TMAX6_RGB,
    TMAX10_RGB,
    Curve,
    Decision,
    MapSpec,
    SummaryContent,
)
from strokeflow.report.segmentation import Region
from strokeflow.report.structured_report import (
    HYPOPERFUSION_INTENSITY_RATIO,
    MISMATCH_RATIO,
    RATIO_UNIT,
    ReportFindings,
    private_code,
)
from strokeflow.report.summary import AnalysisSummary, TmaxVolume

INFARCT = Code("55641003", "SCT", "Infarct")
MISMATCH_RGB = (0, 200, 255)
#: Colours of a site's extra Tmax regions in the SEG, in threshold order.
EXTRA_TMAX_RGB = ((0, 140, 255), (255, 120, 0), (160, 100, 255), (120, 255, 200))
#: Shown when an MR study has no perfusion series.
PERFUSION_NOT_AVAILABLE = "Perfusion not available: core only"
#: The summary page's order of the target-mismatch decisions (primary first).
_PAGE_DECISIONS = ("defuse3", "extend", "defuse2")

#: Last line of every summary page.
DISCLAIMER = (
    f"StrokeFlow {__version__}: research and decision-support software, NOT FOR PRIMARY "
    "DIAGNOSIS. Check every result against the source images."
)


def flag_lines(flags: Sequence[QualityFlag]) -> list[str]:
    """One summary-page line per quality flag, severity first."""
    return [f"{f.severity.upper()}: {f.message}" for f in flags]


def location_text(curve: VascularCurve, geometry: Geometry) -> str:
    """Where a vascular curve was measured: slice, side and LPS position, in words."""
    x, y, z = curve.location_lps_mm(geometry)
    side = "midline" if abs(x) < 5 else ("patient left" if x > 0 else "patient right")
    slice_number = round(float(curve.voxels_zyx[:, 0].mean())) + 1
    return f"slice {slice_number}, {side}: x {x:.0f}, y {y:.0f}, z {z:.0f} mm (LPS)"


@dataclass(frozen=True)
class ResultContent:
    """Modality-neutral description of the result objects of one analysis.

    Attributes
    ----------
    title : str
        E.g. ``"CT perfusion"``; starts every SeriesDescription.
    geometry : Geometry
        Grid of ``anatomy_zyx``, the maps and the region masks.
    anatomy_zyx : numpy.ndarray
        Grey-scale anatomy for the lesion pages.
    anatomy_window : (float, float)
        Its display range.
    regions : list of Region
        SEG segments and SR measurement groups, in segment order.
    outlined : list of str
        Keys of the regions outlined on the lesion pages.
    maps : list of MapSpec
        One map page each.
    summary : SummaryContent
        Summary page (``header_lines`` are filled from the source images).
    findings : ReportFindings
        SR content.
    anatomy_head_zyx : numpy.ndarray or None
        Bool head/brain mask the lesion panels are cropped to; None: everything more
        than 200 below the window's low end is air (CT).
    """

    title: str
    geometry: Geometry
    anatomy_zyx: np.ndarray
    anatomy_window: tuple[float, float]
    regions: list[Region]
    outlined: list[str]
    maps: list[MapSpec]
    summary: SummaryContent
    findings: ReportFindings
    anatomy_head_zyx: np.ndarray | None = None


@dataclass(frozen=True)
class CoreDefinition:
    """How a modality defines the ischaemic core, in the words of each output.

    Attributes
    ----------
    mask_zyx : numpy.ndarray
        Bool core mask on the result grid.
    label : str
        SEG segment label, e.g. ``"Ischemic core (rCBF < 30 %)"``.
    row_label : str
        Summary-page row, e.g. ``"Core (rCBF < 30 %)"``.
    definition : str
        The full definition, for the SEG/SR and the SR parameters.
    name : str
        What the mismatch is measured outside of, e.g. ``"core"`` or ``"ADC core"``.
    """

    mask_zyx: np.ndarray
    label: str
    row_label: str
    definition: str
    name: str = "core"


@dataclass(frozen=True)
class ModalityParts:
    """What a modality adds to the shared content: what really differs.

    Attributes
    ----------
    core : CoreDefinition
    tmax_masks : mapping of float to numpy.ndarray
        Tmax > t s masks on the result grid, by threshold (every volume of the summary
        that was measured); empty without perfusion.
    tmax_wording : (str, str)
        Text around "Tmax > t s" in the region definitions, e.g. ``("DSC ", " in DWI
        space")``.
    geometry, anatomy_zyx, anatomy_window, anatomy_head_zyx
        See :class:`ResultContent`.
    maps : list of MapSpec
    curves : list of Curve
    curve_unit, curve_title, notice
        See :class:`~strokeflow.report.render.SummaryContent`.
    extra_rows : list of (str, str)
        Summary-page rows after the shared ones.
    footer : str
        Method line of the summary page.
    parameters_before, parameters_after : list of str
        SR algorithm parameters around the shared hypoperfusion line.
    procedure, method : Code
        SR procedure reported and perfusion method.
    region_methods : mapping of str to Code
        SR method of a region when it is not ``method``.
    """

    core: CoreDefinition
    tmax_masks: Mapping[float, np.ndarray]
    tmax_wording: tuple[str, str]
    geometry: Geometry
    anatomy_zyx: np.ndarray
    anatomy_window: tuple[float, float]
    maps: list[MapSpec]
    curves: list[Curve]
    curve_unit: str
    footer: str
    parameters_before: list[str]
    procedure: Code
    method: Code
    parameters_after: list[str] = field(default_factory=list)
    extra_rows: list[tuple[str, str]] = field(default_factory=list)
    curve_title: str = "Arterial input and venous output"
    notice: str = ""
    region_methods: Mapping[str, Code] = field(default_factory=dict)
    anatomy_head_zyx: np.ndarray | None = None


def _ml(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} mL"


def _tmax_region(
    volume: TmaxVolume, mask: np.ndarray, parts: ModalityParts, cluster: str, colour_index: int
) -> Region:
    prefix, space = parts.tmax_wording
    # The Tmax > 6 s region holds the core, and so does every lower threshold's.
    holds_core = ", including the core" if volume.threshold_s <= HYPOPERFUSION_TMAX_S else ""
    if volume.threshold_s == HYPOPERFUSION_TMAX_S:
        meaning, colour = f"Hypoperfused tissue, {volume.label}", TMAX6_RGB
    elif volume.threshold_s == SEVERE_HYPOPERFUSION_TMAX_S:
        meaning, colour = f"Severely hypoperfused tissue, {volume.label}", TMAX10_RGB
    else:
        meaning = f"Hypoperfused tissue, {volume.label}"
        colour = EXTRA_TMAX_RGB[colour_index % len(EXTRA_TMAX_RGB)]
    assert volume.volume_ml is not None
    return Region(
        volume.key,
        volume.label,
        mask,
        volume.volume_ml,
        private_code(f"TMAX_ABOVE_{volume.threshold_s:g}S", meaning),
        colour,
        f"{prefix}{volume.label}{space}{holds_core}{cluster}",
    )


def regions(summary: AnalysisSummary, parts: ModalityParts) -> list[Region]:
    """SEG segments / SR groups: core, Tmax > 6 s, > 10 s, mismatch, then a site's extras.

    A volume that is not assessable or not measured has no region: nothing is asserted
    about it. The published regions keep their segment numbers whatever a site adds.
    """
    core = parts.core
    cluster = f"; clusters under {summary.min_cluster_ml:g} mL removed"
    out = [
        Region(
            "core",
            core.label,
            core.mask_zyx,
            summary.core_ml,
            INFARCT,
            CORE_RGB,
            core.definition,
        )
    ]
    if not summary.perfusion_available:
        return out
    measured = [t for t in summary.tmax if t.volume_ml is not None]
    published = [t for t in measured if t.published]
    extra = [t for t in measured if not t.published]
    out += [_tmax_region(t, parts.tmax_masks[t.threshold_s], parts, cluster, 0) for t in published]
    six = TmaxVolume(HYPOPERFUSION_TMAX_S, None)
    if summary.mismatch_ml is not None:
        out.append(
            Region(
                "mismatch",
                f"Mismatch ({six.label} minus core)",
                parts.tmax_masks[HYPOPERFUSION_TMAX_S] & ~core.mask_zyx,
                summary.mismatch_ml,
                private_code("MISMATCH_REGION", "Perfusion-core mismatch region"),
                MISMATCH_RGB,
                f"{six.label} region outside the {core.name}",
            )
        )
    out += [
        _tmax_region(t, parts.tmax_masks[t.threshold_s], parts, cluster, k)
        for k, t in enumerate(extra)
    ]
    return out


def volume_rows(summary: AnalysisSummary, parts: ModalityParts) -> list[tuple[str, str]]:
    """The summary page's volume rows: core, every Tmax volume by threshold, mismatch."""
    na = summary.not_assessable
    perfusion = summary.perfusion_available
    if not perfusion:
        ratio_text = hir_text = "n/a"
    else:
        ratio = summary.mismatch_ratio
        ratio_text = "no core (infinite)" if ratio is None else f"{ratio:.1f}"
        hir = summary.hypoperfusion_intensity_ratio
        hir_text = "-" if hir is None else f"{hir:.2f}"
        if "hypoperfusion_intensity_ratio" in na:
            hir_text = "not assessable"
    return [
        (parts.core.row_label, _ml(summary.core_ml)),
        *(
            (t.label, "not assessable" if t.not_assessable else _ml(t.volume_ml))
            for t in summary.tmax
        ),
        ("Mismatch volume", _ml(summary.mismatch_ml)),
        ("Mismatch ratio", ratio_text),
        ("Hypoperfusion intensity ratio", hir_text),
        ("Lesion side", (summary.lesion_side or "none detected").upper()),
        *parts.extra_rows,
    ]


def alerts(summary: AnalysisSummary) -> list[str]:
    """The red lines under the decisions: missing perfusion, malignant profile, HIR."""
    rules = {r.key: r for r in RULE_SETS}
    na = summary.not_assessable
    out = [] if summary.perfusion_available else [PERFUSION_NOT_AVAILABLE]
    if summary.decisions.get("malignant_profile"):
        out.append(f"WARNING: {rules['malignant_profile'].name}")
    severe = na.get(TmaxVolume(SEVERE_HYPOPERFUSION_TMAX_S, None).quantity)
    if severe is not None:
        # Alerts fit the decision column (about 48 characters at their size).
        out.append(f"Tmax>{SEVERE_HYPOPERFUSION_TMAX_S:g} s, HIR: {severe}")
        if "malignant_profile" in na:
            out.append(f"{rules['malignant_profile'].name}: not assessable")
    hir = summary.hypoperfusion_intensity_ratio
    if hir is not None and hir > HIR_POOR_COLLATERALS:
        out.append(f"HIR {hir:.2f} > {HIR_POOR_COLLATERALS:g}: poor collaterals likely")
    return out


def _not_assessable_lines(summary: AnalysisSummary) -> list[str]:
    """The SR parameter lines naming what was not decided, one per reason."""
    names = {t.quantity: t.label for t in summary.tmax}
    names["hypoperfusion_intensity_ratio"] = "hypoperfusion intensity ratio"
    names.update({r.key: r.name for r in RULE_SETS})
    order = list(names)
    by_reason: dict[str, list[str]] = {}
    for key in sorted(summary.not_assessable, key=lambda k: order.index(k) if k in names else 0):
        if key in names:
            by_reason.setdefault(summary.not_assessable[key], []).append(names[key])
    return [f"{', '.join(what)}: {reason}" for reason, what in by_reason.items()]


def _findings(
    summary: AnalysisSummary, parts: ModalityParts, found: list[Region]
) -> ReportFindings:
    measurements: dict[str, list[tuple[Code, float, Code]]] = {}
    keys = {r.key for r in found}
    if summary.mismatch_ratio is not None and "mismatch" in keys:
        measurements["mismatch"] = [(MISMATCH_RATIO, summary.mismatch_ratio, RATIO_UNIT)]
    hir = summary.hypoperfusion_intensity_ratio
    if hir is not None and "tmax10" in keys:
        measurements["tmax10"] = [(HYPOPERFUSION_INTENSITY_RATIO, hir, RATIO_UNIT)]
    hypoperfusion = []
    if summary.perfusion_available:
        labels = [t.label for t in summary.tmax]
        line = f"hypoperfusion: {', '.join(labels[:-1])} and {labels[-1]}"
        if len(labels) > 2:
            line += "; decisions on Tmax > 6 s and Tmax > 10 s"
        hypoperfusion.append(line)
    return ReportFindings(
        procedure=parts.procedure,
        method=parts.method,
        regions=found,
        region_measurements=measurements,
        decisions=[
            (
                private_code(r.key.upper().replace("_PROFILE", ""), f"{r.name} ({r.version})"),
                summary.decisions.get(r.key),
            )
            for r in RULE_SETS
        ],
        lesion_side=summary.lesion_side,
        algorithm_parameters=[
            *parts.parameters_before,
            *hypoperfusion,
            *parts.parameters_after,
            *_not_assessable_lines(summary),
        ],
        region_methods=dict(parts.region_methods),
    )


def result_content(summary: AnalysisSummary, parts: ModalityParts) -> ResultContent:
    """The pages, SEG and SR content of one analysis.

    Parameters
    ----------
    summary : AnalysisSummary
        What the analysis found (the numbers every output states).
    parts : ModalityParts
        What the modality adds: core definition, masks, maps, anatomy, curves.

    Returns
    -------
    ResultContent
    """
    rules = {r.key: r for r in RULE_SETS}
    found = regions(summary, parts)
    page = SummaryContent(
        title=summary.title,
        header_lines=[],
        decisions=[
            Decision(rules[k].name, summary.decisions.get(k), rules[k].describe())
            for k in _PAGE_DECISIONS
        ],
        alerts=alerts(summary),
        volume_rows=volume_rows(summary, parts),
        quality_ok=summary.quality_ok,
        quality_lines=flag_lines(summary.flags),
        curves=parts.curves,
        curve_unit=parts.curve_unit,
        curve_title=parts.curve_title,
        notice=parts.notice,
        footer_lines=[parts.footer, DISCLAIMER],
    )
    return ResultContent(
        title=summary.title,
        geometry=parts.geometry,
        anatomy_zyx=parts.anatomy_zyx,
        anatomy_window=parts.anatomy_window,
        regions=found,
        outlined=["core", "tmax6"] if summary.perfusion_available else ["core"],
        maps=parts.maps,
        summary=page,
        findings=_findings(summary, parts, found),
        anatomy_head_zyx=parts.anatomy_head_zyx,
    )
