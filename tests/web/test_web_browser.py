"""End to end through the real service, in headless Chromium (Debian package) driven by
Playwright: `strokeflow serve` runs as a subprocess, `strokeflow user add` creates the user,
DCMTK storescu sends a phantom CT perfusion study to the listener, the worker analyses it;
the browser logs in, sees the job, opens it, sees the summary image, presses Re-analyse and sees
the new attempt that the service's own worker ran.

Missing chromium or storescu fail this test. Set
``SCREENSHOTS_DIR`` to a folder to keep the screenshots (docs/images comes from this flow).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from tools import tool_missing

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
#: The installed console script, next to the interpreter running the tests.
STROKEFLOW = str(Path(sys.executable).parent / "strokeflow")
USER, PASSWORD = "alice", "correct horse battery"
#: Job states after which the worker leaves a job alone.
FINISHED = {"succeeded", "dispatched", "failed", "cancelled"}


def _need(path: str | None, what: str) -> str:
    if path is None or not Path(path).exists():
        tool_missing(f"{what} is not installed")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(condition: Callable[[], Any], timeout_s: float, what: str, log: Path) -> Any:
    """Poll ``condition`` until truthy; fail with the service log's tail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}; serve log:\n{tail}")


@dataclass
class Served:
    """A running `strokeflow serve`: its ports, environment and log."""

    dicom_port: int
    http_port: int
    env: dict[str, str]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def api(self, path: str) -> Any:
        """GET an API path with HTTP Basic; ``None`` while the server does not answer."""
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def jobs(self) -> list[dict[str, Any]]:
        answer = self.api("/api/jobs")
        return list(answer["jobs"]) if answer else []


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`strokeflow serve` on free loopback ports with user alice; stopped afterwards."""
    dicom_port, http_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROKEFLOW_")}
    env.update(
        {
            "STROKEFLOW_DATA_DIR": str(tmp_path / "data"),
            "STROKEFLOW_BIND_ADDRESS": "127.0.0.1",
            "STROKEFLOW_DICOM_PORT": str(dicom_port),
            "STROKEFLOW_HTTP_PORT": str(http_port),
            "STROKEFLOW_MIN_FREE_DISK_MB": "0",
            "STROKEFLOW_QUIET_PERIOD_S": "1",
            "STROKEFLOW_WORKER_COUNT": "1",
        }
    )
    added = subprocess.run(
        [STROKEFLOW, "user", "add", USER],
        env={**env, "STROKEFLOW_NEW_USER_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [STROKEFLOW, "serve"], env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        yield Served(dicom_port, http_port, env, log)
    finally:
        # The whole process group: serve and the worker processes it started.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def _save_screenshot(png: bytes, path: Path) -> None:
    """Keep a docs screenshot under 300 KB: an adaptive 256-colour palette when needed."""
    from io import BytesIO

    from PIL import Image

    path.write_bytes(png)
    if path.stat().st_size > 300_000:
        with Image.open(BytesIO(png)) as image:
            image.convert("RGB").quantize(256).save(path, optimize=True)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_phantom_sent_to_listener_is_shown_opened_and_reanalysed_in_chromium(
    served: Served, tmp_path: Path
) -> None:
    chromium = _need(CHROMIUM, "chromium (apt: chromium)")
    storescu = _need(shutil.which("storescu"), "storescu (apt: dcmtk)")
    from playwright.sync_api import sync_playwright

    phantom = simulate_ctp(CtpPhantomOptions(matrix=64, slices=4, frames=20, seed=3))
    files = write_ctp_study(phantom, tmp_path / "sent", extra_series=False)
    _wait_for(lambda: _listening(served.dicom_port), 60, "the DICOM listener", served.log)
    _wait_for(lambda: served.api("/api/jobs") is not None, 30, "the dashboard", served.log)
    sent = subprocess.run(
        [storescu, "-aet", "CT01", "-aec", "STROKEFLOW", "127.0.0.1", str(served.dicom_port)]
        + [str(f) for f in files if f.suffix == ".dcm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stderr
    jobs = _wait_for(
        lambda: (j := served.jobs()) and j[0]["state"] in FINISHED and j,
        120,
        "the phantom's job to finish",
        served.log,
    )
    assert len(jobs) == 1 and jobs[0]["state"] == "succeeded", jobs
    job_id = jobs[0]["id"]
    assert jobs[0]["attempts"] == 1

    shots = os.environ.get("SCREENSHOTS_DIR")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{served.url}/")
            assert "/login" in page.url
            page.fill("input[name=username]", USER)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            link = f"table.jobs a[href='/jobs/{job_id}']"
            page.wait_for_selector(link)
            assert "succeeded" in page.inner_text("table.jobs")
            if shots:
                _save_screenshot(
                    page.screenshot(full_page=True), Path(shots) / "dashboard-jobs.png"
                )
            page.click(link)
            page.wait_for_selector("img.summary")
            # Waits until the PNG rendered from the stored SC object has decoded.
            page.wait_for_function(
                "() => { const i = document.querySelector('img.summary');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=15_000,
            )
            assert page.inner_text("#job-attempt") == "attempt 1"
            if shots:
                _save_screenshot(page.screenshot(full_page=True), Path(shots) / "dashboard-job.png")
            page.on("dialog", lambda dialog: dialog.accept())
            page.click("#reanalyse")
            page.wait_for_selector("p.flash")
            assert "queued for attempt 2" in page.inner_text("p.flash")

            # The service's own worker takes the job from the queue and runs attempt 2.
            def second_attempt_shown() -> bool:
                page.reload()
                attempt, state = page.inner_text("#job-attempt"), page.inner_text("#job-state")
                return attempt == "attempt 2" and state in FINISHED

            _wait_for(second_attempt_shown, 120, "attempt 2 on the job page", served.log)
            assert page.inner_text("#job-state") == "succeeded"
            assert "reanalyse" in page.inner_text("ul.audit")
            page.wait_for_function(
                "() => { const i = document.querySelector('img.summary');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=15_000,
            )
        finally:
            browser.close()
