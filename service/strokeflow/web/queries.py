"""Read jobs, studies and their results for the dashboard and the API."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strokeflow.store.models import (
    Dispatch,
    DispatchState,
    Job,
    JobState,
    Series,
    Study,
    StudyState,
)
from strokeflow.web.schemas import (
    Curve,
    DestinationSummary,
    DispatchOutcome,
    JobDetail,
    JobSummary,
    QualityFlag,
    SeriesInfo,
    SeriesUse,
    Stage,
    StudyDetail,
)

LOG = logging.getLogger(__name__)

#: Timeline stages: (label, job attribute), in the order they happen.
STAGES = (
    ("first_instance", "first_instance_at"),
    ("last_instance", "last_instance_at"),
    ("complete", "completed_at"),
    ("queued", "queued_at"),
    ("started", "started_at"),
    ("finished", "finished_at"),
    ("dispatched", "dispatched_at"),
)

#: Name pattern of the summary page Secondary Capture objects among the results.
SUMMARY_GLOB = "9001_SC_summary_*.dcm"


def find_jobs(
    session: Session,
    *,
    state: JobState | None = None,
    since: date | None = None,
    until: date | None = None,
    accession_number: str | None = None,
    patient_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Sequence[tuple[Job, Study]]:
    """Jobs newest first, filtered.

    Parameters
    ----------
    state : JobState, optional
    since, until : date, optional
        Inclusive UTC days of the job's queueing time.
    accession_number, patient_id : str, optional
        Exact matches on the study.
    limit, offset : int
        Paging.

    Returns
    -------
    list of (Job, Study)
    """
    stmt = select(Job, Study).join(Study, Job.study_id == Study.id)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    if since is not None:
        stmt = stmt.where(Job.queued_at >= datetime.combine(since, time(), tzinfo=UTC))
    if until is not None:
        end = datetime.combine(until, time(), tzinfo=UTC) + timedelta(days=1)
        stmt = stmt.where(Job.queued_at < end)
    if accession_number:
        stmt = stmt.where(Study.accession_number == accession_number)
    if patient_id:
        stmt = stmt.where(Study.patient_id == patient_id)
    stmt = stmt.order_by(Job.id.desc()).limit(limit).offset(offset)
    return [(job, study) for job, study in session.execute(stmt).all()]


def results_dir(job: Job, data_dir: Path) -> Path | None:
    """The job's results folder, ``None`` before it has one."""
    return data_dir / job.results_path if job.results_path else None


def load_results(job: Job, data_dir: Path) -> dict[str, Any] | None:
    """The job's ``results.json``, ``None`` when missing or unreadable (logged)."""
    folder = results_dir(job, data_dir)
    if folder is None:
        return None
    path = folder / "results.json"
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        LOG.warning("job %d: cannot read %s: %s", job.id, path, exc)
        return None
    return loaded


def main_analysis(results: dict[str, Any] | None) -> dict[str, Any] | None:
    """The analysis the job row summarises: CT perfusion first, then MRI."""
    if not results:
        return None
    analyses = [a for s in results.get("studies", []) for a in s.get("analyses", [])]
    analyses.sort(key=lambda a: 0 if a.get("kind") == "ctp" else 1)
    return analyses[0] if analyses else None


def timeline(job: Job) -> list[Stage]:
    """The job's stages with the seconds elapsed since the previous known one.

    A stage time earlier than the one before it belongs to an earlier attempt (a job
    queued again keeps its old start until the worker starts it anew): it is shown as
    not reached yet, never as a negative step.
    """
    stages = []
    previous: datetime | None = None
    for name, attr in STAGES:
        at = getattr(job, attr)
        if at is not None and previous is not None and at < previous:
            at = None
        since = round((at - previous).total_seconds(), 1) if at and previous else None
        stages.append(Stage(name=name, at=at, since_previous_s=since))
        previous = at or previous
    return stages


def current_attempt(job: Job) -> int:
    """The attempt a job is on: the next one while it waits in the queue, else the last."""
    if job.state is JobState.QUEUED:
        return job.attempts + 1
    return max(job.attempts, 1)


#: What each analysis kind thresholds its core on (results.json "kind").
CORE_MEASURES = {"ctp": "rCBF", "mri": "ADC"}


def _flags(analysis: dict[str, Any] | None) -> tuple[bool | None, list[QualityFlag]]:
    if analysis is None:
        return None, []
    quality = analysis.get("quality") or {}
    flags = [
        QualityFlag(
            code=str(f.get("code", "")),
            severity=str(f.get("severity", "")),
            message=str(f.get("message", "")),
        )
        for f in quality.get("flags", [])
    ]
    ok = quality.get("ok")
    return (bool(ok) if ok is not None else None), flags


def job_summary(job: Job, study: Study, data_dir: Path) -> JobSummary:
    """The listed view of a job (reads its results.json for the quality flags)."""
    ok, flags = _flags(main_analysis(load_results(job, data_dir)))
    return _summary(job, study, ok, flags)


def _summary(job: Job, study: Study, ok: bool | None, flags: list[QualityFlag]) -> JobSummary:
    return JobSummary(
        id=job.id,
        study_uid=study.study_uid,
        version=job.version,
        state=job.state.value,
        attempts=job.attempts,
        current_attempt=current_attempt(job),
        instances=job.instance_count,
        patient_id=study.patient_id,
        accession_number=study.accession_number,
        study_date=study.study_date,
        timeline=timeline(job),
        core_ml=job.core_ml,
        tmax6_ml=job.tmax6_ml,
        tmax10_ml=job.tmax10_ml,
        mismatch_ml=job.mismatch_ml,
        mismatch_ratio=job.mismatch_ratio,
        decisions=job.decisions,
        quality_ok=ok,
        quality_flags=flags,
        error=job.error,
        url=f"/jobs/{job.id}",
    )


def summary_pages(job: Job, data_dir: Path) -> list[Path]:
    """The job's summary page SC files, in page order."""
    folder = results_dir(job, data_dir)
    if folder is None or not folder.is_dir():
        return []
    return sorted(folder.rglob(SUMMARY_GLOB), key=lambda p: (p.name, str(p)))


def _site_tmax_volumes(analysis: dict[str, Any] | None) -> dict[str, float | None]:
    """The Tmax volumes of a site's own thresholds (beside the published 6 s and 10 s)."""
    volumes = (analysis or {}).get("tmax_volumes_ml") or {}
    return {t: v for t, v in volumes.items() if t not in ("6", "10")}


def _curve(data: dict[str, Any] | None) -> Curve | None:
    if not data or "times_s" not in data or "curve_hu" not in data:
        return None
    return Curve(
        times_s=data["times_s"],
        curve_hu=data["curve_hu"],
        peak_hu=data.get("peak_hu"),
        time_to_peak_s=data.get("time_to_peak_s"),
    )


def _series_uses(session: Session, study: Study, results: dict[str, Any] | None) -> list[SeriesUse]:
    used_uids = {
        uid
        for s in (results or {}).get("studies", [])
        for a in s.get("analyses", [])
        for uid in a.get("series_instance_uids", [])
    }
    found = {
        e["series_instance_uid"]: e
        for s in (results or {}).get("studies", [])
        for e in s.get("series", [])
    }
    uses = []
    rows = session.scalars(
        select(Series).where(Series.study_id == study.id).order_by(Series.series_number)
    ).all()
    for row in rows:
        entry = found.get(row.series_uid, {})
        reason = entry.get("reason")
        if results is not None and not entry:
            reason = "not found by the analysis (unreadable files?)"
        uses.append(
            SeriesUse(
                series_uid=row.series_uid,
                series_number=row.series_number,
                description=row.series_description,
                modality=row.modality,
                images=entry.get("images", row.instance_count),
                kind=entry.get("kind"),
                used=row.series_uid in used_uids,
                reason=reason,
            )
        )
    return uses


def job_detail(session: Session, job: Job, data_dir: Path) -> JobDetail:
    """Everything about one job: results, series used or ignored, dispatch outcomes."""
    study = session.get(Study, job.study_id)
    assert study is not None  # foreign key
    results = load_results(job, data_dir)
    analysis = main_analysis(results)
    ok, flags = _flags(analysis)
    dispatches = session.scalars(
        select(Dispatch).where(Dispatch.job_id == job.id).order_by(Dispatch.id)
    ).all()
    per_dest: dict[str, DestinationSummary] = {}
    for d in dispatches:
        summary = per_dest.setdefault(
            d.destination,
            DestinationSummary(destination=d.destination, sent=0, pending=0, failed=0),
        )
        if d.state is DispatchState.SENT:
            summary.sent += 1
        elif d.state is DispatchState.FAILED:
            summary.failed += 1
        else:
            summary.pending += 1
    pages = summary_pages(job, data_dir)
    return JobDetail(
        **_summary(job, study, ok, flags).model_dump(),
        worker=job.worker,
        next_attempt_at=job.next_attempt_at,
        results_path=job.results_path,
        analysis_kind=analysis.get("kind") if analysis else None,
        core_measure=CORE_MEASURES.get(str(analysis.get("kind"))) if analysis else None,
        lesion_side=analysis.get("lesion_side") if analysis else None,
        hypoperfusion_intensity_ratio=(
            analysis.get("hypoperfusion_intensity_ratio") if analysis else None
        ),
        site_tmax_volumes_ml=_site_tmax_volumes(analysis),
        aif=_curve(analysis.get("aif")) if analysis else None,
        vof=_curve(analysis.get("vof")) if analysis else None,
        series=_series_uses(session, study, results),
        analysis_errors=[
            e for s in (results or {}).get("studies", []) for e in s.get("errors", [])
        ],
        summary_images=[f"/jobs/{job.id}/summary/{k}.png" for k in range(1, len(pages) + 1)],
        dispatches=[
            DispatchOutcome(
                destination=d.destination,
                sop_instance_uid=d.sop_instance_uid,
                sop_class_uid=d.sent_sop_class_uid or d.sop_class_uid,
                state=d.state.value,
                attempts=d.attempts,
                status=d.status,
                error=d.error,
                sent_at=d.sent_at,
            )
            for d in dispatches
        ],
        destinations=list(per_dest.values()),
    )


def study_detail(session: Session, study: Study, data_dir: Path) -> StudyDetail:
    """A study with its series and every job version."""
    series = session.scalars(
        select(Series).where(Series.study_id == study.id).order_by(Series.series_number)
    ).all()
    jobs = session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.version)).all()
    return StudyDetail(
        study_uid=study.study_uid,
        state=study.state.value,
        version=study.version,
        patient_id=study.patient_id,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_description=study.study_description,
        instances=study.instance_count,
        expected_instances=study.expected_instances,
        first_instance_at=study.first_instance_at,
        last_instance_at=study.last_instance_at,
        completed_at=study.completed_at,
        completion_reason=study.completion_reason,
        series=[
            SeriesInfo(
                series_uid=s.series_uid,
                series_number=s.series_number,
                modality=s.modality,
                description=s.series_description,
                instances=s.instance_count,
                expected_instances=s.expected_instances,
            )
            for s in series
        ],
        jobs=[job_summary(j, study, data_dir) for j in jobs],
    )


def studies_in_reception(session: Session, limit: int = 20) -> Sequence[Study]:
    """Studies still receiving or complete but not queued (candidates to force-complete)."""
    stmt = (
        select(Study)
        .where(Study.state.in_([StudyState.RECEIVING, StudyState.COMPLETE]))
        .order_by(Study.last_instance_at.desc())
        .limit(limit)
    )
    return session.scalars(stmt).all()
