"""The core's self-calibrated reference and per-voxel noise margin (CtpSettings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import strokeflow.analysis.ctp as ctp
from strokeflow.analysis.brainmask import BrainMasks
from strokeflow.analysis.flow_noise import value_noise_sd
from strokeflow.analysis.hemispheres import LEFT, RIGHT, Hemispheres
from strokeflow.analysis.lesions import ctp_lesion_masks
from strokeflow.analysis.maps import PerfusionMaps, compute_maps
from strokeflow.analysis.settings import CtpSettings
from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.config import load_settings
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp

NORMAL_CBF = 50.0
SHAPE = (1, 48, 48)
CORE = (slice(None), slice(8, 18), slice(4, 14))
NOISY_PENUMBRA = (slice(None), slice(28, 38), slice(4, 14))


def _grid() -> tuple[BrainMasks, Hemispheres, Geometry]:
    full = np.ones(SHAPE, dtype=bool)
    masks = BrainMasks(full, full, ~full, ~full, full, ~full)
    side = np.where(np.arange(SHAPE[2]) < SHAPE[2] // 2, LEFT, RIGHT).astype(np.int8)
    hemis = Hemispheres(np.broadcast_to(side, SHAPE).copy(), (24.0, 24.0), 0.0)
    geometry = Geometry(np.diag([2.0, 2.0, 5.0, 1.0]))
    return masks, hemis, geometry


def _maps(sd: np.ndarray | None, reference: np.ndarray | None = None) -> PerfusionMaps:
    # Left hemisphere hypoperfused (Tmax 8 s, rCBF 0.6), with a core block at rCBF 0.15
    # read with little noise and a penumbral block at 0.29 read with a lot.
    cbf = np.full(SHAPE, NORMAL_CBF, dtype=np.float32)
    tmax = np.full(SHAPE, 2.0, dtype=np.float32)
    tmax[..., : SHAPE[2] // 2] = 8.0
    cbf[..., : SHAPE[2] // 2] = 0.6 * NORMAL_CBF
    cbf[CORE] = 0.15 * NORMAL_CBF
    cbf[NOISY_PENUMBRA] = 0.29 * NORMAL_CBF
    return PerfusionMaps(
        cbf,
        cbf,
        cbf,
        tmax,
        tmax,
        reference_cbf_ml_100g_min=reference,
        cbf_noise_sd_ml_100g_min=sd,
    )


def _sd() -> np.ndarray:
    sd = np.full(SHAPE, 1.0, dtype=np.float32)
    # 0.5 * 10 / 50 = 0.1: the margin lifts 0.29 to 0.39, the core block to 0.16.
    sd[NOISY_PENUMBRA] = 10.0
    sd[0, 0, 0] = np.nan
    return sd


def test_the_margin_removes_a_noisy_penumbral_voxel_and_keeps_the_core() -> None:
    masks, hemis, geometry = _grid()
    settings = CtpSettings(core_noise_margin_k=0.5)
    plain = ctp_lesion_masks(_maps(None), masks, hemis, geometry, settings)[0]
    # clean_mask rounds the blocks' corners.
    assert plain[CORE].mean() > 0.9 and plain[NOISY_PENUMBRA].mean() > 0.9
    core, tmax6, _, rcbf, reference, _, side = ctp_lesion_masks(
        _maps(_sd()), masks, hemis, geometry, settings
    )
    assert side == "left" and reference == pytest.approx(NORMAL_CBF)
    assert core[CORE].mean() > 0.9
    assert not core[NOISY_PENUMBRA].any()
    # The reported rCBF is the reading, without the margin; Tmax regions unchanged.
    assert np.allclose(rcbf[NOISY_PENUMBRA], 0.29)
    assert np.array_equal(tmax6, ctp_lesion_masks(_maps(None), masks, hemis, geometry, settings)[1])
    off = CtpSettings(core_noise_margin_k=0.0)
    assert (
        ctp_lesion_masks(_maps(_sd()), masks, hemis, geometry, off)[0][NOISY_PENUMBRA].mean() > 0.9
    )


def test_the_reference_comes_from_the_calibrated_map_and_the_voxels_stay_as_read() -> None:
    masks, hemis, geometry = _grid()
    calibrated = _maps(None).cbf_ml_100g_min * 1.25
    _, _, _, rcbf, reference, _, _ = ctp_lesion_masks(
        _maps(None, calibrated), masks, hemis, geometry, CtpSettings(core_noise_margin_k=0.5)
    )
    assert reference == pytest.approx(1.25 * NORMAL_CBF)
    assert np.allclose(rcbf[CORE], 0.15 / 1.25)


def _aif(n: int, step_s: float) -> np.ndarray:
    t = np.arange(n) * step_s
    x = np.clip(t - 8.0, 0, None)
    return (300.0 * (x / 4.0) ** 3 * np.exp(-x / 1.5)).astype(np.float32)


def test_compute_maps_returns_the_noise_sd_of_flow_noise_and_the_calibrated_map() -> None:
    rng = np.random.default_rng(4)
    n, step_s = 40, 1.0
    aif = _aif(n, step_s)
    t = np.arange(n) * step_s
    # Weak, delayed enhancement plus noise, so the rungs differ between voxels.
    shape = np.clip(t - 10.0, 0, None) ** 2 * np.exp(-np.clip(t - 10.0, 0, None) / 3.0)
    conc = (rng.uniform(0.0, 1.0, (1, 1, 20, 20)) * shape[:, None, None, None]).astype(np.float32)
    conc += rng.normal(0.0, 1.5, conc.shape).astype(np.float32)
    tissue = np.ones(conc.shape[1:], dtype=bool)
    tissue[0, :2] = False
    kwargs: dict[str, Any] = {"mask": tissue, "cbf_readout": "value", "chunk_voxels": 64}
    plain = compute_maps(conc, aif, step_s, **kwargs)
    assert plain.cbf_noise_sd_ml_100g_min is None and plain.reference_cbf_ml_100g_min is None
    maps = compute_maps(
        conc, aif, step_s, reference_calibration="self", cbf_noise_sd=True, workers=2, **kwargs
    )
    sd = maps.cbf_noise_sd_ml_100g_min
    assert sd is not None and maps.reference_cbf_ml_100g_min is not None
    assert np.isnan(sd[~tissue]).all()
    assert np.allclose(sd, value_noise_sd(conc, aif, step_s, tissue, 0.0), equal_nan=True)
    # The voxels are as read; only the reference map is divided by the gain.
    assert np.array_equal(maps.cbf_ml_100g_min, plain.cbf_ml_100g_min, equal_nan=True)
    both = np.isfinite(maps.reference_cbf_ml_100g_min) & (plain.cbf_ml_100g_min > 0)
    assert both.sum() > 100
    assert not np.allclose(maps.reference_cbf_ml_100g_min[both], plain.cbf_ml_100g_min[both])


def test_the_core_settings_are_read_from_the_config_and_reach_compute_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "strokeflow.toml"
    toml.write_text(
        '[analysis.ctp]\ncore_reference_calibration = "self"\ncore_noise_margin_k = 0.25\n'
    )
    settings = load_settings(toml).analysis.ctp
    assert settings.core_reference_calibration == "self"
    assert settings.core_noise_margin_k == 0.25
    default = load_settings(None).analysis.ctp
    assert (default.core_reference_calibration, default.core_noise_margin_k) == ("self+noise", 0.0)
    assert default.pair_flow_cap == 1.5

    seen: dict[str, Any] = {}

    class StopError(Exception):
        pass

    def spy(*args: Any, **kwargs: Any) -> PerfusionMaps:
        seen.update(kwargs)
        raise StopError

    monkeypatch.setattr(ctp, "compute_maps", spy)
    phantom = simulate_ctp(CtpPhantomOptions(seed=3, matrix=48, slices=2, frames=30))
    nz = phantom.hu.shape[1]
    series = PerfusionSeries(
        signal=phantom.hu,
        times_s=np.repeat(phantom.times_s[:, None], nz, axis=1),
        geometry=Geometry(phantom.affine_lps),
    )
    with pytest.raises(StopError):
        ctp.analyse_ctp(series, settings)
    assert seen["reference_calibration"] == "self" and seen["cbf_noise_sd"] is True
    with pytest.raises(StopError):
        ctp.analyse_ctp(series, CtpSettings())
    assert seen["reference_calibration"] == "self+noise" and seen["cbf_noise_sd"] is False
    assert seen["pair_flow_cap"] == 1.5
    with pytest.raises(StopError):
        ctp.analyse_ctp(series, CtpSettings(core_reference_calibration="off", pair_flow_cap=0.0))
    assert seen["reference_calibration"] == "off" and seen["pair_flow_cap"] is None

    toml.write_text('[analysis.ctp]\ncore_reference_calibration = "twice"\n')
    with pytest.raises(ValueError, match="core_reference_calibration"):
        load_settings(toml)
    toml.write_text("[analysis.ctp]\npair_flow_cap = -1.0\n")
    with pytest.raises(ValueError, match="pair_flow_cap"):
        load_settings(toml)
