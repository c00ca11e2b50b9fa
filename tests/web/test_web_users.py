"""Passwords and the `user add|passwd|disable|enable|remove|list` commands."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from strokeflow.web.cli import register
from strokeflow.web.passwords import hash_password, verify_password


def test_password_hash_is_salted_and_verifies() -> None:
    first, second = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert first != second and first.startswith("scrypt$")
    assert verify_password("s3cret-pass", first) and verify_password("s3cret-pass", second)
    assert not verify_password("s3cret-pasS", first)
    assert not verify_password("s3cret-pass", "garbage")


def test_user_add_then_list_then_duplicate_refused(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps "user" a sub-command
    env = {"STROKEFLOW_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    added = runner.invoke(
        app, ["user", "add", "bob"], input="longpassword\nlongpassword\n", env=env
    )
    assert added.exit_code == 0, added.output
    assert "user bob created" in added.output
    listed = runner.invoke(app, ["user", "list"], env=env)
    assert "bob" in listed.output and "never" in listed.output
    again = runner.invoke(app, ["user", "add", "bob", "--password", "otherpassword"], env=env)
    assert again.exit_code == 1 and "already exists" in again.output
    short = runner.invoke(app, ["user", "add", "carol", "--password", "short"], env=env)
    assert short.exit_code == 1 and "at least 8" in short.output


def test_user_passwd_disable_enable_remove(tmp_path: Path) -> None:
    from strokeflow.config import Settings
    from strokeflow.store.engine import make_engine, make_session_factory
    from strokeflow.web.accounts import authenticate

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    env = {"STROKEFLOW_DATA_DIR": str(tmp_path)}
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["user", *args], env=env)
        return result.exit_code, result.output

    def can_log_in(password: str) -> bool:
        engine = make_engine(Settings(data_dir=tmp_path).effective_database_url)
        try:
            with make_session_factory(engine)() as session:
                return authenticate(session, "bob", password) is not None
        finally:
            engine.dispose()

    assert run("add", "bob", "--password", "first-password")[0] == 0
    code, output = run("passwd", "bob", "--password", "second-password")
    assert code == 0 and "sessions ended" in output
    assert can_log_in("second-password") and not can_log_in("first-password")
    assert run("disable", "bob")[0] == 0 and not can_log_in("second-password")
    assert "disabled" in run("list")[1]
    assert run("enable", "bob")[0] == 0 and can_log_in("second-password")
    assert run("passwd", "bob", "--password", "short")[0] == 1
    assert run("remove", "bob")[0] == 0 and not can_log_in("second-password")
    code, output = run("disable", "nobody")
    assert code == 1 and "no user 'nobody'" in output
