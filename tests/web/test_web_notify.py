"""Webhook notifications against a real local HTTP receiver that fails at first."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select
from webenv import ACCESSION, PATIENT_ID, Env, make_settings

from strokeflow.store.models import Job
from strokeflow.store.web_models import WebhookDelivery
from strokeflow.web.notify import Notifier


class Receiver:
    """Answers 503 to the first ``failures`` POSTs, then 204; keeps every body."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(503 if len(receiver.bodies) <= receiver.failures else 204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.server.shutdown()


def _notifier(env: Env, url: str, **options: Any) -> tuple[Notifier, list[float]]:
    delays: list[float] = []
    notifier = Notifier(
        env.sessions,
        make_settings(
            env.data_dir,
            webhook_url=url,
            webhook_backoff_s=0.5,
            public_url="https://sf.example",
            **options,
        ),
        since=datetime.now(UTC) - timedelta(days=1),
        sleep=delays.append,
    )
    return notifier, delays


def test_webhook_retries_until_delivered_without_patient_ids(env: Env, receiver: Receiver) -> None:
    notifier, delays = _notifier(env, receiver.url)
    assert notifier.run_once() == 1
    assert len(receiver.bodies) == 3  # two 503s, then delivered
    assert delays == [0.5, 1.0]
    body = receiver.bodies[-1]
    assert receiver.bodies[0] == body
    assert body["event"] == "result_ready" and body["job_id"] == 1
    assert body["link"] == "https://sf.example/jobs/1"
    assert body["volumes"]["core_ml"] is not None and body["decisions"]
    text = json.dumps(body)
    assert PATIENT_ID not in text and ACCESSION not in text and "study_uid" not in body
    with env.sessions() as session:
        row = session.scalars(select(WebhookDelivery)).one()
        assert row.attempts == 3 and row.delivered_at is not None and row.status == 204
    # Each finished attempt is notified once.
    assert notifier.run_once() == 0 and len(receiver.bodies) == 3


def test_webhook_gives_up_after_max_attempts_and_records_why(env: Env) -> None:
    failing = Receiver(failures=100)
    try:
        notifier, delays = _notifier(env, failing.url, webhook_max_attempts=3)
        assert notifier.run_once() == 0
        assert len(failing.bodies) == 3 and len(delays) == 2
    finally:
        failing.server.shutdown()
    with env.sessions() as session:
        row = session.scalars(select(WebhookDelivery)).one()
        assert row.delivered_at is None and row.status == 503 and "503" in (row.error or "")


def test_webhook_carries_identifiers_only_when_configured(env: Env) -> None:
    ok = Receiver(failures=0)
    try:
        notifier, _ = _notifier(env, ok.url, webhook_patient_data=True)
        assert notifier.run_once() == 1
    finally:
        ok.server.shutdown()
    body = ok.bodies[0]
    assert body["patient_id"] == PATIENT_ID and body["accession_number"] == ACCESSION


def test_failed_job_is_notified_with_uids_masked(env: Env) -> None:
    with env.sessions() as session, session.begin():
        job = session.get(Job, 1)
        assert job is not None
        job.state = job.state.FAILED
        job.finished_at = datetime.now(UTC)
        job.error = "attempt 3: study 1.2.826.0.1.3680043.8.498.1 unreadable\ntraceback line"
    ok = Receiver(failures=0)
    try:
        notifier, _ = _notifier(env, ok.url)
        assert notifier.run_once() == 1
    finally:
        ok.server.shutdown()
    body = ok.bodies[0]
    assert body["event"] == "job_failed"
    assert body["error"] == "attempt 3: study <uid> unreadable"
