"""Helpers for the service tests: CT files, free ports, DICOM clients, PostgreSQL, polling."""

from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/dicomfactory.py

from dicomfactory import StudyTags, uid, write_ct_instance
from strokeflow.store.engine import make_engine
from tools import require_tool


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need_tool(name: str) -> str:
    """Path of a DCMTK tool; a missing one fails the test."""
    return require_tool(name, "dcmtk")


def write_ct_files(
    folder: Path, count: int, *, study: str = "study-a", series: str = "series-a", size: int = 16
) -> list[Path]:
    """``count`` small CT slices of one series, UIDs derived from the names."""
    tags = StudyTags(study_uid=uid(study))
    rng = np.random.default_rng(count)
    return [
        write_ct_instance(
            folder / f"{series}-{i:03d}.dcm",
            rng.normal(40.0, 5.0, (size, size)),
            study=tags,
            series_uid=uid(series),
            sop_uid=uid(f"{study}/{series}/{i}"),
            position_mm=(0.0, 0.0, 5.0 * i),
            instance_number=i + 1,
        )
        for i in range(count)
    ]


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling: str = "CT01",
    called: str = "STROKEFLOW",
    options: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send with DCMTK's storescu (``options`` e.g. ``["-xr"]`` to propose RLE)."""
    exe = need_tool("storescu")
    return subprocess.run(
        [exe, *options, "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def pynetdicom_store(
    port: int, files: Sequence[Path], *, calling: str = "CT01", sop_class: str = CTImageStorage
) -> list[int | None]:
    """Send encoded files unchanged over ONE association; the C-STORE status of each."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # stream the file's bytes, do not re-encode
    try:
        return _store(port, files, calling, sop_class)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _store(port: int, files: Sequence[Path], calling: str, sop_class: str) -> list[int | None]:
    ae = AE(ae_title=calling)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless):
        # One syntax per context: the files' own syntaxes are accepted, nothing converted.
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="STROKEFLOW")
    assert assoc.is_established, "association was not accepted"
    statuses: list[int | None] = []
    try:
        for path in files:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        assoc.release()
    return statuses


def wait_for(condition: Callable[[], object], timeout_s: float = 15.0, what: str = "") -> object:
    """Poll ``condition`` until truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what or condition}")


@dataclass
class Postgres:
    """A throw-away PostgreSQL server on a loopback port."""

    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server binary on PATH or in Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def fresh_postgres_database(server: Postgres) -> str:
    """Create an empty database on ``server`` and return its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(server.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.url(name)


PACS_AE = "ORTHANC"


@dataclass
class Orthanc:
    """A throw-away Orthanc: DICOM on ``dicom_port``, REST on ``http_port``."""

    binary: str
    config: Path
    dicom_port: int
    http_port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.config.parent / "orthanc.log").open("ab")
        self.process = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=log)
        wait_for(self._answers, 30, "Orthanc's REST API")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def _answers(self) -> bool:
        try:
            self.get("/system")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        binary = path.endswith(("/file", "/preview"))
        return body if binary else json.loads(body)

    @property
    def destination(self) -> str:
        return f"{PACS_AE}@127.0.0.1:{self.dicom_port}"
