"""The service's one settings object: environment variables ``STROKEFLOW_*`` and a TOML file.

Precedence, highest first: environment variables, the TOML file, the defaults. Lists
(destinations, allowed calling AE titles, allowed hosts) are comma-separated in the
environment and either a comma-separated string or an array in TOML::

    # strokeflow.toml
    ae_title = "STROKEFLOW"
    dicom_port = 11112
    http_bind_address = "127.0.0.1"   # dashboard behind a reverse proxy; DICOM on all
    destinations = ["PACS@10.0.0.5:104", "VIEWER@10.0.0.9:11112"]
    allowed_calling_aets = ["CT01", "CT02"]

    [retry]                           # leases and back-off (RetryPolicy)
    max_attempts = 3

    [analysis.ctp]                    # what every worker analyses with
    core_rcbf_threshold = 0.30
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from strokeflow.analysis.mri import MriSettings
from strokeflow.analysis.quality import MriQualityLimits, QualityLimits
from strokeflow.analysis.settings import CtpSettings
from strokeflow.logsetup import LogFormat
from strokeflow.settings_env import CONFIG_FILE_ENV, ENV_PREFIX


def _known_fields(cls: type, value: Any, section: str) -> Any:
    """Refuse keys that are not fields of the dataclass ``cls`` (typos must not pass)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"[{section}]: unknown keys {', '.join(unknown)}")
    return value


#: Keys of ``[analysis.mri]`` that are ``[analysis.mri.quality]`` keys since the MR quality
#: limits got their own dataclass (named in the error, so a site's file is fixed at once).
_MOVED_TO_MRI_QUALITY = {"max_frame_motion_mm", "min_dsc_snr", "min_baseline_frames"}


class AnalysisSection(BaseModel):
    """``[analysis.ctp]`` and ``[analysis.mri]``: the analysis every worker runs.

    The keys are the fields of :class:`~strokeflow.analysis.settings.CtpSettings` and
    :class:`~strokeflow.analysis.mri.MriSettings` (e.g. ``core_rcbf_threshold``,
    ``adc_core_threshold_um2_s``; the quality limits in ``[analysis.ctp.quality]`` and
    ``[analysis.mri.quality]``, :class:`~strokeflow.analysis.quality.QualityLimits` and
    :class:`~strokeflow.analysis.quality.MriQualityLimits`), with the same published defaults;
    ``STROKEFLOW_ANALYSIS__CTP__CORE_RCBF_THRESHOLD=0.3`` sets one from the environment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ctp: CtpSettings = Field(default_factory=CtpSettings)
    mri: MriSettings = Field(default_factory=MriSettings)

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            ctp = value.get("ctp")
            if isinstance(ctp, dict):
                _known_fields(QualityLimits, ctp.get("quality"), "analysis.ctp.quality")
            _known_fields(CtpSettings, ctp, "analysis.ctp")
            mri = value.get("mri")
            if isinstance(mri, dict):
                moved = sorted(set(mri) & _MOVED_TO_MRI_QUALITY)
                if moved:
                    raise ValueError(
                        f"[analysis.mri]: {', '.join(moved)} moved to [analysis.mri.quality]"
                    )
                _known_fields(MriQualityLimits, mri.get("quality"), "analysis.mri.quality")
            _known_fields(MriSettings, mri, "analysis.mri")
        return value


@dataclass(frozen=True)
class RetryPolicy:
    """How long a worker holds a job without a heartbeat, and how failures are retried.

    The ``[retry]`` section of the settings (``STROKEFLOW_RETRY__MAX_ATTEMPTS=5`` from the
    environment); every process, workers included, runs with the same one.

    Attributes
    ----------
    lease_s : float
        A running job whose worker has not renewed its lease for this long is re-queued.
        The worker renews it every ``lease_s / 3``.
    max_attempts : int
        Analysis attempts (worker deaths included) before a job is marked failed.
    backoff_s, backoff_max_s : float
        Delay before retry n is ``backoff_s * 2 ** (n - 1)``, at most ``backoff_max_s``.
    dispatch_max_attempts : int
        C-STORE attempts per object and destination before it is marked failed.
    dispatch_backoff_s, dispatch_backoff_max_s : float
        Back-off of dispatch retries while a destination is down, as above.
    requeue_after_s : float
        A queued job whose message has waited this long is enqueued again (lost message).
    """

    lease_s: float = 60.0
    max_attempts: int = 3
    backoff_s: float = 30.0
    backoff_max_s: float = 600.0
    dispatch_max_attempts: int = 20
    dispatch_backoff_s: float = 10.0
    dispatch_backoff_max_s: float = 600.0
    requeue_after_s: float = 600.0

    def __post_init__(self) -> None:
        if self.lease_s <= 0 or self.backoff_s < 0 or self.dispatch_backoff_s < 0:
            raise ValueError("lease and back-off times must be positive")
        if self.max_attempts < 1 or self.dispatch_max_attempts < 1:
            raise ValueError("at least one attempt is needed")

    def job_delay_s(self, attempts: int) -> float:
        """Back-off before the next analysis attempt after ``attempts`` failed ones."""
        return min(self.backoff_s * 2 ** max(attempts - 1, 0), self.backoff_max_s)

    def dispatch_delay_s(self, attempts: int) -> float:
        """Back-off before the next C-STORE attempt after ``attempts`` failed ones."""
        return min(self.dispatch_backoff_s * 2 ** max(attempts - 1, 0), self.dispatch_backoff_max_s)


_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII, no backslash
_DESTINATION = re.compile(
    r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d+)$"
)


def validate_ae_title(value: str) -> str:
    """Return ``value`` stripped if it is a valid DICOM AE title.

    Raises
    ------
    ValueError
        Empty, longer than 16 characters, or with control characters / backslash.
    """
    title = value.strip()
    if not _AE_TITLE.match(title):
        raise ValueError(
            f"AE title {value!r} is invalid: 1 to 16 printable ASCII characters, no backslash"
        )
    return title


@dataclass(frozen=True)
class Destination:
    """A DICOM peer written ``AE@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AE@host:port`` (IPv6 hosts in brackets: ``AE@[::1]:104``).

        Raises
        ------
        ValueError
            The text is not of that form or the port is out of range.
        """
        match = _DESTINATION.match(text.strip())
        if not match:
            raise ValueError(f"destination {text!r} is not of the form AE@host:port")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ValueError(f"destination {text!r}: port {port} is out of range 1-65535")
        return cls(validate_ae_title(match["ae"]), match["host"].strip("[]"), port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Effective configuration of one StrokeFlow installation.

    Build it with :func:`load_settings` (reads the TOML file), or directly for tests.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    ae_title: str = "STROKEFLOW"
    dicom_port: int = Field(11112, ge=0, le=65535)
    http_port: int = Field(8080, ge=0, le=65535)
    #: Address the DICOM and HTTP listeners bind to ("" or "0.0.0.0": every interface),
    #: unless ``dicom_bind_address`` / ``http_bind_address`` say otherwise.
    bind_address: str = "0.0.0.0"
    #: Address of the DICOM listener; ``None``: ``bind_address``.
    dicom_bind_address: str | None = None
    #: Address of the dashboard, API and /health (e.g. "127.0.0.1" behind a reverse proxy);
    #: ``None``: ``bind_address``.
    http_bind_address: str | None = None
    data_dir: Path = Path("./strokeflow-data")
    #: SQLAlchemy URL; ``None`` means SQLite ``<data_dir>/strokeflow.sqlite``.
    database_url: str | None = None
    #: Task queue; ``None`` means the embedded SQLite huey queue ``<data_dir>/queue.sqlite``.
    queue_url: str | None = None
    destinations: Annotated[list[Destination], NoDecode] = Field(default_factory=list)
    #: Calling AE titles accepted; empty accepts any.
    allowed_calling_aets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Peer IP addresses accepted; empty accepts any.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: A released study with no new instance for this long is complete.
    quiet_period_s: float = Field(10.0, gt=0)
    #: A study with no new instance for this long is complete even if never released.
    quiet_timeout_s: float = Field(300.0, gt=0)
    #: A released study whose own counts (Number of Temporal Positions, Images in
    #: Acquisition, Number of Series Related Instances) say it is whole completes at once,
    #: without the quiet period. Off for senders that send one study's series on
    #: associations far apart: a series after the completion makes a new job version.
    complete_when_whole: bool = True
    worker_count: int = Field(2, ge=1)
    #: Receiving processes sharing the DICOM port (one listening socket, each connection
    #: to the least busy); more when one is GIL-bound.
    receiver_processes: int = Field(1, ge=1, le=64)
    #: Simultaneous associations per receiving process.
    max_associations: int = Field(16, ge=1)
    #: Simultaneous connections from one peer IP address per receiving process; more are
    #: closed at once, so that one peer cannot take every association from the others.
    max_associations_per_host: int = Field(8, ge=1)
    #: A connection that has not started its A-ASSOCIATE-RQ (nor finished its TLS handshake)
    #: this long after connecting is closed (the ACSE timeout).
    association_request_timeout_s: float = Field(5.0, gt=0)
    #: An association that sends nothing for this long is aborted; no read or write may
    #: stall longer either (the network timeout).
    idle_association_timeout_s: float = Field(60.0, gt=0)
    #: Largest P-DATA-TF PDU accepted, advertised as our maximum length; a PDU declaring more
    #: (beyond its 6-byte PDV header) is refused from its header and the association aborted.
    max_pdu_receive_bytes: int = Field(1 << 20, ge=4096, le=(1 << 32) - 1)
    #: Largest data set one C-STORE may carry (pynetdicom assembles it in memory, so this
    #: bounds memory per association); a larger one aborts the association as it arrives.
    max_dataset_bytes: int = Field(1 << 30, ge=1 << 20)
    #: Associations are refused while the data directory has less free space than this.
    min_free_disk_mb: float = Field(1024.0, ge=0)
    #: Send the result pages (Secondary Capture) RLE Lossless to destinations that accept
    #: it (about a fifth of the size); off: always as written (uncompressed).
    compress_pages: bool = True
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    #: CA bundle to verify client certificates; ``None`` does not ask for one.
    tls_ca: Path | None = None
    #: Dashboard: POST a JSON notification here when a result is ready or a job failed.
    webhook_url: str | None = None
    #: Include patient ID, accession number and Study UID in the notification.
    webhook_patient_data: bool = False
    #: Attempts per notification (the first one included).
    webhook_max_attempts: int = Field(5, ge=1)
    #: Delay before a notification's second attempt; doubles each time.
    webhook_backoff_s: float = Field(2.0, ge=0)
    #: Base of the links in notifications, as users reach the dashboard (the proxy's URL).
    public_url: str = "http://localhost:8080"
    #: Key signing the session cookie; ``None``: one generated in the data directory.
    session_secret: str | None = None
    #: Mark the session cookie ``Secure`` (behind an HTTPS reverse proxy).
    secure_cookies: bool = False
    #: A login lasts this long (s).
    session_max_age_s: int = Field(12 * 3600, ge=60)
    #: Leases and back-off of jobs and dispatches (``[retry]`` in TOML).
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    #: What every worker analyses with (``[analysis.ctp]``, ``[analysis.mri]`` in TOML).
    analysis: AnalysisSection = Field(default_factory=AnalysisSection)
    #: Log lines as plain text or one JSON object per line (for log shippers).
    log_format: LogFormat = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Values passed in code win over the environment; no .env or secrets files.
        return init_settings, env_settings

    @field_validator("retry", mode="before")
    @classmethod
    def _retry_keys(cls, value: Any) -> Any:
        return _known_fields(RetryPolicy, value, "retry")

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("destinations", mode="before")
    @classmethod
    def _destinations(cls, value: Any) -> Any:
        items = _split(value)
        if isinstance(items, list):
            return [Destination.parse(v) if isinstance(v, str) else v for v in items]
        return items

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _calling_aets(cls, value: Any) -> Any:
        items = _split(value)
        if isinstance(items, list):
            return [validate_ae_title(v) for v in items]
        return items

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        return _split(value)

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'strokeflow.sqlite').resolve()}"

    @property
    def effective_queue_url(self) -> str:
        """The queue URL, defaulting to the embedded SQLite huey queue in the data directory."""
        if self.queue_url:
            return self.queue_url
        return f"sqlite:///{(self.data_dir / 'queue.sqlite').resolve()}"

    @property
    def dicom_address(self) -> str:
        """The address the DICOM listener binds to."""
        return self.bind_address if self.dicom_bind_address is None else self.dicom_bind_address

    @property
    def http_address(self) -> str:
        """The address the HTTP server (dashboard, API, /health) binds to."""
        return self.bind_address if self.http_bind_address is None else self.http_bind_address

    @property
    def tls_enabled(self) -> bool:
        """Whether the DICOM listener speaks TLS."""
        return self.tls_certificate is not None

    def public_view(self) -> dict[str, Any]:
        """The effective configuration as plain values, with passwords in URLs masked."""
        return {
            "ae_title": self.ae_title,
            "dicom_port": self.dicom_port,
            "http_port": self.http_port,
            "bind_address": self.bind_address,
            "dicom_bind_address": self.dicom_address,
            "http_bind_address": self.http_address,
            "data_dir": str(self.data_dir.resolve()),
            "database_url": mask_url_password(self.effective_database_url),
            "queue_url": mask_url_password(self.effective_queue_url),
            "destinations": [str(d) for d in self.destinations],
            "allowed_calling_aets": list(self.allowed_calling_aets),
            "allowed_hosts": list(self.allowed_hosts),
            "quiet_period_s": self.quiet_period_s,
            "quiet_timeout_s": self.quiet_timeout_s,
            "complete_when_whole": self.complete_when_whole,
            "worker_count": self.worker_count,
            "receiver_processes": self.receiver_processes,
            "max_associations": self.max_associations,
            "max_associations_per_host": self.max_associations_per_host,
            "association_request_timeout_s": self.association_request_timeout_s,
            "idle_association_timeout_s": self.idle_association_timeout_s,
            "max_pdu_receive_bytes": self.max_pdu_receive_bytes,
            "max_dataset_bytes": self.max_dataset_bytes,
            "min_free_disk_mb": self.min_free_disk_mb,
            "compress_pages": self.compress_pages,
            "tls_certificate": str(self.tls_certificate) if self.tls_certificate else None,
            "tls_key": str(self.tls_key) if self.tls_key else None,
            "tls_ca": str(self.tls_ca) if self.tls_ca else None,
            "retry": dataclasses.asdict(self.retry),
            "analysis": {
                "ctp": dataclasses.asdict(self.analysis.ctp),
                "mri": dataclasses.asdict(self.analysis.mri),
            },
            "webhook_url": mask_url_password(self.webhook_url) if self.webhook_url else None,
            "webhook_patient_data": self.webhook_patient_data,
            "webhook_max_attempts": self.webhook_max_attempts,
            "webhook_backoff_s": self.webhook_backoff_s,
            "public_url": self.public_url,
            "session_secret": "***" if self.session_secret else None,
            "secure_cookies": self.secure_cookies,
            "session_max_age_s": self.session_max_age_s,
            "log_format": self.log_format,
        }


def mask_url_password(url: str) -> str:
    """Replace the password of a URL (``scheme://user:pw@host``) with ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _FileValues(PydanticBaseSettingsSource):
    """Values read from the TOML file, below the environment in precedence."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the configuration: defaults < TOML file < ``STROKEFLOW_*`` variables < overrides.

    Parameters
    ----------
    config_file : Path, optional
        TOML file; defaults to ``$STROKEFLOW_CONFIG`` when set, else no file.
    **overrides
        Values that win over everything (command-line options).

    Returns
    -------
    Settings

    Raises
    ------
    ValueError
        The file is missing or not valid TOML, or a value is invalid (pydantic's
        ``ValidationError`` is a ``ValueError`` naming the field).
    """
    if config_file is None and os.environ.get(CONFIG_FILE_ENV):
        config_file = Path(os.environ[CONFIG_FILE_ENV])
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ValueError(f"configuration file {config_file} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"configuration file {config_file} is not valid TOML: {exc}") from exc
        unknown = sorted(set(values) - set(Settings.model_fields))
        if unknown:
            raise ValueError(f"configuration file {config_file}: unknown keys {', '.join(unknown)}")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, env_settings, _FileValues(settings_cls, values)

    loaded = _FromFile(**overrides)
    # Hand back the plain class (picklable, comparable); the values are already validated.
    return Settings.model_construct(
        **{name: getattr(loaded, name) for name in Settings.model_fields}
    )
