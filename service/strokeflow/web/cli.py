"""``strokeflow user add`` / ``strokeflow user list``: local users of the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from strokeflow.config import load_settings

user_app = typer.Typer(help="Dashboard users.", no_args_is_help=True, add_completion=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file (else $STROKEFLOW_CONFIG)."),
]


def _sessions(config: Path | None):  # type: ignore[no-untyped-def]
    from strokeflow.store.engine import make_engine, make_session_factory
    from strokeflow.store.migrate import upgrade_to_head

    try:
        settings = load_settings(config)
    except ValueError as exc:
        typer.echo(f"error: configuration: {exc}", err=True)
        raise typer.Exit(2) from exc
    engine = make_engine(settings.effective_database_url)
    upgrade_to_head(engine)
    return engine, make_session_factory(engine)


@user_app.command("add")
def add(
    username: Annotated[str, typer.Argument(help="Login name.")],
    config: ConfigOption = None,
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            confirmation_prompt=True,
            hide_input=True,
            envvar="STROKEFLOW_NEW_USER_PASSWORD",
            help="Asked for when not given (or $STROKEFLOW_NEW_USER_PASSWORD).",
        ),
    ] = "",
) -> None:
    """Create a dashboard user (password hashed with scrypt)."""
    from strokeflow.web.accounts import UserError, add_user, record_action

    engine, sessions = _sessions(config)
    now = datetime.now(UTC)
    try:
        with sessions() as session, session.begin():
            add_user(session, username, password, now)
            record_action(session, "cli", "user_add", now, target=f"user:{username}")
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(f"user {username} created")


@user_app.command("list")
def list_(config: ConfigOption = None) -> None:
    """List dashboard users with their last login."""
    from strokeflow.web.accounts import list_users

    engine, sessions = _sessions(config)
    try:
        with sessions() as session:
            rows = [
                (
                    u.username,
                    "disabled" if u.disabled else "enabled",
                    u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never",
                )
                for u in list_users(session)
            ]
    finally:
        engine.dispose()
    if not rows:
        typer.echo("no users; create one with `strokeflow user add NAME`")
    for name, state, last in rows:
        typer.echo(f"{name:<24} {state:<9} last login {last}")


def register(target: typer.Typer) -> None:
    """Add ``user add`` / ``user list`` to another Typer app (the main ``strokeflow``)."""
    target.add_typer(user_app, name="user")
