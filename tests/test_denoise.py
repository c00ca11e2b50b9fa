"""Mask-normalised smoothing: less noise inside the mask, no leakage across its edge."""

from __future__ import annotations

import numpy as np
import pytest

from strokeflow.analysis.denoise import smooth_within_mask


def _slab(noise_hu: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(t, z, y, x) tissue at 30 HU beside a bone/CSF band, and the tissue mask."""
    rng = np.random.default_rng(seed)
    nt, nz, n = 5, 3, 48
    vol = np.full((nz, n, n), 30.0)
    vol[:, :, :10] = 1200.0  # bone
    vol[:, :, 30:34] = 5.0  # a CSF sulcus
    mask = np.ones((nz, n, n), dtype=bool)
    mask[:, :, :10] = False
    mask[:, :, 30:34] = False
    signal = vol[None] + rng.normal(0.0, noise_hu, (nt, nz, n, n))
    return signal.astype(np.float32), mask


def test_bone_and_csf_do_not_leak_into_tissue() -> None:
    signal, mask = _slab(noise_hu=0.0)
    out = smooth_within_mask(signal, mask, (2.0, 2.0))
    np.testing.assert_allclose(out[..., mask], 30.0, atol=1e-3)


def test_outside_mask_is_returned_unchanged() -> None:
    signal, mask = _slab(noise_hu=10.0)
    out = smooth_within_mask(signal, mask, (2.0, 2.0))
    np.testing.assert_array_equal(out[..., ~mask], signal[..., ~mask])
    assert out.dtype == np.float32 and out.shape == signal.shape


def test_noise_drops_inside_mask() -> None:
    signal, mask = _slab(noise_hu=10.0)
    out = smooth_within_mask(signal, mask, (1.5, 1.5))
    interior = mask.copy()
    interior[:, :, :14] = False
    interior[:, :, 26:38] = False
    assert out[..., interior].std() < 0.3 * signal[..., interior].std()
    assert abs(float(out[..., interior].mean()) - 30.0) < 0.5


def test_volume_and_series_give_the_same_frames() -> None:
    signal, mask = _slab(noise_hu=10.0)
    series = smooth_within_mask(signal, mask, (1.0, 2.0))
    frame = smooth_within_mask(signal[2], mask, (1.0, 2.0))
    np.testing.assert_allclose(series[2], frame, rtol=1e-6, atol=1e-4)


def test_smoothing_stays_in_plane() -> None:
    signal, mask = _slab(noise_hu=0.0)
    signal[:, 1] += 100.0  # one slice brighter: must not bleed into its neighbours
    out = smooth_within_mask(signal, mask, (2.0, 2.0))
    np.testing.assert_allclose(out[:, 0][..., mask[0]], 30.0, atol=1e-3)


def test_shape_mismatch_is_reported() -> None:
    signal, mask = _slab(noise_hu=0.0)
    with pytest.raises(ValueError, match="mask shape"):
        smooth_within_mask(signal, mask[:, :-1], (1.0, 1.0))
