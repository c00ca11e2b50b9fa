"""The study completion state machine, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from strokeflow.store.models import Job, JobState, Study, StudyState
from strokeflow.store.repository import InstanceChange, InstanceRecord, get_study, list_jobs
from strokeflow.store.studies import (
    CompletionRules,
    StudyStateError,
    force_complete,
    mark_released,
    note_instance,
    release_orphaned,
    sweep,
)

T0 = datetime(2024, 1, 2, 10, 0, 0, tzinfo=UTC)
RULES = CompletionRules(quiet_period_s=10.0, quiet_timeout_s=300.0)
STUDY = "1.2.826.0.1.3680043.10.1"


def record(n: int, *, sha: str = "a", study: str = STUDY, expected: int | None = None):  # type: ignore[no-untyped-def]
    return InstanceRecord(
        study_uid=study,
        series_uid=f"{study}.1",
        sop_instance_uid=f"{study}.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"studies/{study}/{study}.1/{study}.1.{n}.dcm",
        size_bytes=1000,
        sha256=sha * 64,
        expected_study_instances=expected,
    )


def receive(sessions: sessionmaker[Session], *records: InstanceRecord, at: datetime) -> list:  # type: ignore[type-arg]
    with sessions() as session, session.begin():
        return [note_instance(session, r, at) for r in records]


def release(sessions: sessionmaker[Session], study: str = STUDY, at: datetime = T0) -> None:
    with sessions() as session, session.begin():
        mark_released(session, [study], at)


def run_sweep(sessions: sessionmaker[Session], at: datetime) -> list[tuple[str, int, int]]:
    with sessions() as session, session.begin():
        return [(j.study.study_uid, j.version, j.instance_count) for j in sweep(session, RULES, at)]


def state(sessions: sessionmaker[Session], study: str = STUDY) -> StudyState:
    with sessions() as session:
        found = get_study(session, study)
        assert found is not None
        return found.state


def test_release_is_seen_by_a_study_already_loaded_in_the_session(sessions) -> None:  # type: ignore[no-untyped-def]
    receive(sessions, record(1), at=T0)
    with sessions() as session, session.begin():
        study = get_study(session, STUDY)
        assert study is not None and not study.released
        assert mark_released(session, [STUDY], T0) == 1
        assert study.released and study.released_at == T0


def test_released_study_completes_after_the_quiet_period(sessions) -> None:  # type: ignore[no-untyped-def]
    receive(sessions, record(1), record(2), at=T0)
    release(sessions)
    assert run_sweep(sessions, T0 + timedelta(seconds=9)) == []
    assert state(sessions) is StudyState.RECEIVING
    assert run_sweep(sessions, T0 + timedelta(seconds=10)) == [(STUDY, 1, 2)]
    assert state(sessions) is StudyState.QUEUED
    with sessions() as session:
        study = get_study(session, STUDY)
        assert study is not None and study.completion_reason == "quiet_period"
        job = session.scalars(select(Job)).one()
        assert job.state is JobState.QUEUED
        assert job.first_instance_at == T0 and job.last_instance_at == T0
        assert job.completed_at == T0 + timedelta(seconds=10)
        assert job.queued_at == T0 + timedelta(seconds=10)


def test_study_with_open_association_waits_for_the_quiet_timeout(sessions) -> None:  # type: ignore[no-untyped-def]
    receive(sessions, record(1), at=T0)
    assert run_sweep(sessions, T0 + timedelta(seconds=60)) == []
    assert run_sweep(sessions, T0 + timedelta(seconds=300)) == [(STUDY, 1, 1)]
    with sessions() as session:
        study = get_study(session, STUDY)
        assert study is not None and study.completion_reason == "quiet_timeout"


def test_a_new_instance_restarts_the_quiet_period(sessions) -> None:  # type: ignore[no-untyped-def]
    receive(sessions, record(1), at=T0)
    release(sessions)
    receive(sessions, record(2), at=T0 + timedelta(seconds=8))  # a second association
    assert run_sweep(sessions, T0 + timedelta(seconds=12)) == []  # not released, not quiet
    release(sessions, at=T0 + timedelta(seconds=9))
    assert run_sweep(sessions, T0 + timedelta(seconds=18)) == []  # 9 s after the release
    assert run_sweep(sessions, T0 + timedelta(seconds=19)) == [(STUDY, 1, 2)]


def test_expected_instance_count_completes_at_once(sessions) -> None:  # type: ignore[no-untyped-def]
    receive(sessions, record(1, expected=2), at=T0)
    assert state(sessions) is StudyState.RECEIVING
    receive(sessions, record(2, expected=2), at=T0)
    assert state(sessions) is StudyState.COMPLETE
    assert run_sweep(sessions, T0) == [(STUDY, 1, 2)]


def test_forced_completion(sessions) -> None:  # type: ignore[no-untyped-def]
    receive(sessions, record(1), at=T0)
    with sessions() as session, session.begin():
        force_complete(session, STUDY, T0 + timedelta(seconds=1))
    assert run_sweep(sessions, T0 + timedelta(seconds=1)) == [(STUDY, 1, 1)]
    with (
        sessions() as session,
        session.begin(),
        pytest.raises(StudyStateError, match="already queued as job version 1"),
    ):
        force_complete(session, STUDY, T0)
    with (
        sessions() as session,
        session.begin(),
        pytest.raises(StudyStateError, match="not been received"),
    ):
        force_complete(session, "1.2.3.4", T0)


def test_late_instance_after_queued_makes_a_new_job_version(sessions) -> None:  # type: ignore[no-untyped-def]
    receive(sessions, record(1), record(2), at=T0)
    release(sessions)
    assert run_sweep(sessions, T0 + timedelta(seconds=10)) == [(STUDY, 1, 2)]

    late = T0 + timedelta(seconds=60)
    assert receive(sessions, record(3), at=late) == [InstanceChange.NEW]
    assert state(sessions) is StudyState.RECEIVING
    release(sessions, at=late)
    assert run_sweep(sessions, late + timedelta(seconds=10)) == [(STUDY, 2, 3)]
    with sessions() as session:
        jobs = sorted((j.version, j.instance_count) for j, _ in list_jobs(session))
    assert jobs == [(1, 2), (2, 3)]


def test_identical_resend_after_queued_changes_nothing_but_a_changed_one_does(sessions) -> None:  # type: ignore[no-untyped-def]
    receive(sessions, record(1), at=T0)
    release(sessions)
    run_sweep(sessions, T0 + timedelta(seconds=10))
    assert receive(sessions, record(1), at=T0 + timedelta(seconds=20)) == [InstanceChange.DUPLICATE]
    assert state(sessions) is StudyState.QUEUED
    assert receive(sessions, record(1, sha="b"), at=T0 + timedelta(seconds=30)) == [
        InstanceChange.REPLACED
    ]
    assert state(sessions) is StudyState.RECEIVING
    release(sessions, at=T0 + timedelta(seconds=30))
    assert run_sweep(sessions, T0 + timedelta(seconds=40)) == [(STUDY, 2, 1)]


def test_restart_releases_orphaned_studies_so_they_complete(sessions) -> None:  # type: ignore[no-untyped-def]
    receive(sessions, record(1), at=T0)  # the association died with the listener
    assert run_sweep(sessions, T0 + timedelta(seconds=30)) == []
    restart = T0 + timedelta(seconds=30)
    with sessions() as session, session.begin():
        assert release_orphaned(session, restart) == 1
    # The quiet period counts from the restart: the sender may reconnect and go on.
    assert run_sweep(sessions, restart + timedelta(seconds=9)) == []
    assert run_sweep(sessions, restart + timedelta(seconds=10)) == [(STUDY, 1, 1)]


def test_studies_are_independent(sessions) -> None:  # type: ignore[no-untyped-def]
    other = "1.2.826.0.1.3680043.10.2"
    receive(sessions, record(1), at=T0)
    receive(sessions, record(1, study=other), at=T0 + timedelta(seconds=5))
    release(sessions, at=T0)
    release(sessions, other, at=T0 + timedelta(seconds=5))
    assert run_sweep(sessions, T0 + timedelta(seconds=11)) == [(STUDY, 1, 1)]
    assert run_sweep(sessions, T0 + timedelta(seconds=15)) == [(other, 1, 1)]
    with sessions() as session:
        assert session.scalars(select(Study.state)).all() == [StudyState.QUEUED] * 2


def test_instance_claiming_another_series_is_refused(sessions) -> None:  # type: ignore[no-untyped-def]
    receive(sessions, record(1), at=T0)
    moved = record(1)
    moved = InstanceRecord(**{**moved.__dict__, "series_uid": f"{STUDY}.9"})
    with pytest.raises(ValueError, match="already stored in another series"):
        receive(sessions, moved, at=T0)
