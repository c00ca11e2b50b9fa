"""Job state changes only through the named compare-and-set transitions, and a transition
from a wrong state does not take."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

import strokeflow
from strokeflow.store import transitions
from strokeflow.store.models import Dispatch, DispatchState, Job, JobState, Study, StudyState

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PACKAGE = Path(strokeflow.__file__).parent
TRANSITIONS = PACKAGE / "store" / "transitions.py"


def _job_state_writes(path: Path) -> list[str]:
    """``x.state = JobState.X`` and ``state=JobState.X`` (a keyword: ``values()``, ``Job()``)."""

    def names_job_state(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Name) and n.id == "JobState" for n in ast.walk(node))

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            elements = target.elts if isinstance(target, ast.Tuple) else [target]
            writes_state = any(isinstance(t, ast.Attribute) and t.attr == "state" for t in elements)
            if writes_state and node.value is not None and names_job_state(node.value):
                found.append(f"{path.name}:{node.lineno}")
        if isinstance(node, ast.keyword) and node.arg == "state" and names_job_state(node.value):
            found.append(f"{path.name}:{node.value.lineno}")
    return found


def test_only_the_transitions_module_writes_job_state() -> None:
    writes = {
        str(path.relative_to(PACKAGE)): w
        for path in PACKAGE.rglob("*.py")
        if path != TRANSITIONS and "migrations" not in path.parts
        for w in [_job_state_writes(path)]
        if w
    }
    assert writes == {}, f"job state written outside store/transitions.py: {writes}"
    raw_sql = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path != TRANSITIONS
        and "migrations" not in path.parts
        and re.search(r"update\s+\"?jobs\b", path.read_text(encoding="utf-8"), re.IGNORECASE)
    ]
    assert raw_sql == [], f"job rows updated by SQL text: {raw_sql}"
    # The check finds what it looks for: the transitions module itself writes states.
    assert len(_job_state_writes(TRANSITIONS)) >= 8


def test_the_write_check_sees_attribute_and_keyword_writes(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "job.state = JobState.QUEUED\n"
        "job.state, job.attempts = JobState.FAILED, 3\n"
        "update(Job).values(state=JobState.RUNNING)\n"
        "row.state = DispatchState.SENT\n"
        "if job.state is JobState.QUEUED: pass\n",
        encoding="utf-8",
    )
    assert _job_state_writes(sample) == ["sample.py:1", "sample.py:2", "sample.py:3"]


def _job(sessions: sessionmaker[Session], state: JobState, worker: str | None = None) -> int:
    with sessions() as session, session.begin():
        uid = f"1.2.3.{len(session.query(Study).all()) + 1}"
        study = Study(study_uid=uid, state=StudyState.QUEUED, version=1)
        job = Job(
            study=study,
            version=1,
            state=state,
            attempts=1,
            instance_count=0,
            worker=worker,
            lease_until=T0 + timedelta(seconds=60),
        )
        session.add(job)
        session.flush()
        return job.id


def _state(sessions: sessionmaker[Session], job_id: int) -> JobState:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.state


#: Every transition once, as (call, the states it may start from, the state it leads to).
CASES = {
    "claim": (
        lambda s, j: transitions.claim(s, j, worker="w", now=T0, lease_s=60),
        {JobState.QUEUED},
        JobState.RUNNING,
    ),
    "finish": (
        lambda s, j: transitions.finish(s, j, worker="w", now=T0, results_path="r", summary={}),
        {JobState.RUNNING},
        JobState.SUCCEEDED,
    ),
    "fail": (
        lambda s, j: transitions.fail(s, j, worker="w", now=T0, error="e"),
        {JobState.RUNNING},
        JobState.FAILED,
    ),
    "requeue": (
        lambda s, j: transitions.requeue(s, j, worker="w", now=T0, error="e", retry_at=T0),
        {JobState.RUNNING},
        JobState.QUEUED,
    ),
    "reanalyse": (
        lambda s, j: transitions.reanalyse(s, j, now=T0),
        {JobState.FAILED, JobState.CANCELLED, JobState.SUCCEEDED, JobState.DISPATCHED},
        JobState.QUEUED,
    ),
    "resend": (
        lambda s, j: transitions.resend(s, j, []),
        {JobState.SUCCEEDED, JobState.DISPATCHED},
        JobState.SUCCEEDED,
    ),
    "mark_dispatched": (
        lambda s, j: transitions.mark_dispatched(s, j, now=T0),
        {JobState.SUCCEEDED},
        JobState.DISPATCHED,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_transition_takes_from_its_states_only(
    sessions: sessionmaker[Session], name: str
) -> None:
    call, allowed, target = CASES[name]
    for state in JobState:
        job_id = _job(sessions, state, worker="w")
        with sessions() as session, session.begin():
            took = call(session, job_id)
        assert took is (state in allowed), f"{name} from {state.value}"
        assert _state(sessions, job_id) is (target if took else state)


def test_a_worker_cannot_finish_or_fail_a_job_another_worker_holds(
    sessions: sessionmaker[Session],
) -> None:
    job_id = _job(sessions, JobState.RUNNING, worker="new")
    with sessions() as session, session.begin():
        assert not transitions.finish(
            session, job_id, worker="old", now=T0, results_path="r", summary={"core_ml": 1.0}
        )
        assert not transitions.fail(session, job_id, worker="old", now=T0, error="late")
        assert not transitions.renew_lease(session, job_id, worker="old", now=T0, lease_s=60)
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state is JobState.RUNNING
        assert job.core_ml is None and job.error is None


def test_the_maintenance_guard_needs_the_lease_to_have_run_out(
    sessions: sessionmaker[Session],
) -> None:
    job_id = _job(sessions, JobState.RUNNING, worker="w")  # lease until T0 + 60 s
    args = {"worker": "w", "now": T0, "error": "lost", "retry_at": T0}
    with sessions() as session, session.begin():
        assert not transitions.requeue(session, job_id, lease_expired_before=T0, **args)
    assert _state(sessions, job_id) is JobState.RUNNING
    later = T0 + timedelta(seconds=61)
    with sessions() as session, session.begin():
        assert transitions.requeue(session, job_id, lease_expired_before=later, **args)
    assert _state(sessions, job_id) is JobState.QUEUED


def test_reanalyse_gives_a_failed_job_fresh_attempts_and_a_finished_one_its_next(
    sessions: sessionmaker[Session],
) -> None:
    failed = _job(sessions, JobState.FAILED)
    finished = _job(sessions, JobState.SUCCEEDED)
    with sessions() as session, session.begin():
        assert transitions.reanalyse(session, failed, now=T0)
        assert transitions.reanalyse(session, finished, now=T0)
    with sessions() as session:
        attempts = {j.id: j.attempts for j in session.query(Job)}
    assert attempts == {failed: 0, finished: 1}


def test_resend_puts_the_given_rows_back_to_pending(sessions: sessionmaker[Session]) -> None:
    job_id = _job(sessions, JobState.DISPATCHED)
    with sessions() as session, session.begin():
        for uid in ("1.9.1", "1.9.2"):
            session.add(
                Dispatch(
                    job_id=job_id,
                    destination="PACS@h:104",
                    sop_instance_uid=uid,
                    sop_class_uid="1.2",
                    path=uid,
                    state=DispatchState.SENT,
                    attempts=3,
                )
            )
    with sessions() as session, session.begin():
        first = session.query(Dispatch.id).filter(Dispatch.sop_instance_uid == "1.9.1").scalar()
        assert transitions.resend(session, job_id, [first])
    with sessions() as session:
        rows = {
            d.sop_instance_uid: (d.state, d.attempts)
            for d in session.query(Dispatch).filter(Dispatch.job_id == job_id)
        }
    assert rows == {"1.9.1": (DispatchState.PENDING, 0), "1.9.2": (DispatchState.SENT, 3)}
    assert _state(sessions, job_id) is JobState.SUCCEEDED
