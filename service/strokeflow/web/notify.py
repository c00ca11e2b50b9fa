"""Webhook notifications: a JSON POST, retried, when a result is ready or a job failed.

Patient identifiers (patient ID, accession number, Study UID, error text naming UIDs) are
left out unless the setting ``webhook_patient_data`` is on. Each finished attempt of a job
is notified once: inserting its :class:`WebhookDelivery` row claims it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.config import Settings
from strokeflow.store.models import Job, JobState, Study
from strokeflow.store.web_models import WebhookDelivery

LOG = logging.getLogger(__name__)

RESULT_READY = "result_ready"
JOB_FAILED = "job_failed"
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def build_payload(job: Job, study: Study, event: str, settings: Settings) -> dict[str, Any]:
    """The notification body: event, job, volumes, decisions, link; identifiers only if set."""
    error = job.error
    if error and not settings.webhook_patient_data:
        # Error texts can name study/series UIDs and paths; keep the first line, UIDs masked.
        error = _UID.sub("<uid>", error.splitlines()[0])
    payload: dict[str, Any] = {
        "event": event,
        "job_id": job.id,
        "version": job.version,
        "state": job.state.value,
        "attempts": job.attempts,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "volumes": {
            "core_ml": job.core_ml,
            "tmax6_ml": job.tmax6_ml,
            "tmax10_ml": job.tmax10_ml,
            "mismatch_ml": job.mismatch_ml,
            "mismatch_ratio": job.mismatch_ratio,
        },
        "decisions": job.decisions,
        "error": error,
        "link": f"{settings.public_url}/jobs/{job.id}",
    }
    if settings.webhook_patient_data:
        payload["patient_id"] = study.patient_id
        payload["accession_number"] = study.accession_number
        payload["study_uid"] = study.study_uid
    return payload


@dataclass
class DeliveryOutcome:
    """What happened to one notification."""

    delivered: bool
    attempts: int
    status: int | None
    error: str | None


def post_json(
    url: str,
    payload: dict[str, Any],
    *,
    max_attempts: int,
    backoff_s: float,
    timeout_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryOutcome:
    """POST ``payload`` until a 2xx answer, at most ``max_attempts`` times.

    The delay before attempt ``k + 1`` is ``backoff_s * 2**(k - 1)``.

    Returns
    -------
    DeliveryOutcome
    """
    data = json.dumps(payload).encode()
    status: int | None = None
    error: str | None = None
    for attempt in range(1, max_attempts + 1):
        request = urllib.request.Request(
            url,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "StrokeFlow"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status = int(response.status)
            return DeliveryOutcome(True, attempt, status, None)
        except urllib.error.HTTPError as exc:
            status, error = int(exc.code), f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError) as exc:
            status, error = None, f"no answer: {exc}"
        LOG.warning("webhook attempt %d of %d failed: %s", attempt, max_attempts, error)
        if attempt < max_attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    return DeliveryOutcome(False, max_attempts, status, error)


@dataclass
class Notifier:
    """Find newly finished jobs and notify the webhook about each, once.

    Parameters
    ----------
    sessions : sessionmaker
    settings : Settings
        ``webhook_url`` must be set.
    since : datetime
        Only attempts finished from then on are notified (not the history at start-up).
    """

    sessions: sessionmaker[Session]
    settings: Settings
    since: datetime = field(default_factory=_utcnow)
    interval_s: float = 2.0
    sleep: Callable[[float], None] = time.sleep

    def _claim(self) -> list[tuple[int, str, datetime]]:
        with self.sessions() as session:
            rows = session.execute(
                select(Job.id, Job.state, Job.finished_at)
                .outerjoin(
                    WebhookDelivery,
                    and_(
                        WebhookDelivery.job_id == Job.id,
                        WebhookDelivery.finished_at == Job.finished_at,
                    ),
                )
                .where(
                    Job.state.in_([JobState.SUCCEEDED, JobState.DISPATCHED, JobState.FAILED]),
                    Job.finished_at >= self.since,
                    WebhookDelivery.id.is_(None),
                )
                .order_by(Job.id)
            ).all()
        claimed: list[tuple[int, str, datetime]] = []
        for job_id, state, finished_at in rows:
            if finished_at is None:  # excluded by the query; keeps the types honest
                continue
            event = JOB_FAILED if state is JobState.FAILED else RESULT_READY
            try:
                with self.sessions() as session, session.begin():
                    session.add(
                        WebhookDelivery(
                            job_id=job_id,
                            event=event,
                            finished_at=finished_at,
                            created_at=_utcnow(),
                            attempts=0,
                        )
                    )
            except IntegrityError:
                continue  # another process claimed it
            claimed.append((job_id, event, finished_at))
        return claimed

    def run_once(self) -> int:
        """Notify every newly finished job; returns how many notifications were sent."""
        url = self.settings.webhook_url
        if not url:
            return 0
        sent = 0
        for job_id, event, finished_at in self._claim():
            with self.sessions() as session:
                job = session.get(Job, job_id)
                study = session.get(Study, job.study_id) if job else None
                if job is None or study is None:
                    continue
                payload = build_payload(job, study, event, self.settings)
            outcome = post_json(
                url,
                payload,
                max_attempts=self.settings.webhook_max_attempts,
                backoff_s=self.settings.webhook_backoff_s,
                sleep=self.sleep,
            )
            with self.sessions() as session, session.begin():
                row = session.scalars(
                    select(WebhookDelivery).where(
                        WebhookDelivery.job_id == job_id,
                        WebhookDelivery.event == event,
                        WebhookDelivery.finished_at == finished_at,
                    )
                ).one()
                row.attempts = outcome.attempts
                row.status = outcome.status
                row.error = outcome.error
                row.delivered_at = _utcnow() if outcome.delivered else None
            if outcome.delivered:
                sent += 1
                LOG.info("job %d: webhook %s delivered", job_id, event)
            else:
                LOG.error(
                    "job %d: webhook %s not delivered after %d attempts: %s",
                    job_id,
                    event,
                    outcome.attempts,
                    outcome.error,
                )
        return sent

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop``; errors are logged and polling goes on."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                LOG.exception("webhook pass failed; retrying")
            stop.wait(self.interval_s)
