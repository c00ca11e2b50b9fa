"""The system page: listener and worker health, queue depth, disk use, destinations."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strokeflow.config import Destination, Settings
from strokeflow.store.models import Job, JobState


@dataclass
class PeerCheck:
    """The outcome of one C-ECHO."""

    name: str
    ok: bool
    detail: str


@dataclass
class SystemStatus:
    """Everything the system page shows."""

    listener: PeerCheck
    destinations: list[PeerCheck]
    jobs_by_state: dict[str, int]
    queue_pending: int | None
    running_workers: list[str]
    stale_workers: list[str]
    disk_total_gb: float
    disk_free_gb: float
    disk_min_free_gb: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def disk_used_fraction(self) -> float:
        """Share of the data directory's file system in use."""
        total = self.disk_total_gb or 1.0
        return (total - self.disk_free_gb) / total


def echo_peer(destination: Destination, calling_ae_title: str) -> PeerCheck:
    """C-ECHO ``destination``; never raises."""
    from strokeflow.dicomnet.scu import DicomNetworkError, echo

    try:
        status = echo(destination, calling_ae_title)
    except (DicomNetworkError, OSError, RuntimeError) as exc:
        return PeerCheck(str(destination), False, str(exc))
    if status != 0:
        return PeerCheck(str(destination), False, f"C-ECHO status 0x{status:04X}")
    return PeerCheck(str(destination), True, "C-ECHO ok")


def system_status(
    session: Session,
    settings: Settings,
    now: datetime,
    *,
    queue_pending: Callable[[], int] | None = None,
    health_extra: Callable[[], dict[str, Any]] | None = None,
    echo: Callable[[Destination, str], PeerCheck] = echo_peer,
) -> SystemStatus:
    """Check the listener and every destination (in parallel) and read the job table.

    Parameters
    ----------
    session : Session
    settings : Settings
    now : datetime
    queue_pending : callable, optional
        Messages on the task queue.
    health_extra : callable, optional
        The ``serve`` process's own health fields (worker processes alive, restarts).
    echo : callable
        The C-ECHO used (tests replace it).
    """
    host = (
        "127.0.0.1" if settings.dicom_address in ("", "0.0.0.0", "::") else settings.dicom_address
    )
    own = Destination(settings.ae_title, host, settings.dicom_port)
    with ThreadPoolExecutor(max_workers=8) as pool:
        listener_future = pool.submit(echo, own, settings.ae_title)
        dest_futures = [pool.submit(echo, d, settings.ae_title) for d in settings.destinations]
        counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        running = session.execute(
            select(Job.worker, Job.heartbeat_at).where(Job.state == JobState.RUNNING)
        ).all()
        pending = queue_pending() if queue_pending else None
        extra = health_extra() if health_extra else {}
        listener = listener_future.result()
        destinations = [f.result() for f in dest_futures]
    fresh, stale = [], []
    for worker, beat in running:
        # Three missed heartbeats (a third of the default 60 s lease each) look dead.
        if beat is not None and now - beat < timedelta(seconds=60):
            fresh.append(worker or "?")
        else:
            stale.append(worker or "?")
    usage = shutil.disk_usage(settings.data_dir if settings.data_dir.exists() else ".")
    listener.name = f"listener {own}"
    return SystemStatus(
        listener=listener,
        destinations=destinations,
        jobs_by_state={s.value: int(counts.get(s, 0)) for s in JobState},
        queue_pending=pending,
        running_workers=fresh,
        stale_workers=stale,
        disk_total_gb=usage.total / 1e9,
        disk_free_gb=usage.free / 1e9,
        disk_min_free_gb=settings.min_free_disk_mb / 1e3,
        extra=extra,
    )
