"""The one logging set-up of every StrokeFlow process, with job, study and stage on each line.

The context travels in a :mod:`contextvars` variable, so a worker sets the job id once
(``with log_context(job_id=7, study_uid=...)``) and every line logged below it, by the
analysis library too, carries it; a nested ``log_context(stage="dispatch")`` adds the stage.
Threads start with an empty context: hand one over with ``contextvars.copy_context().run``.
pynetdicom runs each association in a thread of its own that we do not start; its lines take
the context of the job this process is running (a worker process runs one job at a time).

Only identifiers that are not patient data go into the context (job id, study and series
instance UIDs, stage names). Libraries that read and write DICOM quote element values in
their warnings (pydicom: "Invalid value for VR PN: 'DOE^JOHN'", highdicom: 'The string
"DOE" is unlikely to represent ...'): warnings are captured into logging, and every quoted
value in the lines of those libraries is replaced by ``'…'`` before it is written.

At INFO a study through the service is a handful of lines (the association's summary,
completion, the job, the delivery); what happens per image (pynetdicom's "Received Store
Request", highdicom's attribute copies, each stored instance) is at DEBUG, and the
libraries in :data:`CHATTY_LOGGERS` log at WARNING unless ``verbose``.

Lines are text by default, or one JSON object per line for log shippers
(``log_format = "json"``).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Literal

#: Context fields, in the order they are written.
CONTEXT_FIELDS = ("job_id", "study_uid", "stage")

LogFormat = Literal["text", "json"]

_CONTEXT: ContextVar[dict[str, str]] = ContextVar("strokeflow_log_context")
#: Libraries that narrate every DIMSE message, attribute or task at INFO.
CHATTY_LOGGERS = ("pynetdicom", "highdicom", "alembic", "huey")
#: Loggers whose lines may quote DICOM element values: captured warnings, the DICOM
#: libraries' own loggers, and ours that report what a received or read file held.
_VALUE_QUOTING_LOGGERS = (
    "py.warnings",
    "pydicom",
    "highdicom",
    "pynetdicom",
    "strokeflow.receive",
    "strokeflow.assemble",
)
_QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'|b?\"(?:[^\"\\]|\\.)*\"")
#: Loggers of libraries whose threads we do not start (see the module docstring).
_LIBRARY_THREAD_LOGGERS = ("pynetdicom",)
#: The context of the job this process runs, for those threads only.
_job_context: dict[str, str] = {}
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s%(context)s: %(message)s"


@contextmanager
def log_context(
    *, job_id: int | None = None, study_uid: str | None = None, stage: str | None = None
) -> Iterator[None]:
    """Add fields to the log context of every line logged inside the ``with`` block.

    Parameters
    ----------
    job_id, study_uid, stage : optional
        Fields left ``None`` keep the value of an enclosing context.
    """
    given = {"job_id": job_id, "study_uid": study_uid, "stage": stage}
    fields = {**_CONTEXT.get({}), **{k: str(v) for k, v in given.items() if v is not None}}
    token = _CONTEXT.set(fields)
    global _job_context
    outer, _job_context = _job_context, fields if "job_id" in fields else _job_context
    try:
        yield
    finally:
        _job_context = outer
        _CONTEXT.reset(token)


def current_context() -> dict[str, str]:
    """The fields of the log context in force here (a copy)."""
    return dict(_CONTEXT.get({}))


class ContextFilter(logging.Filter):
    """Puts the context fields on each record (``record.job_id`` ..., ``record.context``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _CONTEXT.get({})
        if not fields and record.name.startswith(_LIBRARY_THREAD_LOGGERS):
            fields = _job_context
        for name in CONTEXT_FIELDS:
            setattr(record, name, fields.get(name))
        text = " ".join(f"{name}={fields[name]}" for name in CONTEXT_FIELDS if name in fields)
        record.context = f" [{text}]" if text else ""
        return True


def scrub_values(text: str) -> str:
    """``text`` with every quoted value (``'…'``, ``"…"``, ``b'…'``) replaced by ``'…'``."""
    return _QUOTED.sub("'…'", text)


def _scrubbed(record: logging.LogRecord) -> logging.LogRecord:
    """``record``, or a copy with the quoted values of its message replaced.

    A copy, because the record is shared by every handler of the process (a test's log
    capture, a second handler a site adds): only this set-up's lines are scrubbed.
    """
    if not record.name.startswith(_VALUE_QUOTING_LOGGERS):
        return record
    scrubbed = copy.copy(record)
    scrubbed.msg, scrubbed.args = scrub_values(record.getMessage()), None
    return scrubbed


class TextFormatter(logging.Formatter):
    """Plain lines with the context fields; quoted values of value-quoting loggers scrubbed."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(_scrubbed(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, process, logger, message, context fields."""

    def format(self, record: logging.LogRecord) -> str:
        record = _scrubbed(record)
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": record.processName,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _StandardErrorHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is emitted.

    A handler bound to the stream of the moment keeps writing to it after it is replaced
    and closed (a command run inside a test harness, a daemon that re-opens its standard
    error), and every later line then fails with a logging error.
    """

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        """The stream is always the current standard error."""


def configure_logging(
    *, verbose: bool = False, log_format: LogFormat = "text", stream: IO[str] | None = None
) -> logging.Handler:
    """Set up the root logger of this process (again: a second call replaces the first).

    Parameters
    ----------
    verbose : bool
        DEBUG instead of INFO.
    log_format : {"text", "json"}
        Plain lines, or one JSON object per line.
    stream : file-like, optional
        Where lines go; standard error when omitted.

    Returns
    -------
    logging.Handler
        The handler installed on the root logger.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "strokeflow", False)]:
        root.removeHandler(old)
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StandardErrorHandler()
    )
    handler.strokeflow = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Library warnings become log lines, so that the filters above see them too.
    logging.captureWarnings(True)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    return handler
