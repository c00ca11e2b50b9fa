"""End to end in headless Chromium (Debian package) driven by Playwright: log in, see the
analysed phantom job, open it, see the summary image, press retry, see the new attempt.

The job comes from the store's own reception functions and the real worker code
(:class:`JobRunner`), not from a DICOM association. Set ``SCREENSHOTS_DIR`` to a
folder to keep the README screenshots.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from conftest import PASSWORD, USER, Env

from strokeflow.worker.jobs import JobRunner

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def server(env: Env) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(env.app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_login_open_job_see_summary_retry_and_new_attempt(env: Env, server: str) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed (apt: chromium)")
        pytest.skip("chromium is not installed (apt: chromium)")
    from playwright.sync_api import sync_playwright

    shots = os.environ.get("SCREENSHOTS_DIR")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{server}/")
        assert "/login" in page.url
        page.fill("input[name=username]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("table.jobs a[href='/jobs/1']")
        assert "succeeded" in page.inner_text("table.jobs")
        if shots:
            page.screenshot(path=str(Path(shots) / "dashboard-jobs.png"), full_page=True)
        page.click("table.jobs a[href='/jobs/1']")
        page.wait_for_selector("img.summary")
        # Waits until the PNG rendered from the SC object has decoded in the browser.
        page.wait_for_function(
            "() => { const i = document.querySelector('img.summary');"
            " return i && i.complete && i.naturalWidth > 200; }",
            timeout=15_000,
        )
        assert page.inner_text("#job-attempt") == "attempt 1"
        if shots:
            page.screenshot(path=str(Path(shots) / "dashboard-job.png"), full_page=True)
        page.on("dialog", lambda dialog: dialog.accept())
        page.click("#retry")
        page.wait_for_selector("p.flash")
        assert "queued for attempt 2" in page.inner_text("p.flash")
        assert page.inner_text("#job-state") == "queued"
        # The worker takes the job id from the queue and runs the new attempt.
        assert env.enqueued == [1]
        JobRunner(env.settings, env.sessions).run(1)
        page.reload()
        assert page.inner_text("#job-attempt") == "attempt 2"
        assert page.inner_text("#job-state") == "succeeded"
        assert "retry" in page.inner_text("ul.audit")
        browser.close()
