"""Listening ports: find out before anything starts whether the configured ones are free.

A second ``strokeflow serve`` on a host where one already runs must stop at once with one
line naming the port and the setting that moves it, not start workers against the first
instance's queue and die later in a traceback.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from strokeflow.config import Settings


class PortInUseError(OSError):
    """A configured listening port cannot be bound; the message names it and its setting."""


@dataclass(frozen=True)
class ListenPort:
    """One port the service listens on and the settings that choose it."""

    #: What listens there, e.g. "DICOM" or "HTTP".
    role: str
    host: str
    port: int
    #: The settings field (TOML key) of the port; the environment variable is derived.
    port_setting: str
    #: The settings field of the bind address.
    address_setting: str

    def refusal(self, exc: OSError) -> PortInUseError:
        """The one-line error for a failed bind of this port."""
        where = f"{self.host or '*'}:{self.port}"
        env = f"STROKEFLOW_{self.port_setting.upper()}"
        if exc.errno == errno.EADDRINUSE:
            return PortInUseError(
                exc.errno,
                f"{self.role} port {self.port} on {self.host or '*'} is already in use "
                f"(another StrokeFlow or another program?); choose another with {env} or "
                f"'{self.port_setting}' in the configuration file",
            )
        address_env = f"STROKEFLOW_{self.address_setting.upper()}"
        return PortInUseError(
            exc.errno,
            f"{self.role} cannot listen on {where}: {exc.strerror or exc}; check {env} / "
            f"{address_env} ('{self.port_setting}' / '{self.address_setting}' in the "
            "configuration file)",
        )


def check_free(ports: list[ListenPort]) -> None:
    """Bind and release every port once, without ``SO_REUSEPORT``.

    Without ``SO_REUSEPORT`` the test bind also fails against a running instance whose
    receivers share their port that way. ``SO_REUSEADDR`` is set as the real servers set
    it, so a port whose old connections linger in TIME_WAIT counts as free.

    Raises
    ------
    PortInUseError
        For the first port that cannot be bound (port 0 is always free).
    """
    for item in ports:
        if item.port == 0:
            continue
        try:
            bind_listening(item.host, item.port).close()
        except OSError as exc:
            raise item.refusal(exc) from exc


def bind_listening(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` is an IPv6 address).

    Raises
    ------
    OSError
        The bind failed (address in use, not an address of this host, ...).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def dicom_listen_port(settings: Settings) -> ListenPort:
    """The DICOM listener's port and the settings that choose it."""
    return ListenPort(
        "DICOM", settings.dicom_address, settings.dicom_port, "dicom_port", "dicom_bind_address"
    )


def http_listen_port(settings: Settings) -> ListenPort:
    """The dashboard's (or /health's) HTTP port and the settings that choose it."""
    return ListenPort(
        "HTTP", settings.http_address, settings.http_port, "http_port", "http_bind_address"
    )
