"""JSON shapes of the API (they make the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class Stage(BaseModel):
    """One step of a job's timeline and how long it took since the previous step."""

    name: str = Field(description="first_instance, last_instance, complete, queued, ...")
    at: datetime | None
    #: Seconds since the previous stage that has a time.
    since_previous_s: float | None


class QualityFlag(BaseModel):
    code: str
    severity: str
    message: str


class JobSummary(BaseModel):
    """A job as listed: identity, state, timeline, volumes, decisions, quality."""

    id: int
    study_uid: str
    version: int
    state: str
    attempts: int = Field(description="Analysis attempts started so far")
    current_attempt: int = Field(
        description="The attempt the job is on: the next one while queued, else the last"
    )
    instances: int
    patient_id: str | None
    accession_number: str | None
    study_date: str | None
    timeline: list[Stage]
    core_ml: float | None
    #: The published Tmax > 6 s and > 10 s volumes, on which the decisions are made.
    tmax6_ml: float | None
    tmax10_ml: float | None
    mismatch_ml: float | None
    mismatch_ratio: float | None
    decisions: dict[str, Any] | None
    quality_ok: bool | None = Field(description="None until results exist")
    quality_flags: list[QualityFlag]
    error: str | None
    url: str = Field(description="The job's dashboard page")


class Curve(BaseModel):
    times_s: list[float]
    curve_hu: list[float]
    peak_hu: float | None = None
    time_to_peak_s: float | None = None


class SeriesUse(BaseModel):
    series_uid: str
    series_number: int | None
    description: str | None
    modality: str | None
    images: int | None
    kind: str | None = Field(description="ctp, ncct, cta, localizer, ... (from the analysis)")
    used: bool
    reason: str | None


class DispatchOutcome(BaseModel):
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    state: str
    attempts: int
    status: int | None
    error: str | None
    sent_at: datetime | None


class DestinationSummary(BaseModel):
    destination: str
    sent: int
    pending: int
    failed: int


class JobDetail(JobSummary):
    """Everything the job page shows."""

    worker: str | None
    next_attempt_at: datetime | None
    results_path: str | None
    analysis_kind: str | None
    core_measure: str | None = Field(
        description="What the core volume is thresholded on: rCBF (CT perfusion) or ADC (MR)"
    )
    lesion_side: str | None
    hypoperfusion_intensity_ratio: float | None
    site_tmax_volumes_ml: dict[str, float | None] = Field(
        default_factory=dict,
        description="Tmax volumes (mL) of the site's own thresholds, keyed by the threshold in "
        "seconds; tmax6_ml and tmax10_ml are the published Tmax > 6 s and > 10 s",
    )
    aif: Curve | None
    vof: Curve | None
    series: list[SeriesUse]
    analysis_errors: list[str]
    summary_images: list[str] = Field(description="URLs of the summary pages as PNG")
    dispatches: list[DispatchOutcome]
    destinations: list[DestinationSummary]


class JobList(BaseModel):
    jobs: list[JobSummary]
    count: int = Field(description="Jobs returned (at most the limit)")


class SeriesInfo(BaseModel):
    series_uid: str
    series_number: int | None
    modality: str | None
    description: str | None
    instances: int
    expected_instances: int | None


class StudyDetail(BaseModel):
    study_uid: str
    state: str
    version: int
    patient_id: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    instances: int
    expected_instances: int | None
    first_instance_at: datetime | None
    last_instance_at: datetime | None
    completed_at: datetime | None
    completion_reason: str | None
    series: list[SeriesInfo]
    jobs: list[JobSummary]


class ActionResult(BaseModel):
    ok: bool
    message: str


class Health(BaseModel):
    status: str
    database: str
    jobs: dict[str, int] = Field(default_factory=dict)
