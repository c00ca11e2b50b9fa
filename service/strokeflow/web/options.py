"""Settings of the dashboard that ``strokeflow.config.Settings`` does not (yet) carry.

Read from ``STROKEFLOW_*`` environment variables by :meth:`WebOptions.from_env`, or built
directly (tests, the ``serve`` command).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class WebOptions:
    """Webhook, links and cookie settings.

    Attributes
    ----------
    webhook_url : str or None
        POST a JSON notification here when a result is ready or a job failed.
    webhook_patient_data : bool
        Include patient ID, accession number and Study UID in the notification.
    webhook_max_attempts : int
        Attempts per notification (the first one included).
    webhook_backoff_s : float
        Delay before the second attempt; doubles each time.
    public_url : str
        Base of the links in notifications, as users reach the dashboard (the proxy's URL).
    session_secret : str or None
        Key signing the session cookie; ``None``: a generated key in the data directory.
    secure_cookies : bool
        Mark the session cookie ``Secure`` (behind an HTTPS reverse proxy).
    session_max_age_s : int
        A login lasts this long.
    """

    webhook_url: str | None = None
    webhook_patient_data: bool = False
    webhook_max_attempts: int = 5
    webhook_backoff_s: float = 2.0
    public_url: str = "http://localhost:8080"
    session_secret: str | None = None
    secure_cookies: bool = False
    session_max_age_s: int = 12 * 3600

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebOptions:
        """Read ``STROKEFLOW_WEBHOOK_URL``, ``STROKEFLOW_WEBHOOK_PATIENT_DATA``,
        ``STROKEFLOW_WEBHOOK_MAX_ATTEMPTS``, ``STROKEFLOW_WEBHOOK_BACKOFF_S``,
        ``STROKEFLOW_PUBLIC_URL``, ``STROKEFLOW_SESSION_SECRET``,
        ``STROKEFLOW_SECURE_COOKIES``.

        Raises
        ------
        ValueError
            A number that does not parse, naming the variable.
        """
        env = os.environ if environ is None else environ
        defaults = cls()

        def number(name: str, default: float) -> float:
            text = env.get(name)
            if not text:
                return default
            try:
                return float(text)
            except ValueError as exc:
                raise ValueError(f"{name}={text!r} is not a number") from exc

        return cls(
            webhook_url=env.get("STROKEFLOW_WEBHOOK_URL") or None,
            webhook_patient_data=_flag(env.get("STROKEFLOW_WEBHOOK_PATIENT_DATA")),
            webhook_max_attempts=max(
                1, int(number("STROKEFLOW_WEBHOOK_MAX_ATTEMPTS", defaults.webhook_max_attempts))
            ),
            webhook_backoff_s=number("STROKEFLOW_WEBHOOK_BACKOFF_S", defaults.webhook_backoff_s),
            public_url=(env.get("STROKEFLOW_PUBLIC_URL") or defaults.public_url).rstrip("/"),
            session_secret=env.get("STROKEFLOW_SESSION_SECRET") or None,
            secure_cookies=_flag(env.get("STROKEFLOW_SECURE_COOKIES")),
        )
