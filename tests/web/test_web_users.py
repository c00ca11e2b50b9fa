"""Passwords and the `user add` / `user list` commands."""

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
