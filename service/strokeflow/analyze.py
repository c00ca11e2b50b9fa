"""Analyse DICOM files on disk: find the stroke series, run the engines, write outputs.

This is the one code path behind ``strokeflow analyze`` and, later, the service worker.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from strokeflow import __version__
from strokeflow.analysis.ctp import AnalysisError, analyse_ctp
from strokeflow.analysis.mri import MriAcquisition, MriSettings, analyse_mri
from strokeflow.analysis.settings import CtpSettings
from strokeflow.assemble.ctp import (
    AssemblyError,
    CtpAcquisition,
    ReadGrid,
    assemble_ctp,
    check_analysable,
    series_label,
)
from strokeflow.assemble.files import scan_paths
from strokeflow.assemble.mri import assemble_mri, classify_mr_series, record_mr_roles
from strokeflow.assemble.series import StudyInventory, build_inventory
from strokeflow.report.nifti import write_ctp_maps, write_mri_maps
from strokeflow.report.results_json import ctp_summary, mri_summary
from strokeflow.report.summary import AnalysisSummary
from strokeflow.report.warm import start_warming

if TYPE_CHECKING:
    # The DICOM result objects bring highdicom and matplotlib (~1 s of imports): they are
    # imported where the objects are built, so that --no-dicom never pays for them.
    from strokeflow.report.dicom_outputs import ResultObjects

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class NothingToAnalyseError(Exception):
    """No study holds an analysable series; the message lists what was found."""


@dataclass(frozen=True)
class AnalyzeOptions:
    """What to analyse with, and which outputs to write."""

    ctp: CtpSettings = field(default_factory=CtpSettings)
    mri: MriSettings = field(default_factory=MriSettings)
    write_maps: bool = True
    write_dicom: bool = True


@dataclass
class AnalyzeOutcome:
    """What ``analyze_paths`` produced."""

    results: dict[str, Any]
    results_path: Path
    written: list[Path] = field(default_factory=list)
    #: Every successful analysis, in the order of results.json (typed: read these, not
    #: the dicts of ``results``).
    summaries: list[AnalysisSummary] = field(default_factory=list)

    @property
    def n_analyses(self) -> int:
        """Number of successful analyses over all studies."""
        return len(self.summaries)


def _describe_inventory(studies: list[StudyInventory]) -> str:
    lines = []
    for study in studies:
        lines.append(f"study {study.study_uid}:")
        for s in study.series:
            lines.append(
                f"  series {s.series_number} {s.description!r} ({s.modality}, "
                f"{s.n_instances} images): {s.kind} - {s.reason}"
            )
    return "\n".join(lines) if lines else "no DICOM images"


def _series_entries(study: StudyInventory) -> list[dict[str, Any]]:
    return [
        {
            "series_instance_uid": s.series_uid,
            "series_number": s.series_number,
            "description": s.description,
            "modality": s.modality,
            "images": s.n_instances,
            "kind": s.kind,
            "reason": s.reason,
        }
        for s in study.series
    ]


#: What the output stages do, in the words of the error message.
_OUTPUT_TASKS = {
    "results": "summarising the results",
    "nifti": "writing the NIfTI maps",
    "dicom_objects": "building and writing the DICOM result objects",
}


@contextmanager
def _output_stage(name: str) -> Iterator[None]:
    """Run an output stage; any failure becomes an :class:`AnalysisError` naming it."""
    try:
        yield
    except Exception as exc:
        raise AnalysisError(f"{_OUTPUT_TASKS[name]} failed: {exc}", stage=name) from exc


def _failure(
    kind: str, series_uids: Sequence[str], exc: Exception, cleanup: Sequence[Path]
) -> dict[str, Any]:
    """The results.json entry for an acquisition whose analysis failed.

    Whatever the acquisition had written already is removed, so a half-finished result
    is never sent on.
    """
    if isinstance(exc, AnalysisError):
        stage, reason = exc.stage or "analysis", str(exc)
    elif isinstance(exc, AssemblyError):  # recognised, but not analysable (too small, ...)
        stage, reason = "assemble", str(exc)
    else:
        # A defect, not a property of the images: still an entry, never a traceback.
        stage, reason = "analysis", f"unexpected error ({type(exc).__name__}): {exc}"
    for folder in cleanup:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "kind": kind,
        "series_instance_uids": list(series_uids),
        "stage": stage,
        "reason": reason,
    }


def _record_failure(entry: dict[str, Any], failure: dict[str, Any], label: str) -> None:
    log.error(
        "study %s %s: stage %s failed: %s",
        entry["study_instance_uid"],
        label,
        failure["stage"],
        failure["reason"],
    )
    entry["errors"].append(f"{label}: {failure['stage']}: {failure['reason']}")
    entry["failures"].append(failure)


@dataclass(frozen=True)
class _Analysed:
    """One analysed acquisition, and how its modality makes each of its outputs."""

    #: Where its outputs go, under ``maps/`` and ``dicom/``.
    series_dir: Path
    summarise: Callable[[], AnalysisSummary]
    write_maps: Callable[[Path], list[Path]]
    build_objects: Callable[[AnalysisSummary], ResultObjects]


def _analysed_ctp(
    study: StudyInventory, acq: CtpAcquisition, ctp: CtpSettings, timings: dict[str, float]
) -> _Analysed:
    analysis = analyse_ctp(acq.perfusion, ctp, on_grid=acq.slabs)

    def build(summary: AnalysisSummary) -> ResultObjects:
        from strokeflow.report.content import result_content
        from strokeflow.report.ctp_content import ctp_parts
        from strokeflow.report.dicom_outputs import build_result_objects, load_source_references

        sources = load_source_references(acq.reference_paths or acq.source_paths)
        return build_result_objects(result_content(summary, ctp_parts(analysis, ctp)), sources)

    return _Analysed(
        Path(study.study_uid) / acq.series_uids[0],
        lambda: ctp_summary(
            analysis,
            ctp,
            acq.series_uids,
            {**timings, **analysis.timings_s},
            acq.warnings,
            study.study_uid,
        ),
        lambda folder: write_ctp_maps(analysis, folder),
        build,
    )


def _analysed_mri(
    study: StudyInventory, mri: MriAcquisition, settings: MriSettings, timings: dict[str, float]
) -> _Analysed:
    analysis = analyse_mri(mri, settings)

    def build(summary: AnalysisSummary) -> ResultObjects:
        from strokeflow.report.content import result_content
        from strokeflow.report.dicom_outputs import build_result_objects
        from strokeflow.report.mri_content import mri_parts, mri_source_references

        content = result_content(summary, mri_parts(analysis, mri, settings))
        return build_result_objects(content, mri_source_references(study, mri))

    return _Analysed(
        Path(study.study_uid) / "mri",
        lambda: mri_summary(analysis, mri, settings, timings, mri.warnings, study.study_uid),
        lambda folder: write_mri_maps(analysis, folder),
        build,
    )


def _write_outputs(
    analysed: _Analysed, out_dir: Path, options: AnalyzeOptions, written: list[Path]
) -> tuple[AnalysisSummary, dict[str, Any]]:
    """An analysed acquisition's summary and results.json entry, and the outputs that
    ``options`` ask for (NIfTI maps, DICOM result objects), each stage's time in the
    entry's ``timings_s``; what it wrote is added to ``written``."""
    with _output_stage("results"):
        summary = analysed.summarise()
        result = summary.to_json()
    timings, series_dir = result["timings_s"], analysed.series_dir
    if options.write_maps:
        t0 = time.perf_counter()
        with _output_stage("nifti"):
            written.extend(analysed.write_maps(out_dir / "maps" / series_dir))
        result["maps_dir"] = str(Path("maps") / series_dir)
        timings["nifti"] = round(time.perf_counter() - t0, 3)
    if options.write_dicom:
        t0 = time.perf_counter()
        build = analysed.build_objects
        _result_objects(result, lambda: build(summary), out_dir, series_dir, written)
        timings["dicom_objects"] = round(time.perf_counter() - t0, 3)
    return summary, result


def _result_objects(
    result: dict[str, Any],
    build: Callable[[], ResultObjects],
    out_dir: Path,
    series_dir: Path,
    written: list[Path],
) -> None:
    """Build and write one acquisition's DICOM result objects.

    An object that cannot be built is named in ``result["dicom_errors"]`` and never costs
    the analysis (results.json and the other objects stay); a write failure is an output
    stage failure like any other.
    """
    try:
        objects = build()
    except Exception as exc:
        log.error("result objects not built: %s", exc)
        result["dicom_errors"] = [f"no DICOM result objects: {exc}"]
        return
    from strokeflow.report.dicom_outputs import write_result_objects

    with _output_stage("dicom_objects"):
        written.extend(write_result_objects(objects, out_dir / "dicom" / series_dir))
    result["dicom_dir"] = str(Path("dicom") / series_dir)
    if objects.failures:
        result["dicom_errors"] = objects.failures


def _assemble(entry: dict[str, Any], label: str, assemble: Callable[[], _T], empty: _T) -> _T:
    """Run an assembly step; its failure is recorded in ``entry`` and ``empty`` returned."""
    try:
        return assemble()
    except AssemblyError as exc:
        reason = str(exc)
    except Exception as exc:
        reason = f"unexpected error ({type(exc).__name__}): {exc}"
    log.error("study %s: %s: %s", entry["study_instance_uid"], label, reason)
    entry["errors"].append(reason if label == "CT perfusion" else f"{label}: {reason}")
    entry["failures"].append(
        {"kind": label, "series_instance_uids": [], "stage": "assemble", "reason": reason}
    )
    return empty


def _read_grid(settings: CtpSettings) -> ReadGrid:
    """The analysis grid of ``settings``: perfusion pixels are read straight into it."""
    return ReadGrid(
        pixel_mm=settings.analysis_pixel_mm,
        slab_mm=settings.analysis_slab_mm,
        thin_below_mm=settings.thin_slice_below_mm,
    )


def _analyse_study(
    study: StudyInventory,
    out_dir: Path,
    options: AnalyzeOptions,
    read_s: float,
    written: list[Path],
    summaries: list[AnalysisSummary],
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "study_instance_uid": study.study_uid,
        "analyses": [],
        "errors": [],
        "failures": [],
    }
    t0 = time.perf_counter()
    acquisitions: list[CtpAcquisition] = _assemble(
        entry, "CT perfusion", lambda: assemble_ctp(study, grid=_read_grid(options.ctp)), []
    )
    timings = {"read_and_index": round(read_s, 3), "assemble": 0.0}
    timings["assemble"] = round(time.perf_counter() - t0, 3)
    if options.write_dicom and acquisitions:
        start_warming()  # the objects' imports and tables load while the analysis runs
    for acq in acquisitions:
        series_dir = Path(study.study_uid) / acq.series_uids[0]
        produced: list[Path] = []
        try:
            check_analysable(acq)
            analysed = _analysed_ctp(study, acq, options.ctp, timings)
            summary, result = _write_outputs(analysed, out_dir, options, produced)
        except Exception as exc:
            log.debug("study %s: CT perfusion analysis failed", study.study_uid, exc_info=True)
            failure = _failure(
                "ctp",
                acq.series_uids,
                exc,
                [out_dir / "maps" / series_dir, out_dir / "dicom" / series_dir],
            )
            _record_failure(entry, failure, series_label(acq.series_uids))
            continue
        written.extend(produced)
        entry["analyses"].append(result)
        summaries.append(summary)

    t0 = time.perf_counter()
    roles = classify_mr_series(study)
    record_mr_roles(study, roles)
    mri = _assemble(entry, "MRI", lambda: assemble_mri(study, roles), None)
    if mri is not None:
        if options.write_dicom:
            start_warming()
        mri_timings = {"read_and_index": round(read_s, 3)}
        mri_timings["assemble"] = round(time.perf_counter() - t0, 3)
        series_dir = Path(study.study_uid) / "mri"
        produced = []
        try:
            analysed = _analysed_mri(study, mri, options.mri, mri_timings)
            summary, result = _write_outputs(analysed, out_dir, options, produced)
        except Exception as exc:
            log.debug("study %s: MRI analysis failed", study.study_uid, exc_info=True)
            uids = [*mri.dwi_series_uids, *mri.pwi_series_uids]
            if mri.adc_series_uid is not None:
                uids.append(mri.adc_series_uid)
            failure = _failure(
                "mri", uids, exc, [out_dir / "maps" / series_dir, out_dir / "dicom" / series_dir]
            )
            _record_failure(entry, failure, "MRI")
        else:
            written.extend(produced)
            entry["analyses"].append(result)
            summaries.append(summary)
    # After the MR recognition, which gives MR series their own kind and reason.
    entry["series"] = _series_entries(study)
    for done in summaries:
        if done.study_instance_uid == study.study_uid:
            log.info(
                "study %s: %s core %s mL, Tmax>6 %s mL, quality %s",
                study.study_uid,
                done.kind,
                done.core_ml,
                done.tmax6_ml,
                "ok" if done.quality_ok else "NOT OK",
            )
    return entry


def analyze_paths(
    paths: list[Path], out_dir: Path, options: AnalyzeOptions | None = None
) -> AnalyzeOutcome:
    """Analyse every CT perfusion and MR stroke acquisition found under ``paths``.

    Parameters
    ----------
    paths : list of Path
        DICOM files or folders, in any order.
    out_dir : Path
        Where ``results.json``, ``maps/`` and ``dicom/`` are written.
    options : AnalyzeOptions, optional
        Analysis parameters and outputs.

    Returns
    -------
    AnalyzeOutcome

    Raises
    ------
    NothingToAnalyseError
        When no study yields an analysis; ``results.json`` is still written.
    """
    options = options or AnalyzeOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    headers, problems = scan_paths(paths)
    for p in problems:
        log.warning("skipped %s: %s", p.path, p.reason)
    studies = build_inventory(headers)
    read_s = time.perf_counter() - t0
    written: list[Path] = []
    summaries: list[AnalysisSummary] = []
    entries = [
        _analyse_study(study, out_dir, options, read_s, written, summaries) for study in studies
    ]
    results = {
        "software": {"name": "StrokeFlow", "version": __version__},
        "studies": entries,
        "problems": [{"path": p.path, "reason": p.reason} for p in problems],
        "total_time_s": round(time.perf_counter() - t0, 3),
    }
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2))
    outcome = AnalyzeOutcome(results, results_path, written, summaries)
    if outcome.n_analyses == 0:
        errors = [e for s in entries for e in s["errors"]]
        detail = _describe_inventory(studies)
        if errors:
            detail += "\nerrors:\n  " + "\n  ".join(errors)
        raise NothingToAnalyseError(f"no analysable stroke series found.\n{detail}")
    return outcome
