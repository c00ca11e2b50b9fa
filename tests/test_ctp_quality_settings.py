"""CT quality limits are settings: ``[analysis.ctp.quality]`` reaches the CT analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from strokeflow.analysis.ctp import analyse_ctp
from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.config import load_settings
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp


def _series() -> PerfusionSeries:
    phantom = simulate_ctp(CtpPhantomOptions(seed=3, matrix=64, slices=4, frames=30))
    nz = phantom.hu.shape[1]
    return PerfusionSeries(
        signal=phantom.hu,
        times_s=np.repeat(phantom.times_s[:, None], nz, axis=1),
        geometry=Geometry(phantom.affine_lps),
    )


def test_quality_limits_set_in_the_toml_file_reach_the_ct_analysis(tmp_path: Path) -> None:
    series = _series()
    default = {f.code for f in analyse_ctp(series, load_settings(None).analysis.ctp).flags}
    toml = tmp_path / "strokeflow.toml"
    # The phantom's tissue SNR is far below 1e6, and its bolus arrives well before frame 25.
    toml.write_text("[analysis.ctp.quality]\nmin_snr = 1e6\nmin_baseline_frames = 25\n")
    settings = load_settings(toml).analysis.ctp
    assert settings.quality.min_snr == 1e6
    strict = {f.code for f in analyse_ctp(series, settings).flags}
    assert {"low_snr", "short_baseline"} <= strict
    assert not {"low_snr", "short_baseline"} & default
    toml.write_text("[analysis.ctp.quality]\nmin_snr_db = 3.0\n")
    with pytest.raises(ValueError, match=r"\[analysis.ctp.quality\]: unknown keys min_snr_db"):
        load_settings(toml)
