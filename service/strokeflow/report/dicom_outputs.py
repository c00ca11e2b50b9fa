"""All DICOM result objects of one analysis: SC pages, SEG and SR, written to disk.

The objects are built from a modality-neutral :class:`ResultContent`; a CT perfusion
analysis is turned into one by :func:`ctp_result_content`, an MR stroke analysis by
:func:`strokeflow.report.mri_content.mri_result_content` (ADC core, DWI anatomy, MR
procedure and method codes); the pages, SEG, SR and file writing are the same.

Series numbers (relative to ``series_number_base``, 9000 by default): +1 summary, +2 lesion
outlines, +3 maps, +4 segmentation, +5 structured report.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from strokeflow import __version__
from strokeflow.analysis.ctp import CtpAnalysis
from strokeflow.analysis.decisions import HIR_POOR_COLLATERALS, PUBLISHED_TMAX_S, RULE_SETS
from strokeflow.analysis.inputs import VascularCurve
from strokeflow.analysis.quality import QualityFlag
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.volume import Geometry
from strokeflow.report.panels import render_lesion_pages, render_map_pages
from strokeflow.report.render import (
    CORE_RGB,
    TMAX6_RGB,
    TMAX10_RGB,
    Curve,
    Decision,
    MapSpec,
    Outline,
    SummaryContent,
    render_summary_page,
)
from strokeflow.report.secondary_capture import build_secondary_captures
from strokeflow.report.segmentation import (
    Region,
    build_segmentation,
    shared_orientation,
    sort_along_normal,
)
from strokeflow.report.source_references import (  # re-exported for callers
    load_source_references as load_source_references,
)
from strokeflow.report.structured_report import (
    HYPOPERFUSION_INTENSITY_RATIO,
    MISMATCH_RATIO,
    RATIO_UNIT,
    ReportFindings,
    SrEncoding,
    build_measurement_report,
    build_structured_report,
    coding_scheme_identification,
    private_code,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CT_PERFUSION_HEAD = Code("39142-5", "LN", "CT perfusion head with contrast IV")
CT_PERFUSION_METHOD = Code(
    "126301", "DCM", "Perfusion analysis by IV Iodinated Contrast CT technique"
)
INFARCT = Code("55641003", "SCT", "Infarct")
MISMATCH_RGB = (0, 200, 255)


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


@dataclass
class ResultObjects:
    """The DICOM objects of one analysis.

    An object that could not be built is absent (an empty list, or None) and
    ``failures`` names it with the reason; the others are complete.
    """

    summary: list[Dataset]
    lesions: list[Dataset]
    maps: list[Dataset]
    seg: Dataset | None
    sr: Dataset | None
    failures: list[str] = dataclasses.field(default_factory=list)

    def all(self) -> list[Dataset]:
        """Every object built, in the order they are written."""
        tail = [ds for ds in (self.seg, self.sr) if ds is not None]
        return [*self.summary, *self.lesions, *self.maps, *tail]


#: Last line of every summary page.
DISCLAIMER = (
    f"StrokeFlow {__version__}: research and decision-support software, NOT FOR PRIMARY "
    "DIAGNOSIS. Check every result against the source images."
)


def flag_lines(flags: Sequence[QualityFlag]) -> list[str]:
    """One summary-page line per quality flag, severity first."""
    return [f"{f.severity.upper()}: {f.message}" for f in flags]


def _fmt_ml(value: float) -> str:
    return f"{value:.1f} mL"


def location_text(curve: VascularCurve, geometry: Geometry) -> str:
    """Where a vascular curve was measured: slice, side and LPS position, in words."""
    x, y, z = curve.location_lps_mm(geometry)
    side = "midline" if abs(x) < 5 else ("patient left" if x > 0 else "patient right")
    slice_number = round(float(curve.voxels_zyx[:, 0].mean())) + 1
    return f"slice {slice_number}, {side}: x {x:.0f}, y {y:.0f}, z {z:.0f} mm (LPS)"


def ctp_result_content(analysis: CtpAnalysis, settings: CtpSettings) -> ResultContent:
    """Describe the result objects of a CT perfusion analysis.

    Parameters
    ----------
    analysis : CtpAnalysis
        Maps, masks, metrics and decisions on the analysis grid.
    settings : CtpSettings
        The thresholds the analysis used.

    Returns
    -------
    ResultContent
    """
    m = analysis.metrics
    t6, t10 = PUBLISHED_TMAX_S
    core_pct = f"{100 * settings.core_rcbf_threshold:g} %"
    core_def = f"rCBF < {settings.core_rcbf_threshold:g}"
    if settings.core_requires_tmax_s > 0:
        core_def += f" and Tmax > {settings.core_requires_tmax_s:g} s"
    cluster = f"; clusters under {settings.min_cluster_ml:g} mL removed"
    mismatch_mask = analysis.tmax6 & ~analysis.core
    regions = [
        Region(
            "core",
            f"Ischemic core (rCBF < {core_pct})",
            analysis.core,
            m.core_ml,
            INFARCT,
            CORE_RGB,
            core_def + cluster,
        ),
        Region(
            "tmax6",
            f"Tmax > {t6:g} s",
            analysis.tmax6,
            m.tmax6_ml,
            private_code("TMAX_ABOVE_6S", f"Hypoperfused tissue, Tmax > {t6:g} s"),
            TMAX6_RGB,
            f"Tmax > {t6:g} s, including the core{cluster}",
        ),
        Region(
            "tmax10",
            f"Tmax > {t10:g} s",
            analysis.tmax10,
            m.tmax10_ml,
            private_code("TMAX_ABOVE_10S", f"Severely hypoperfused tissue, Tmax > {t10:g} s"),
            TMAX10_RGB,
            f"Tmax > {t10:g} s{cluster}",
        ),
        Region(
            "mismatch",
            "Mismatch (Tmax > 6 s minus core)",
            mismatch_mask,
            m.mismatch_ml,
            private_code("MISMATCH_REGION", "Perfusion-core mismatch region"),
            MISMATCH_RGB,
            f"Tmax > {t6:g} s region outside the core",
        ),
    ]
    na = analysis.not_assessable
    tmax10_na = na.get("tmax10_ml")
    undecided = [f"Tmax > {t10:g} s", "hypoperfusion intensity ratio"] + [
        r.name for r in RULE_SETS if r.key in na
    ]
    if tmax10_na is not None:
        # Not asserted: no Tmax > 10 s segment or volume in the SEG and the SR.
        regions = [r for r in regions if r.key != "tmax10"]
    ratio_text = "no core (infinite)" if m.mismatch_ratio is None else f"{m.mismatch_ratio:.1f}"
    hir = None if "hypoperfusion_intensity_ratio" in na else m.hypoperfusion_intensity_ratio
    hir_text = "-" if hir is None else f"{hir:.2f}"
    if "hypoperfusion_intensity_ratio" in na:
        hir_text = "not assessable"
    volume_rows = [
        (f"Core (rCBF < {core_pct})", _fmt_ml(m.core_ml)),
        (f"Tmax > {t6:g} s", _fmt_ml(m.tmax6_ml)),
        (f"Tmax > {t10:g} s", "not assessable" if tmax10_na else _fmt_ml(m.tmax10_ml)),
        ("Mismatch volume", _fmt_ml(m.mismatch_ml)),
        ("Mismatch ratio", ratio_text),
        ("Hypoperfusion intensity ratio", hir_text),
        ("Lesion side", (analysis.lesion_side or "none detected").upper()),
    ]
    slabs = analysis.slabs
    slab_text = f"{slabs.slab_mm:g} mm ({slabs.slices_per_slab} x {slabs.input_slice_mm:g} mm)"
    if slabs.combined:
        volume_rows.append(("Analysis slabs", slab_text))
    rules = {r.key: r for r in RULE_SETS}
    order = ["defuse3", "extend", "defuse2"]
    decisions = [
        Decision(rules[k].name, analysis.decisions[k], rules[k].describe())
        for k in order
        if k in analysis.decisions
    ]
    alerts = []
    if analysis.decisions.get("malignant_profile"):
        alerts.append(f"WARNING: {rules['malignant_profile'].name}")
    if tmax10_na is not None:
        # Alerts fit the decision column (about 48 characters at their size).
        alerts.append(f"Tmax>{t10:g} s, HIR: {tmax10_na}")
        if "malignant_profile" in na:
            alerts.append(f"{rules['malignant_profile'].name}: not assessable")
    if hir is not None and hir > HIR_POOR_COLLATERALS:
        alerts.append(f"HIR {hir:.2f} > {HIR_POOR_COLLATERALS:g}: poor collaterals likely")
    times = analysis.grid_s - analysis.grid_s[0]
    curves = [
        Curve(
            "AIF",
            times,
            analysis.aif.curve,
            location_text(analysis.aif, analysis.geometry),
            (255, 70, 70),
        )
    ]
    if analysis.vof is not None:
        curves.append(
            Curve(
                "VOF",
                times,
                analysis.vof.curve,
                location_text(analysis.vof, analysis.geometry),
                (80, 160, 255),
            )
        )
    method = (
        f"oSVD deconvolution (oscillation index {settings.oscillation_index:g}), automatically "
        "detected AIF and VOF"
    )
    summary = SummaryContent(
        title="CT perfusion",
        header_lines=[],
        decisions=decisions,
        alerts=alerts,
        volume_rows=volume_rows,
        quality_ok=analysis.quality_ok,
        quality_lines=flag_lines(analysis.flags),
        curves=curves,
        curve_unit="enhancement (HU)",
        footer_lines=[
            f"Method: {method}. Core: {core_def}. rCBF reference: "
            f"{analysis.reference_description}.",
            DISCLAIMER,
        ],
    )
    maps = [
        MapSpec("CBF", analysis.maps.cbf_ml_100g_min, "mL/100 g/min", 0.0, 60.0),
        MapSpec("CBV", analysis.maps.cbv_ml_100g, "mL/100 g", 0.0, 6.0),
        MapSpec("MTT", analysis.maps.mtt_s, "s", 0.0, 15.0),
        MapSpec("Tmax", analysis.maps.tmax_s, "s", 0.0, 12.0),
    ]
    region_measurements: dict[str, list[tuple[Code, float, Code]]] = {}
    if m.mismatch_ratio is not None:
        region_measurements["mismatch"] = [(MISMATCH_RATIO, m.mismatch_ratio, RATIO_UNIT)]
    if hir is not None:
        region_measurements["tmax10"] = [(HYPOPERFUSION_INTENSITY_RATIO, hir, RATIO_UNIT)]
    findings = ReportFindings(
        procedure=CT_PERFUSION_HEAD,
        method=CT_PERFUSION_METHOD,
        regions=regions,
        region_measurements=region_measurements,
        decisions=[
            (
                private_code(r.key.upper().replace("_PROFILE", ""), f"{r.name} ({r.version})"),
                analysis.decisions[r.key],
            )
            for r in RULE_SETS
            if r.key in analysis.decisions
        ],
        lesion_side=analysis.lesion_side,
        algorithm_parameters=[
            f"deconvolution: {method}",
            f"core: {core_def}",
            f"hypoperfusion: Tmax > {t6:g} s and Tmax > {t10:g} s",
            f"minimum cluster volume: {settings.min_cluster_ml:g} mL",
            f"rCBF reference: {analysis.reference_description}",
            *([f"analysis slabs: {slab_text}"] if slabs.combined else []),
            *([f"{', '.join(undecided)}: {tmax10_na}"] if tmax10_na is not None else []),
        ],
    )
    return ResultContent(
        title="CT perfusion",
        geometry=analysis.geometry,
        anatomy_zyx=analysis.baseline_hu,
        anatomy_window=(0.0, 80.0),
        regions=regions,
        outlined=["core", "tmax6"],
        maps=maps,
        summary=summary,
        findings=findings,
    )


def _header_lines(ds: Dataset) -> list[str]:
    """Patient and study lines of the summary page, from the source image."""
    name = str(ds.get("PatientName", "")).replace("^", " ").strip() or "(no name)"
    sex = str(ds.get("PatientSex", "") or "")
    birth = str(ds.get("PatientBirthDate", "") or "")
    date = str(ds.get("StudyDate", "") or "")
    time = str(ds.get("StudyTime", "") or "")[:6]
    when = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else date
    if len(time) >= 4:
        when += f" {time[:2]}:{time[2:4]}"
    patient = f"Patient: {name}   ID: {ds.get('PatientID', '')}"
    if birth:
        patient += f"   Born: {birth}"
    if sex:
        patient += f"   Sex: {sex}"
    study = f"Study: {when}   Accession: {ds.get('AccessionNumber', '') or '-'}"
    study += f"   Series: {ds.get('SeriesNumber', '')} {ds.get('SeriesDescription', '')}"
    return [patient, study]


#: Type 2 patient/study attributes every result object must have (empty when unknown);
#: highdicom copies them from the source and fails when a source image lacks them.
_TYPE2_REFERENCE_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _complete_reference(ds: Dataset) -> Dataset:
    """A copy of a source header with the missing Type 2 attributes present but empty."""
    missing = [k for k in _TYPE2_REFERENCE_ATTRIBUTES if k not in ds]
    if not missing:
        return ds
    out = copy.deepcopy(ds)
    for keyword in missing:
        setattr(out, keyword, "")
    return out


def build_result_objects(
    content: ResultContent,
    source_images: Sequence[Dataset],
    *,
    series_number_base: int = 9000,
    sr_encoding: SrEncoding = "comprehensive3d",
    sc_transfer_syntax: str = ExplicitVRLittleEndian,
) -> ResultObjects:
    """Render the pages and build the SC, SEG and SR objects of one analysis.

    Parameters
    ----------
    content : ResultContent
        From :func:`ctp_result_content` (or an MRI equivalent).
    source_images : sequence of pydicom.Dataset
        One header per slice position of the analysed series (see
        :func:`load_source_references`); patient/study attributes come from them.
    series_number_base : int
        New series are numbered base + 1 ... base + 5.
    sr_encoding : {"comprehensive3d", "comprehensive", "enhanced"}
        SR class.
    sc_transfer_syntax : str
        Transfer syntax UID of the Secondary Captures (see
        :func:`~strokeflow.report.secondary_capture.build_secondary_captures`).

    Returns
    -------
    ResultObjects
    """
    ordered = sort_along_normal(source_images)
    # Really different planes: the pages can still be made, and the SEG says why it is not.
    with contextlib.suppress(ValueError):
        ordered = shared_orientation(ordered)
    ordered = [_complete_reference(ds) for ds in ordered]
    version = __version__
    title = content.title
    failures: list[str] = []

    def attempt(name: str, build: Callable[[], _T]) -> _T | None:
        # One object failing (a source the toolkit refuses, a page that cannot be drawn)
        # must cost only that object: the others and results.json are still written.
        try:
            return build()
        except Exception as exc:
            log.warning("result object %s not built: %s", name, exc)
            failures.append(f"{name} not written: {exc}")
            return None

    def sc(pages: list[np.ndarray], offset: int, what: str) -> list[Dataset]:
        return build_secondary_captures(
            pages,
            ordered,
            series_description=f"StrokeFlow {title} {what}"[:64],
            series_number=series_number_base + offset,
            software_version=version,
            derivation=f"{title} {what} rendered by StrokeFlow {version}",
            transfer_syntax_uid=sc_transfer_syntax,
        )

    def summary() -> list[Dataset]:
        page = dataclasses.replace(content.summary, header_lines=_header_lines(ordered[0]))
        return sc([render_summary_page(page)], 1, "summary")

    def lesions() -> list[Dataset]:
        by_key = {r.key: r for r in content.regions}
        outlines = [
            Outline(by_key[k].label, by_key[k].mask_zyx, by_key[k].colour_rgb)
            for k in content.outlined
        ]
        pages = render_lesion_pages(
            content.anatomy_zyx,
            outlines,
            content.geometry,
            title=f"{title}: lesions",
            window=content.anatomy_window,
            head_zyx=content.anatomy_head_zyx,
        )
        return sc(pages, 2, "lesions")

    def maps() -> list[Dataset]:
        return sc(render_map_pages(content.maps, content.geometry, title=title), 3, "maps")

    def segmentation() -> Dataset:
        seg = build_segmentation(
            content.regions,
            ordered,
            content.geometry,
            series_description=f"StrokeFlow {title} lesion segmentation"[:64],
            series_number=series_number_base + 4,
            software_version=version,
        )
        seg.CodingSchemeIdentificationSequence = coding_scheme_identification()
        return seg

    summary_objects = attempt("summary page (Secondary Capture)", summary) or []
    lesion_objects = attempt("lesion pages (Secondary Capture)", lesions) or []
    map_objects = attempt("map pages (Secondary Capture)", maps) or []
    seg = attempt("lesion segmentation (SEG)", segmentation)
    sr = None
    if seg is None:
        failures.append("measurement report (SR) not written: it references the SEG")
    else:
        seg_done = seg

        def structured_report() -> Dataset:
            report = build_measurement_report(content.findings, seg_done, software_version=version)
            return build_structured_report(
                report,
                [*ordered, seg_done],
                procedure=content.findings.procedure,
                series_description=f"StrokeFlow {title} measurements"[:64],
                series_number=series_number_base + 5,
                encoding=sr_encoding,
            )

        sr = attempt("measurement report (SR)", structured_report)
    objects = ResultObjects(
        summary=summary_objects,
        lesions=lesion_objects,
        maps=map_objects,
        seg=seg,
        sr=sr,
        failures=failures,
    )
    # Study-level attributes highdicom does not copy: every object of the study must
    # agree with the source (dcentvfy compares them).
    for keyword in ("StudyDescription", "StudyID"):
        if keyword in ordered[0]:
            for ds in objects.all():
                setattr(ds, keyword, ordered[0].get(keyword))
    return objects


def build_ctp_result_objects(
    analysis: CtpAnalysis, source_images: Sequence[Dataset], settings: CtpSettings
) -> ResultObjects:
    """:func:`build_result_objects` of :func:`ctp_result_content` (the CTP entry point)."""
    return build_result_objects(ctp_result_content(analysis, settings), source_images)


def write_result_objects(objects: ResultObjects, out_dir: Path) -> list[Path]:
    """Write every object as a DICOM Part 10 file into ``out_dir``.

    Parameters
    ----------
    objects : ResultObjects
        From :func:`build_result_objects`.
    out_dir : Path
        Created if needed; files are named by kind, series number and instance number.

    Returns
    -------
    list of Path
        Written files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    named = [
        *((f"SC_summary_{k:03d}", ds) for k, ds in enumerate(objects.summary, 1)),
        *((f"SC_lesions_{k:03d}", ds) for k, ds in enumerate(objects.lesions, 1)),
        *((f"SC_maps_{k:03d}", ds) for k, ds in enumerate(objects.maps, 1)),
        ("SEG_lesions", objects.seg),
        ("SR_measurements", objects.sr),
    ]
    paths = []
    for name, ds in named:
        if ds is None:
            continue
        path = out_dir / f"{ds.SeriesNumber}_{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
