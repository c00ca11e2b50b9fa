"""The dashboard's options: its part of :class:`strokeflow.config.Settings`
(:meth:`WebOptions.from_settings`), or built directly in tests."""

from __future__ import annotations

from dataclasses import dataclass

from strokeflow.config import Settings


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
    def from_settings(cls, settings: Settings) -> WebOptions:
        """The dashboard's part of the one configuration (environment and TOML alike)."""
        return cls(
            webhook_url=settings.webhook_url or None,
            webhook_patient_data=settings.webhook_patient_data,
            webhook_max_attempts=settings.webhook_max_attempts,
            webhook_backoff_s=settings.webhook_backoff_s,
            public_url=settings.public_url.rstrip("/"),
            session_secret=settings.session_secret or None,
            secure_cookies=settings.secure_cookies,
            session_max_age_s=settings.session_max_age_s,
        )
