"""Brain, CSF, vessel and tissue masks on a synthetic noisy CT perfusion head."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from strokeflow.analysis.brainmask import brain_masks
from strokeflow.phantom.physics import arterial_input

PIXEL_MM = 1.8
SLICE_MM = 5.0
N = 96  # 173 mm field of view
ARTERY_YX_MM = (-10.0, -35.0)
SINUS_YX_MM = (70.0, 0.0)


def _head_parts(z_mm: float) -> dict[str, np.ndarray]:
    """Boolean structures of one slice, 2x supersampled, keyed by name."""
    s = 2
    c = (np.arange(N * s) + 0.5) / s - N / 2
    y, x = np.meshgrid(c * PIXEL_MM, c * PIXEL_MM, indexing="ij")
    ay, ax, az, th = 84.0, 70.0, 80.0, 7.0

    def ell(a: float, b: float, cz: float) -> np.ndarray:
        return np.asarray((y / a) ** 2 + (x / b) ** 2 + (z_mm / cz) ** 2 <= 1)

    inside = ell(ay - th, ax - th, az - th)
    return {
        "skull": ell(ay, ax, az) & ~inside,
        "inside": inside,
        "wm": ell(ay - th - 6, ax - th - 6, az - th - 6),
        "ventricle": ((y - 5) / 22) ** 2 + ((np.abs(x) - 10) / 6) ** 2 <= 1,
        "artery": (y - ARTERY_YX_MM[0]) ** 2 + (x - ARTERY_YX_MM[1]) ** 2 <= 2.0**2,
        "sinus": inside & ((y - SINUS_YX_MM[0]) ** 2 + (x - SINUS_YX_MM[1]) ** 2 <= 5.0**2),
    }


def _bin(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(N, 2, N, 2).mean(axis=(1, 3))


def _study(
    nz: int = 6, noise_hu: float = 12.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Noisy (t, z, y, x) series in HU and the true voxel fractions (z, y, x)."""
    t_s = np.arange(0.0, 40.0, 1.5)
    aif = arterial_input(t_s, arrival_s=6.0, peak=450.0)
    sinus_curve = arterial_input(t_s, arrival_s=10.0, peak=350.0)
    tissue_curve = 25.0 * aif / aif.max()
    rng = np.random.default_rng(seed)
    frac: dict[str, list[np.ndarray]] = {}
    series = np.empty((t_s.size, nz, N, N), dtype=np.float32)
    for k in range(nz):
        p = _head_parts(20.0 + SLICE_MM * k)
        brain = p["inside"] & ~p["ventricle"] & ~p["artery"] & ~p["sinus"]
        for name, m in (*p.items(), ("brain", brain)):
            frac.setdefault(name, []).append(_bin(m))
        base = np.full((2 * N, 2 * N), -1000.0)
        base[p["inside"]] = 40.0
        base[p["wm"]] = 28.0
        base[p["ventricle"]] = 5.0
        base[p["skull"]] = 1200.0
        for ti in range(t_s.size):
            hu = base.copy()
            hu[brain] += tissue_curve[ti]
            hu[p["artery"] & p["inside"]] = 40.0 + aif[ti]
            hu[p["sinus"]] = 40.0 + sinus_curve[ti]
            series[ti, k] = _bin(hu)
    series += rng.normal(0.0, noise_hu, series.shape).astype(np.float32)
    return series, t_s, {k: np.stack(v) for k, v in frac.items()}


@pytest.fixture(scope="module")
def study() -> tuple[np.ndarray, dict[str, np.ndarray], object]:
    series, _, frac = _study()
    baseline = series[:3].mean(axis=0)
    enh_max = (series - baseline).max(axis=0)
    masks = brain_masks(baseline, enh_max, PIXEL_MM, SLICE_MM)
    return series, frac, masks


def test_brain_is_inside_skull_without_bone_or_air(study) -> None:
    _, frac, m = study
    assert not (m.brain & (frac["skull"] > 0)).any(), "brain voxels touch bone"
    outside = frac["inside"] == 0
    assert not (m.brain & outside).any()
    # Erosion at the skull costs a rim only: most of the pure intracranial voxels remain.
    pure = frac["inside"] == 1
    assert (m.brain & pure).sum() > 0.8 * pure.sum()
    assert m.head[frac["skull"] == 1].all()


def test_ventricles_are_csf_and_not_tissue(study) -> None:
    _, frac, m = study
    ventricle = frac["ventricle"] == 1
    assert m.csf[ventricle & m.brain].mean() > 0.99
    # A stray noisy voxel may survive, but not a visible part of the ventricles.
    assert (m.tissue & ventricle).sum() < 0.005 * ventricle.sum()
    partial = (frac["ventricle"] > 0.5) & m.brain
    assert m.csf[partial].mean() > 0.95


def test_white_matter_is_not_mistaken_for_csf(study) -> None:
    _, frac, m = study
    wm_only = (frac["wm"] == 1) & (frac["brain"] == 1) & m.brain
    # 28 HU white matter with 12 HU noise per frame: smoothing keeps it out of the CSF class.
    assert m.csf[wm_only].mean() < 0.01
    near_ventricle = ndimage.binary_dilation(frac["ventricle"] > 0, iterations=2)
    assert not m.csf[wm_only & ~near_ventricle].any()


def test_small_artery_and_sagittal_sinus_are_vessels(study) -> None:
    _, frac, m = study
    for name in ("artery", "sinus"):
        touched = frac[name] > 0.3
        assert touched.any()
        assert (m.vessels | ~m.brain)[touched].all(), f"{name} voxels left in the brain"
        assert not (m.tissue & (frac[name] > 0)).any(), f"{name} partial volume in tissue"


def test_vessel_mask_stays_local(study) -> None:
    _, frac, m = study
    # Vessels are a few voxels; the noisy tissue maximum must not cross the threshold.
    vessel_area = (frac["artery"] > 0) | (frac["sinus"] > 0)
    assert m.vessels.sum() < 4 * vessel_area.sum()


def test_tissue_is_brain_minus_csf_and_vessels(study) -> None:
    _, _, m = study
    np.testing.assert_array_equal(m.tissue, m.brain & ~m.csf & ~m.vessels)
    assert m.tissue.sum() > 0.6 * m.brain.sum()


def test_missing_skull_is_reported() -> None:
    flat = np.full((2, 32, 32), 30.0, dtype=np.float32)
    with pytest.raises(ValueError, match="no skull"):
        brain_masks(flat, np.zeros_like(flat), PIXEL_MM, SLICE_MM)


def test_rims_beside_vessels_and_skull_are_unmeasured_tissue(study) -> None:
    _, frac, m = study
    assert not (m.unmeasured & m.tissue).any()
    assert not (m.unmeasured & (frac["ventricle"] == 1)).any()
    assert not (m.unmeasured & (frac["skull"] == 1)).any()
    # The ring the vessel mask is dilated by is tissue beside the artery, not its lumen.
    near_artery = ndimage.binary_dilation(frac["artery"] > 0.3, structure=np.ones((1, 3, 3)))
    ring = near_artery & (frac["artery"] == 0) & (frac["brain"] == 1)
    assert m.unmeasured[ring & m.vessels].mean() > 0.9
    assert not m.unmeasured[frac["artery"] > 0.5].any()
    # And the voxels at the inner skull surface that the brain mask leaves out.
    rim = (frac["inside"] == 1) & ~m.brain & ~ndimage.binary_dilation(frac["sinus"] > 0)
    assert m.unmeasured[rim].mean() > 0.9
