"""The dashboard's API page works on a closed network: headless Chromium, every request
that does not go to the StrokeFlow server refused, must still render Swagger UI."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from webenv import make_settings

from strokeflow.store.engine import make_engine, make_session_factory
from strokeflow.store.migrate import upgrade_to_head
from strokeflow.web.server import WebServer, start_web_server
from tools import tool_missing

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[str]:
    """The web server as `serve` starts it, on a free loopback port; its base URL."""
    settings = make_settings(
        tmp_path / "data", http_bind_address="127.0.0.1", http_port=_free_port()
    )
    settings.data_dir.mkdir()
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    server: WebServer = start_web_server(
        settings, make_session_factory(engine), lambda _ids: None, lambda: 0, dict
    )
    yield f"http://127.0.0.1:{settings.http_port}"
    server.shutdown()
    engine.dispose()


def test_api_docs_render_with_the_network_blocked(dashboard: str) -> None:
    if not Path(CHROMIUM).exists():
        tool_missing("chromium (apt: chromium) is not installed")
    from playwright.sync_api import Route, sync_playwright

    refused: list[str] = []

    def only_local(route: Route) -> None:
        if route.request.url.startswith(dashboard):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_local)
            page.goto(f"{dashboard}/api/docs")
            # Swagger UI built the page from /openapi.json: title and the job operations.
            page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
            assert "StrokeFlow" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".opblock-summary-path")
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            assert any(path.startswith("/api/jobs") for path in paths), paths
        finally:
            browser.close()
    assert refused == [], f"the API page asked the outside world for {refused}"
