"""All DICOM result objects of one analysis: SC pages, SEG and SR, written to disk.

The objects are built from a modality-neutral
:class:`~strokeflow.report.content.ResultContent`
(:func:`strokeflow.report.content.result_content` of an analysis summary and its
modality's parts); the pages, SEG, SR and file writing are the same for every modality.

Series numbers (relative to ``series_number_base``, 9000 by default): +1 summary, +2 lesion
outlines, +3 maps, +4 segmentation, +5 structured report.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from strokeflow import __version__
from strokeflow.report.content import ResultContent
from strokeflow.report.file_writer import write_files
from strokeflow.report.page_job import PageKind, PageSet, start_rendering
from strokeflow.report.render import Outline, SummaryContent
from strokeflow.report.secondary_capture import acquisition_equipment, build_secondary_captures
from strokeflow.report.segmentation import (
    build_segmentation,
    shared_orientation,
    sort_along_normal,
)
from strokeflow.report.source_references import (  # re-exported for callers
    load_source_references as load_source_references,
)
from strokeflow.report.structured_report import (
    SrEncoding,
    build_measurement_report,
    build_structured_report,
    coding_scheme_identification,
)
from strokeflow.report.warm import wait_until_warm

__all__ = [
    "ResultContent",
    "ResultObjects",
    "build_result_objects",
    "load_source_references",
    "write_result_objects",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


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


def _page_set(content: ResultContent, reference: Dataset) -> PageSet:
    """What the pages show (a summary that cannot be headed is its page's failure)."""
    summary: SummaryContent | str
    try:
        summary = dataclasses.replace(content.summary, header_lines=_header_lines(reference))
    except Exception as exc:
        summary = str(exc) or type(exc).__name__
    return PageSet(
        title=content.title,
        summary=summary,
        anatomy_zyx=content.anatomy_zyx,
        regions={r.key: Outline(r.label, r.mask_zyx, r.colour_rgb) for r in content.regions},
        outlined=list(content.outlined),
        geometry=content.geometry,
        anatomy_window=content.anatomy_window,
        anatomy_head_zyx=content.anatomy_head_zyx,
        maps=list(content.maps),
    )


#: Each page series: its offset from the series number base and its name in failures.
_PAGE_SERIES: dict[PageKind, tuple[int, str]] = {
    "summary": (1, "summary page (Secondary Capture)"),
    "lesions": (2, "lesion pages (Secondary Capture)"),
    "maps": (3, "map pages (Secondary Capture)"),
}


def build_result_objects(
    content: ResultContent,
    source_images: Sequence[Dataset],
    *,
    series_number_base: int = 9000,
    sr_encoding: SrEncoding = "comprehensive3d",
    sc_transfer_syntax: str = ExplicitVRLittleEndian,
    parallel: bool = True,
) -> ResultObjects:
    """Render the pages and build the SC, SEG and SR objects of one analysis.

    Parameters
    ----------
    content : ResultContent
        From :func:`~strokeflow.report.content.result_content`.
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
    parallel : bool
        Draw the pages in a helper process while the SEG and SR are built here
        (:func:`~strokeflow.report.page_job.start_rendering`); False draws them in this
        process. The objects are the same either way.

    Returns
    -------
    ResultObjects
    """
    # The warming thread must be done before the page helper is forked from this process.
    parallel = wait_until_warm() and parallel
    ordered = sort_along_normal(source_images)
    # Really different planes: the pages can still be made, and the SEG says why it is not.
    with contextlib.suppress(ValueError):
        ordered = shared_orientation(ordered)
    ordered = [_complete_reference(ds) for ds in ordered]
    version = __version__
    title = content.title
    # Started first: the pages are drawn while the SEG and SR are built.
    wait_for_pages = start_rendering(_page_set(content, ordered[0]), parallel=parallel)

    def attempt(name: str, build: Callable[[], _T], failures: list[str]) -> _T | None:
        # One object failing (a source the toolkit refuses, a page that cannot be drawn)
        # must cost only that object: the others and results.json are still written.
        try:
            return build()
        except Exception as exc:
            log.warning("result object %s not built: %s", name, exc)
            failures.append(f"{name} not written: {exc}")
            return None

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

    def structured_report(seg: Dataset) -> Dataset:
        report = build_measurement_report(content.findings, seg, software_version=version)
        return build_structured_report(
            report,
            [*ordered, seg],
            procedure=content.findings.procedure,
            series_description=f"StrokeFlow {title} measurements"[:64],
            series_number=series_number_base + 5,
            encoding=sr_encoding,
        )

    seg_failures: list[str] = []
    try:
        seg = attempt("lesion segmentation (SEG)", segmentation, seg_failures)
        sr = None
        if seg is None:
            seg_failures.append("measurement report (SR) not written: it references the SEG")
        else:
            build_sr = functools.partial(structured_report, seg)
            sr = attempt("measurement report (SR)", build_sr, seg_failures)
        equipment = acquisition_equipment(ordered[0])  # the same for the three page series
    finally:
        # Always collected: the helper is waited for even when this process failed.
        rendered = wait_for_pages()

    def secondary_captures(kind: PageKind) -> list[Dataset]:
        offset, what = _PAGE_SERIES[kind][0], kind
        pages = rendered[kind]
        if isinstance(pages, str):
            raise PageError(pages)
        return build_secondary_captures(
            pages,
            ordered,
            series_description=f"StrokeFlow {title} {what}"[:64],
            series_number=series_number_base + offset,
            software_version=version,
            derivation=f"{title} {what} rendered by StrokeFlow {version}",
            transfer_syntax_uid=sc_transfer_syntax,
            equipment=equipment,
        )

    page_failures: list[str] = []
    summary_objects, lesion_objects, map_objects = (
        attempt(_PAGE_SERIES[kind][1], functools.partial(secondary_captures, kind), page_failures)
        or []
        for kind in _PAGE_SERIES
    )
    objects = ResultObjects(
        summary=summary_objects,
        lesions=lesion_objects,
        maps=map_objects,
        seg=seg,
        sr=sr,
        failures=[*page_failures, *seg_failures],
    )
    # Study-level attributes highdicom does not copy: every object of the study must
    # agree with the source (dcentvfy compares them).
    for keyword in ("StudyDescription", "StudyID"):
        if keyword in ordered[0]:
            for ds in objects.all():
                setattr(ds, keyword, ordered[0].get(keyword))
    return objects


class PageError(Exception):
    """A page series that could not be drawn (the message says why)."""


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
    files = [
        (out_dir / f"{ds.SeriesNumber}_{name}.dcm", ds) for name, ds in named if ds is not None
    ]
    # The SEG, the costliest to encode, is written by a helper while the others are here.
    seg_index = next((k for k, (_, ds) in enumerate(files) if ds is objects.seg), None)
    write_files(files, offload=seg_index)
    return [path for path, _ in files]
