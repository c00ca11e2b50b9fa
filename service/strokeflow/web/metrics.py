"""Prometheus metrics read from the database at scrape time (every process sees the same).

Exposed: instances received, jobs by state, stage durations, dispatch outcomes and
failures, webhook deliveries. No patient identifiers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.store.models import Dispatch, DispatchState, Instance, Job, JobState
from strokeflow.store.web_models import WebhookDelivery

#: Stage durations: (stage, start attribute, end attribute) of a job.
STAGE_SPANS = (
    ("reception", "first_instance_at", "last_instance_at"),
    ("completion_wait", "last_instance_at", "completed_at"),
    ("queue_wait", "queued_at", "started_at"),
    ("analysis", "started_at", "finished_at"),
    ("dispatch", "finished_at", "dispatched_at"),
)
#: Histogram buckets in seconds (stroke work is measured in minutes).
BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class StoreCollector(Collector):
    """Collect from the job tables on each scrape.

    Parameters
    ----------
    sessions : sessionmaker
    queue_pending : callable, optional
        Messages waiting on the task queue.
    """

    def __init__(
        self, sessions: sessionmaker[Session], queue_pending: Callable[[], int] | None = None
    ) -> None:
        self._sessions = sessions
        self._queue_pending = queue_pending

    def collect(self) -> Iterator[Metric]:
        with self._sessions() as session:
            received = session.scalar(select(func.coalesce(func.sum(Instance.times_received), 0)))
            counter = CounterMetricFamily(
                "strokeflow_instances_received",
                "DICOM instances received (resends included)",
            )
            counter.add_metric([], float(received or 0))
            yield counter

            jobs = GaugeMetricFamily("strokeflow_jobs", "Jobs by state", labels=["state"])
            counts = dict(
                session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
            )
            for state in JobState:
                jobs.add_metric([state.value], float(counts.get(state, 0)))
            yield jobs

            yield self._stage_histogram(session)

            objects = GaugeMetricFamily(
                "strokeflow_dispatch_objects",
                "Result objects per destination and delivery state",
                labels=["destination", "state"],
            )
            failures = CounterMetricFamily(
                "strokeflow_dispatch_failures",
                "Result objects that could not be delivered after every attempt",
                labels=["destination"],
            )
            rows = session.execute(
                select(Dispatch.destination, Dispatch.state, func.count()).group_by(
                    Dispatch.destination, Dispatch.state
                )
            ).all()
            failed: dict[str, float] = {}
            for destination, dispatch_state, count in rows:
                objects.add_metric([destination, dispatch_state.value], float(count))
                failed.setdefault(destination, 0.0)
                if dispatch_state is DispatchState.FAILED:
                    failed[destination] += float(count)
            for destination, n_failed in failed.items():
                failures.add_metric([destination], n_failed)
            yield objects
            yield failures

            hooks = GaugeMetricFamily(
                "strokeflow_webhook_notifications",
                "Webhook notifications by outcome",
                labels=["outcome"],
            )
            delivered = session.scalar(
                select(func.count()).where(WebhookDelivery.delivered_at.is_not(None))
            )
            total = session.scalar(select(func.count()).select_from(WebhookDelivery))
            hooks.add_metric(["delivered"], float(delivered or 0))
            hooks.add_metric(["undelivered"], float((total or 0) - (delivered or 0)))
            yield hooks

        if self._queue_pending is not None:
            pending = GaugeMetricFamily(
                "strokeflow_queue_pending", "Job messages waiting on the task queue"
            )
            pending.add_metric([], float(self._queue_pending()))
            yield pending

    def _stage_histogram(self, session: Session) -> HistogramMetricFamily:
        histogram = HistogramMetricFamily(
            "strokeflow_job_stage_seconds",
            "Duration of each stage of a job, from the job table",
            labels=["stage"],
        )
        columns = sorted({a for _, start, end in STAGE_SPANS for a in (start, end)})
        rows = session.execute(select(*(getattr(Job, c) for c in columns))).all()
        for stage, start, end in STAGE_SPANS:
            i, j = columns.index(start), columns.index(end)
            spans = [
                (row[j] - row[i]).total_seconds()
                for row in rows
                if row[i] is not None and row[j] is not None
            ]
            buckets = [(str(b), float(sum(s <= b for s in spans))) for b in BUCKETS_S]
            buckets.append(("+Inf", float(len(spans))))
            histogram.add_metric([stage], buckets, sum_value=float(sum(spans)))
        return histogram


def make_registry(
    sessions: sessionmaker[Session], queue_pending: Callable[[], int] | None = None
) -> CollectorRegistry:
    """A registry of its own (no process-global state) holding the store collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(sessions, queue_pending))
    return registry
