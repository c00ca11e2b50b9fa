"""The settings object: defaults, environment, TOML file, validation, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from strokeflow.config import Destination, Settings, load_settings, mask_url_password


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert (settings.ae_title, settings.dicom_port, settings.http_port) == (
        "STROKEFLOW",
        11112,
        8080,
    )
    assert settings.data_dir == Path("strokeflow-data")
    assert (
        settings.effective_database_url == f"sqlite:///{tmp_path}/strokeflow-data/strokeflow.sqlite"
    )
    assert settings.effective_queue_url == f"sqlite:///{tmp_path}/strokeflow-data/queue.sqlite"
    assert settings.destinations == [] and settings.allowed_calling_aets == []
    assert not settings.tls_enabled


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROKEFLOW_AE_TITLE", "SF_TEST")
    monkeypatch.setenv("STROKEFLOW_DICOM_PORT", "4242")
    monkeypatch.setenv("STROKEFLOW_HTTP_PORT", "8081")
    monkeypatch.setenv("STROKEFLOW_DATA_DIR", "/srv/sf")
    monkeypatch.setenv("STROKEFLOW_DATABASE_URL", "postgresql+psycopg://sf:pw@db/sf")
    monkeypatch.setenv("STROKEFLOW_QUEUE_URL", "redis://queue:6379/0")
    monkeypatch.setenv("STROKEFLOW_DESTINATIONS", "PACS@10.0.0.5:104, VIEW@[::1]:11112")
    monkeypatch.setenv("STROKEFLOW_ALLOWED_CALLING_AETS", "CT01,CT02")
    settings = load_settings()
    assert settings.ae_title == "SF_TEST"
    assert (settings.dicom_port, settings.http_port) == (4242, 8081)
    assert settings.data_dir == Path("/srv/sf")
    assert settings.effective_database_url == "postgresql+psycopg://sf:pw@db/sf"
    assert settings.effective_queue_url == "redis://queue:6379/0"
    assert settings.destinations == [
        Destination("PACS", "10.0.0.5", 104),
        Destination("VIEW", "::1", 11112),
    ]
    assert str(settings.destinations[1]) == "VIEW@[::1]:11112"
    assert settings.allowed_calling_aets == ["CT01", "CT02"]


def test_empty_allow_list_accepts_any(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROKEFLOW_ALLOWED_CALLING_AETS", "")
    assert load_settings().allowed_calling_aets == []


def test_toml_file_then_environment_then_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "strokeflow.toml"
    config.write_text(
        'ae_title = "FROM_FILE"\ndicom_port = 2000\nquiet_period_s = 5\n'
        'destinations = ["A@h1:1", "B@h2:2"]\nallowed_hosts = "10.0.0.1, 10.0.0.2"\n'
    )
    monkeypatch.setenv("STROKEFLOW_DICOM_PORT", "3000")
    settings = load_settings(config)
    assert settings.ae_title == "FROM_FILE"
    assert settings.dicom_port == 3000  # the environment wins over the file
    assert settings.quiet_period_s == 5.0
    assert [str(d) for d in settings.destinations] == ["A@h1:1", "B@h2:2"]
    assert settings.allowed_hosts == ["10.0.0.1", "10.0.0.2"]
    assert load_settings(config, dicom_port=4000).dicom_port == 4000  # the command line wins
    monkeypatch.setenv("STROKEFLOW_CONFIG", str(config))
    assert load_settings().ae_title == "FROM_FILE"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STROKEFLOW_DESTINATIONS", "PACS-10.0.0.5-104", "not of the form AE@host:port"),
        ("STROKEFLOW_DESTINATIONS", "PACS@host:70000", "port 70000 is out of range"),
        ("STROKEFLOW_AE_TITLE", "A_TITLE_LONGER_THAN_16", "1 to 16 printable ASCII"),
        ("STROKEFLOW_DICOM_PORT", "-1", "dicom_port"),
    ],
)
def test_invalid_values_are_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=message):
        load_settings()


def test_bad_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("ae_title = ")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_settings(broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("ae_titel = 'X'\n")
    with pytest.raises(ValueError, match="ae_titel"):
        load_settings(unknown)


def test_public_view_masks_passwords() -> None:
    settings = Settings(
        database_url="postgresql+psycopg://sf:s3cret@db:5432/sf", queue_url="redis://:pw@q:6379/0"
    )
    view = settings.public_view()
    assert view["database_url"] == "postgresql+psycopg://sf:***@db:5432/sf"
    assert view["queue_url"] == "redis://:***@q:6379/0"
    assert "s3cret" not in str(view)
    assert mask_url_password("sqlite:////x/y.sqlite") == "sqlite:////x/y.sqlite"


def test_dashboard_settings_come_from_toml_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "strokeflow.toml"
    toml.write_text(
        'webhook_url = "https://hooks.example/stroke"\npublic_url = "https://s.example/"\n'
    )
    monkeypatch.setenv("STROKEFLOW_WEBHOOK_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("STROKEFLOW_SECURE_COOKIES", "true")
    options = load_settings(toml)
    assert options.webhook_url == "https://hooks.example/stroke"
    assert options.public_url == "https://s.example"
    assert options.webhook_max_attempts == 3 and options.secure_cookies
    monkeypatch.setenv("STROKEFLOW_WEBHOOK_MAX_ATTEMPTS", "many")
    with pytest.raises(ValueError, match="webhook_max_attempts"):
        load_settings(toml)
