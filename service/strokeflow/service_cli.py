"""Service sub-commands: ``serve``, ``listener``, ``worker``, ``config``, ``complete``,
``echo``, ``send``, ``jobs``, ``job``, ``reanalyse``, ``resend``.

Mount them on the main command line with :func:`register` (or run this module).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from strokeflow.clihelp import show_flags_without_metavar
from strokeflow.config import Destination, RetryPolicy, Settings, load_settings
from strokeflow.logsetup import configure_logging
from strokeflow.ports import PortInUseError, check_free, dicom_listen_port, http_listen_port

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

show_flags_without_metavar()
app = typer.Typer(help="StrokeFlow service commands.", no_args_is_help=True, add_completion=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file (else $STROKEFLOW_CONFIG)."),
]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ValueError as exc:
        typer.echo(f"error: configuration: {exc}", err=True)
        raise typer.Exit(2) from exc


def _destination(text: str, settings: Settings) -> Destination:
    for known in settings.destinations:
        if text == known.ae_title:
            return known
    try:
        return Destination.parse(text)
    except ValueError as exc:
        typer.echo(f"error: {exc} (nor a configured destination's AE title)", err=True)
        raise typer.Exit(2) from exc


def listener(
    config: ConfigOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Receive DICOM (C-STORE, C-ECHO) and complete studies until stopped."""
    from strokeflow.queue.jobqueue import open_queue
    from strokeflow.receive.listener import run_listener
    from strokeflow.store.engine import make_engine, make_session_factory
    from strokeflow.worker.runner import enqueue_and_mark

    settings = _settings(config)
    _logging(verbose, settings)
    _exit_if_taken(settings, http=False)
    engine = make_engine(settings.effective_database_url)
    hook = enqueue_and_mark(open_queue(settings.effective_queue_url), make_session_factory(engine))
    try:
        run_listener(settings, on_queued=hook)
    except PortInUseError as exc:
        _port_error(exc)
    finally:
        engine.dispose()


def _logging(verbose: bool, settings: Settings) -> None:
    configure_logging(verbose=verbose, log_format=settings.log_format)


def _port_error(exc: PortInUseError) -> NoReturn:
    typer.echo(f"error: {exc.strerror}", err=True)
    raise typer.Exit(1) from None


def _exit_if_taken(settings: Settings, *, http: bool) -> None:
    """One line and exit 1 when a configured port is taken, before anything starts."""
    ports = [dicom_listen_port(settings)] + ([http_listen_port(settings)] if http else [])
    try:
        check_free(ports)
    except PortInUseError as exc:
        _port_error(exc)


VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Log at DEBUG: every image and DICOM message.")
]
#: The retry-policy flags of ``serve`` and ``worker``, declared once: each overrides one
#: key of the settings' ``[retry]`` section, and is left out (``None``) by default.
_RETRY_FLAGS = {
    "lease_s": (float, "Seconds a job is held without a heartbeat before re-queueing."),
    "max_attempts": (int, "Analysis attempts before a job fails."),
    "backoff_s": (float, "First retry delay of a failed job (s)."),
    "dispatch_backoff_s": (
        float,
        "First retry delay of a C-STORE to a destination that is down (s).",
    ),
}


_BUILT_IN = RetryPolicy()


def with_retry_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Add the :data:`_RETRY_FLAGS` to a command; it receives ``retry_flags`` (the ones set)."""
    own = inspect.signature(command, eval_str=True)
    flags = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                kind | None,
                typer.Option(
                    help=f"{text} Default: retry.{name} of the settings "
                    f"(built in: {getattr(_BUILT_IN, name)})."
                ),
            ],
        )
        for name, (kind, text) in _RETRY_FLAGS.items()
    ]
    params = [p for p in own.parameters.values() if p.name != "retry_flags"]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        given = {name: kwargs.pop(name) for name in _RETRY_FLAGS}
        command(**kwargs, retry_flags={k: v for k, v in given.items() if v is not None})

    wrapper.__signature__ = own.replace(parameters=params + flags)  # type: ignore[attr-defined]
    return wrapper


def _with_policy(settings: Settings, flags: dict[str, Any]) -> Settings:
    """The settings with the command-line retry flags over their ``[retry]`` section."""
    base = settings.retry
    if "backoff_s" in flags:
        # Keep the cap at least as large as the first delay.
        flags["backoff_max_s"] = max(base.backoff_max_s, flags["backoff_s"])
    if "dispatch_backoff_s" in flags:
        flags["dispatch_backoff_max_s"] = max(
            base.dispatch_backoff_max_s, flags["dispatch_backoff_s"]
        )
    try:
        policy = dataclasses.replace(base, **flags)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    return settings.model_copy(update={"retry": policy})


@with_retry_flags
def serve(
    config: ConfigOption = None,
    verbose: VerboseOption = False,
    *,
    retry_flags: dict[str, Any],
) -> None:
    """Listener, workers, dispatch and the web dashboard (HTTP port) in one command."""
    from strokeflow.web.server import start_web_server
    from strokeflow.worker.runner import run_serve

    settings = _with_policy(_settings(config), retry_flags)
    _exit_if_taken(settings, http=True)
    _logging(verbose, settings)
    try:
        run_serve(settings, start_http=start_web_server)
    except PortInUseError as exc:
        _port_error(exc)


@with_retry_flags
def worker(
    config: ConfigOption = None,
    verbose: VerboseOption = False,
    *,
    retry_flags: dict[str, Any],
) -> None:
    """Run analysis jobs from the queue (one process; start several for more)."""
    from strokeflow.worker.runner import run_worker

    settings = _with_policy(_settings(config), retry_flags)
    _logging(verbose, settings)
    run_worker(settings)


def show_config(config: ConfigOption = None) -> None:
    """Print the effective configuration as JSON (passwords masked)."""
    typer.echo(json.dumps(_settings(config).public_view(), indent=2))


def complete(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    config: ConfigOption = None,
) -> None:
    """Force a receiving study to complete now and queue its analysis job."""
    from strokeflow.store.engine import make_engine, make_session_factory
    from strokeflow.store.migrate import upgrade_to_head
    from strokeflow.store.studies import StudyStateError, force_complete, queue_complete

    settings = _settings(config)
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    now = datetime.now(UTC)
    try:
        with make_session_factory(engine)() as session, session.begin():
            force_complete(session, study_uid, now)
            jobs = [j for j in queue_complete(session, now) if j.study.study_uid == study_uid]
            summary = [(j.id, j.version, j.instance_count) for j in jobs]
    except StudyStateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    for job_id, version, count in summary:
        typer.echo(f"study {study_uid}: job {job_id} version {version} queued ({count} instances)")


def echo(
    destination: Annotated[str, typer.Argument(help="AE@host:port or a configured AE title.")],
    config: ConfigOption = None,
) -> None:
    """C-ECHO a DICOM peer."""
    from strokeflow.dicomnet.scu import DicomNetworkError
    from strokeflow.dicomnet.scu import echo as c_echo

    settings = _settings(config)
    dest = _destination(destination, settings)
    try:
        status = c_echo(dest, settings.ae_title)
    except DicomNetworkError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if status != 0:
        typer.echo(f"error: {dest} answered C-ECHO with status 0x{status:04X}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{dest}: C-ECHO ok")


def send(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders.")],
    to: Annotated[str, typer.Option("--to", help="AE@host:port or a configured AE title.")],
    config: ConfigOption = None,
) -> None:
    """C-STORE DICOM files to a peer, as they are (no transcoding)."""
    from strokeflow.dicomnet.scu import DicomNetworkError, dicom_files
    from strokeflow.dicomnet.scu import send as c_store

    settings = _settings(config)
    dest = _destination(to, settings)
    for path in paths:
        if not path.exists():
            typer.echo(f"error: {path} does not exist", err=True)
            raise typer.Exit(2)
    files = list(dicom_files(paths))
    if not files:
        typer.echo("error: no DICOM files found", err=True)
        raise typer.Exit(2)
    try:
        report = c_store(files, dest, settings.ae_title)
    except DicomNetworkError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for path, reason in report.failed:
        typer.echo(f"failed {path}: {reason}", err=True)
    typer.echo(f"sent {len(report.sent)} of {len(files)} files to {dest}")
    if report.failed:
        raise typer.Exit(1)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


#: Columns of `strokeflow jobs` (a header line, then one row per job).
_JOB_ROW = "{:>6}  {:<4}  {:<10}  {:>7}  {:>9}  {:<19}  {:<19}  {}"
_JOB_HEADER = _JOB_ROW.format(
    "JOB", "VER", "STATE", "ATTEMPT", "INSTANCES", "QUEUED", "FINISHED", "STUDY UID"
)


def jobs(
    config: ConfigOption = None,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List analysis jobs, newest first."""
    from strokeflow.store.engine import make_engine, make_session_factory
    from strokeflow.store.migrate import upgrade_to_head
    from strokeflow.store.models import JobState
    from strokeflow.store.repository import list_jobs

    settings = _settings(config)
    try:
        wanted = JobState(state) if state else None
    except ValueError as exc:
        choices = ", ".join(s.value for s in JobState)
        typer.echo(f"error: unknown state {state!r}; one of {choices}", err=True)
        raise typer.Exit(2) from exc
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    try:
        with make_session_factory(engine)() as session:
            rows = list_jobs(session, state=wanted, limit=limit)
            lines = []
            for job, study_uid in rows:
                if as_json:
                    lines.append(
                        json.dumps(
                            {
                                "id": job.id,
                                "study_uid": study_uid,
                                "version": job.version,
                                "state": job.state.value,
                                "attempts": job.attempts,
                                "instances": job.instance_count,
                                "queued_at": job.queued_at.isoformat() if job.queued_at else None,
                                "finished_at": job.finished_at.isoformat()
                                if job.finished_at
                                else None,
                                "core_ml": job.core_ml,
                                "tmax6_ml": job.tmax6_ml,
                                "error": job.error,
                            }
                        )
                    )
                else:
                    lines.append(
                        _JOB_ROW.format(
                            job.id,
                            f"v{job.version}",
                            job.state.value,
                            job.attempts,
                            job.instance_count,
                            _when(job.queued_at),
                            _when(job.finished_at),
                            study_uid,
                        )
                        + (f"  error: {job.error.splitlines()[0]}" if job.error else "")
                    )
    finally:
        engine.dispose()
    if not lines and not as_json:
        typer.echo("no jobs")
        return
    if not as_json:
        typer.echo(_JOB_HEADER)
    for line in lines:
        typer.echo(line)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def job(
    job_id: Annotated[int, typer.Argument(help="Job id (see `strokeflow jobs`).")],
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="As one JSON object.")] = False,
) -> None:
    """Show one job: state, attempts, stage times, volumes, and each result object's delivery."""
    from sqlalchemy import select

    from strokeflow.store.engine import make_engine, make_session_factory
    from strokeflow.store.migrate import upgrade_to_head
    from strokeflow.store.models import Dispatch, Job, Study

    settings = _settings(config)
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    try:
        with make_session_factory(engine)() as session:
            row = session.get(Job, job_id)
            if row is None:
                typer.echo(f"error: job {job_id} does not exist (see `strokeflow jobs`)", err=True)
                raise typer.Exit(1)
            study = session.get(Study, row.study_id)
            assert study is not None
            stages = [
                "first_instance_at",
                "last_instance_at",
                "completed_at",
                "queued_at",
                "started_at",
                "finished_at",
                "dispatched_at",
            ]
            info: dict[str, Any] = {
                "id": row.id,
                "study_uid": study.study_uid,
                "version": row.version,
                "state": row.state.value,
                "attempts": row.attempts,
                "worker": row.worker,
                "instances": row.instance_count,
                **{name: _iso(getattr(row, name)) for name in stages},
                "next_attempt_at": _iso(row.next_attempt_at),
                "lease_until": _iso(row.lease_until),
                "results_path": row.results_path,
                "core_ml": row.core_ml,
                "tmax6_ml": row.tmax6_ml,
                "tmax10_ml": row.tmax10_ml,
                "mismatch_ml": row.mismatch_ml,
                "mismatch_ratio": row.mismatch_ratio,
                "decisions": row.decisions,
                "error": row.error,
                "dispatches": [
                    {
                        "destination": d.destination,
                        "sop_instance_uid": d.sop_instance_uid,
                        "sop_class_uid": d.sop_class_uid,
                        "sent_sop_class_uid": d.sent_sop_class_uid,
                        "state": d.state.value,
                        "attempts": d.attempts,
                        "status": d.status,
                        "error": d.error,
                        "sent_at": _iso(d.sent_at),
                    }
                    for d in session.scalars(
                        select(Dispatch).where(Dispatch.job_id == job_id).order_by(Dispatch.id)
                    )
                ],
            }
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key != "dispatches" and value is not None:
            typer.echo(f"{key:>16}: {value}")
    for d in info["dispatches"]:
        status = "-" if d["status"] is None else f"0x{d['status']:04X}"
        typer.echo(
            f"  {d['state']:<8} {d['destination']}  {d['sop_instance_uid']}  "
            f"status {status}  attempts {d['attempts']}" + (f"  {d['error']}" if d["error"] else "")
        )


def _job_database(config: Path | None) -> tuple[Settings, Engine]:
    from strokeflow.store.engine import make_engine
    from strokeflow.store.migrate import upgrade_to_head

    settings = _settings(config)
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    return settings, engine


def reanalyse(
    job_id: Annotated[int, typer.Argument(help="Job id (see `strokeflow jobs`).")],
    config: ConfigOption = None,
) -> None:
    """Analyse a job again: new results (`resend` sends the existing ones again).

    A failed or cancelled job gets fresh attempts; a finished one runs as its next attempt.
    """
    from strokeflow.queue.jobqueue import open_queue
    from strokeflow.store.engine import make_session_factory
    from strokeflow.worker import reruns
    from strokeflow.worker.maintenance import mark_enqueued

    settings, engine = _job_database(config)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    try:
        with sessions() as session, session.begin():
            message = reruns.reanalyse(session, job_id, now)
        open_queue(settings.effective_queue_url).enqueue([job_id])
        with sessions() as session, session.begin():
            mark_enqueued(session, [job_id], now)
    except reruns.RerunError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(message)


def resend(
    job_id: Annotated[int, typer.Argument(help="Job id (see `strokeflow jobs`).")],
    config: ConfigOption = None,
    undelivered: Annotated[
        bool,
        typer.Option(
            "--undelivered", help="Only the objects not delivered yet (failed or pending)."
        ),
    ] = False,
) -> None:
    """Send a finished job's result objects again (the analysis is not run again).

    By default every object to every configured destination; the dispatch loop of a
    running `serve` or `worker` sends them.
    """
    from strokeflow.store.engine import make_session_factory
    from strokeflow.worker import reruns

    settings, engine = _job_database(config)
    try:
        with make_session_factory(engine)() as session, session.begin():
            message = reruns.resend(
                session,
                job_id,
                destinations=list(settings.destinations),
                data_dir=settings.data_dir,
                undelivered_only=undelivered,
            )
    except reruns.RerunError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(message)


def retry(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Removed: `reanalyse` analyses a job again, `resend` sends its results again."""
    typer.echo(
        f"error: `strokeflow retry` meant two things and was split: "
        f"`strokeflow reanalyse {job_id}` analyses the job again, "
        f"`strokeflow resend {job_id} --undelivered` sends what was not delivered",
        err=True,
    )
    raise typer.Exit(2)


def register(target: typer.Typer) -> None:
    """Add the service commands to another Typer app (the main ``strokeflow`` command)."""
    target.command("serve")(serve)
    target.command("listener")(listener)
    target.command("worker")(worker)
    target.command("config")(show_config)
    target.command("complete")(complete)
    target.command("echo")(echo)
    target.command("send")(send)
    target.command("jobs")(jobs)
    target.command("job")(job)
    target.command("reanalyse")(reanalyse)
    target.command("resend")(resend)
    target.command("retry", hidden=True)(retry)


register(app)

if __name__ == "__main__":
    app()
