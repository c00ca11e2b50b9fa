"""What a ``strokeflow analyze`` process spends outside the analysis: the settings without
the service's configuration model when there is no configuration, the service commands
mounted only for command lines that may name one, the NIfTI maps written side by side
(the same bytes), and no last garbage collection at exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from strokeflow.analysis.mri import MriSettings
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.volume import Geometry
from strokeflow.cli import OWN_COMMANDS, analysis_settings, app
from strokeflow.config import load_settings
from strokeflow.report.nifti import save_volume, save_volumes
from strokeflow.settings_env import ENV_PREFIX


def _without_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def test_analysis_settings_without_configuration_are_those_of_load_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_settings_env(monkeypatch)
    analysis = load_settings(None).analysis
    assert analysis_settings(None) == (analysis.ctp, analysis.mri) == (CtpSettings(), MriSettings())


def test_analysis_settings_follow_the_environment_and_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _without_settings_env(monkeypatch)
    # Lower case: pydantic-settings reads the names without case, and so must the check.
    monkeypatch.setenv("strokeflow_analysis__ctp__core_rcbf_threshold", "0.25")
    ctp, _ = analysis_settings(None)
    assert ctp.core_rcbf_threshold == 0.25
    _without_settings_env(monkeypatch)
    toml = tmp_path / "site.toml"
    toml.write_text("[analysis.mri]\nadc_core_threshold_um2_s = 600\n")
    assert analysis_settings(toml)[1].adc_core_threshold_um2_s == 600
    # An invalid configuration is still refused, by the full model.
    monkeypatch.setenv("STROKEFLOW_DICOM_PORT", "not a port")
    with pytest.raises(ValueError, match="dicom_port"):
        analysis_settings(None)


def _run_main(argv: list[str], epilogue: str) -> str:
    """``strokeflow.cli.main()`` with ``argv`` in a fresh interpreter without
    ``STROKEFLOW_*`` variables; ``epilogue`` is an exit handler's body, registered before
    ``main`` (so it runs after the handlers ``main`` registers), printing to stdout."""
    code = (
        "import atexit, gc, sys\n"
        f"def _after():\n    {epilogue}\n"
        "atexit.register(_after)\n"
        f"sys.argv = ['strokeflow', *{argv!r}]\n"
        "from strokeflow.cli import main\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_own_commands_are_the_commands_of_the_cli_module() -> None:
    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    names |= {g.name for g in app.registered_groups if g.name}
    assert names == OWN_COMMANDS


def test_an_own_command_runs_without_the_service_configuration_model() -> None:
    out = _run_main(
        ["version"],
        "print(*(m in sys.modules for m in ('strokeflow.config', 'pydantic_settings', "
        "'strokeflow.service_cli')))",
    )
    assert out.split()[-3:] == ["False", "False", "False"]


def test_help_still_lists_the_service_and_web_commands() -> None:
    out = _run_main(["--help"], "pass")
    for command in ("analyze", "phantom", "serve", "worker", "listener"):
        assert command in out


def test_the_objects_are_frozen_before_the_last_collection() -> None:
    out = _run_main(["version"], "print('frozen', gc.get_freeze_count() > 0)")
    assert out.split()[-2:] == ["frozen", "True"]


def test_maps_written_side_by_side_are_the_bytes_of_one_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    geometry = Geometry(np.diag([0.8, 0.8, 5.0, 1.0]))
    volumes = [
        rng.normal(size=(4, 24, 20)).astype(np.float32),
        rng.normal(size=(4, 24, 20)) > 0.5,
        np.full((4, 24, 20), np.nan, dtype=np.float32),
    ]
    one = [save_volume(v, geometry, tmp_path / f"one-{i}.nii.gz") for i, v in enumerate(volumes)]
    many = save_volumes(
        [(v, geometry, tmp_path / f"many-{i}.nii.gz") for i, v in enumerate(volumes)]
    )
    assert many == [tmp_path / f"many-{i}.nii.gz" for i in range(len(volumes))]
    for a, b, v in zip(one, many, volumes, strict=True):
        assert a.read_bytes() == b.read_bytes()
        back = np.asarray(nib.load(b).dataobj)
        np.testing.assert_array_equal(np.transpose(back, (2, 1, 0)), v.astype(back.dtype))
