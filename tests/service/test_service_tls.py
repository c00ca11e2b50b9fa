"""The listener over TLS, with DCMTK's storescu as the peer and client certificates."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from servicekit import storescu
from sqlalchemy import func, select

from strokeflow.store.models import Instance
from tools import require_tool


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A throw-away key and self-signed certificate for ``CN=name``."""
    openssl = require_tool("openssl", "openssl")
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


@pytest.fixture
def tls_listener(make_listener: Callable[..., Any], tmp_path: Path) -> tuple[Any, Path]:
    certs = tmp_path / "certs"
    certs.mkdir()
    server_key, server_cert = _self_signed(certs, "strokeflow")
    _self_signed(certs, "ct01")
    listener = make_listener(
        tls_certificate=server_cert, tls_key=server_key, tls_ca=certs / "ct01.crt"
    )
    return listener, certs


def _instances(listener: Any) -> int:
    with listener.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def test_a_client_with_a_trusted_certificate_stores_over_tls(
    tls_listener: tuple[Any, Path], ct_files: list[Path]
) -> None:
    listener, certs = tls_listener
    tls = [
        "+tls",
        str(certs / "ct01.key"),
        str(certs / "ct01.crt"),
        "+cf",
        str(certs / "strokeflow.crt"),
    ]
    sent = storescu(listener.port, ct_files, options=tls)
    assert sent.returncode == 0, sent.stderr
    assert _instances(listener) == len(ct_files)


def test_plain_tcp_and_unknown_client_certificates_are_refused(
    tls_listener: tuple[Any, Path], ct_files: list[Path], tmp_path: Path
) -> None:
    listener, certs = tls_listener
    plain = storescu(listener.port, ct_files[:1])
    assert plain.returncode != 0
    stranger_key, stranger_cert = _self_signed(tmp_path, "stranger")
    tls = ["+tls", str(stranger_key), str(stranger_cert), "+cf", str(certs / "strokeflow.crt")]
    stranger = storescu(listener.port, ct_files[:1], options=tls)
    assert stranger.returncode != 0
    assert _instances(listener) == 0
    # The listener keeps serving the trusted client after both.
    trusted = [
        "+tls",
        str(certs / "ct01.key"),
        str(certs / "ct01.crt"),
        "+cf",
        str(certs / "strokeflow.crt"),
    ]
    assert storescu(listener.port, ct_files[:1], options=trusted).returncode == 0
    assert _instances(listener) == 1
