"""``strokeflow user add|passwd|disable|enable|remove|admin|list``: local users of the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

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
    admin: Annotated[
        bool, typer.Option("--admin", help="May manage the other users on the dashboard.")
    ] = False,
) -> None:
    """Create a dashboard user (password hashed with scrypt)."""
    from strokeflow.web.accounts import UserError, add_user, record_action

    engine, sessions = _sessions(config)
    now = datetime.now(UTC)
    try:
        with sessions() as session, session.begin():
            add_user(session, username, password, now).is_admin = admin
            record_action(session, "cli", "user_add", now, target=f"user:{username}")
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(f"user {username} created")


PasswordOption = Annotated[
    str,
    typer.Option(
        prompt=True,
        confirmation_prompt=True,
        hide_input=True,
        envvar="STROKEFLOW_NEW_USER_PASSWORD",
        help="Asked for when not given (or $STROKEFLOW_NEW_USER_PASSWORD).",
    ),
]


def _change(config: Path | None, username: str, action: str, change: Any, done: str) -> None:
    """Apply ``change(session, now)`` to one user, audit it as ``action``, say ``done``."""
    from strokeflow.web.accounts import UserError, record_action

    engine, sessions = _sessions(config)
    now = datetime.now(UTC)
    try:
        with sessions() as session, session.begin():
            change(session, now)
            record_action(session, "cli", action, now, target=f"user:{username}")
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(done)


@user_app.command("passwd")
def passwd(
    username: Annotated[str, typer.Argument(help="Login name.")],
    config: ConfigOption = None,
    password: PasswordOption = "",
) -> None:
    """Set a new password; the user's open sessions end."""
    from strokeflow.web.accounts import set_password

    _change(
        config,
        username,
        "user_passwd",
        lambda session, now: set_password(session, username, password, now),
        f"password of {username} changed; its sessions ended",
    )


@user_app.command("disable")
def disable(
    username: Annotated[str, typer.Argument(help="Login name.")], config: ConfigOption = None
) -> None:
    """Stop a user from logging in; its open sessions end at once."""
    from strokeflow.web.accounts import set_disabled

    _change(
        config,
        username,
        "user_disable",
        lambda session, now: set_disabled(session, username, True, now),
        f"user {username} disabled; its sessions ended",
    )


@user_app.command("enable")
def enable(
    username: Annotated[str, typer.Argument(help="Login name.")], config: ConfigOption = None
) -> None:
    """Let a disabled user log in again."""
    from strokeflow.web.accounts import set_disabled

    _change(
        config,
        username,
        "user_enable",
        lambda session, now: set_disabled(session, username, False, now),
        f"user {username} enabled",
    )


@user_app.command("remove")
def remove(
    username: Annotated[str, typer.Argument(help="Login name.")], config: ConfigOption = None
) -> None:
    """Delete a user and its sessions (the audit log keeps its history)."""
    from strokeflow.web.accounts import remove_user

    _change(
        config,
        username,
        "user_remove",
        lambda session, _now: remove_user(session, username),
        f"user {username} removed",
    )


@user_app.command("admin")
def admin(
    username: Annotated[str, typer.Argument(help="Login name.")],
    config: ConfigOption = None,
    revoke: Annotated[bool, typer.Option("--revoke", help="Take the right away.")] = False,
) -> None:
    """Let a user manage the other users on the dashboard (or, with --revoke, no more)."""
    from strokeflow.web.accounts import set_admin

    _change(
        config,
        username,
        "user_admin_revoke" if revoke else "user_admin",
        lambda session, _now: set_admin(session, username, not revoke),
        f"user {username} {'is no administrator' if revoke else 'is an administrator'}",
    )


@user_app.command("list")
def list_(config: ConfigOption = None) -> None:
    """List dashboard users with their last login."""
    from strokeflow.web.accounts import list_users

    engine, sessions = _sessions(config)
    try:
        with sessions() as session:
            rows = [
                (
                    u.username + (" (admin)" if u.is_admin else ""),
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
