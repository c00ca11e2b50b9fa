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


def _bilateral_pass_reference(
    coeffs: np.ndarray, mf: np.ndarray, offsets: list[tuple[int, int]], sigma_px: float, r: int
) -> np.ndarray:
    """The filter pass as first written: every offset's weights computed, one thread."""
    k, nz, ny, nx = coeffs.shape
    padded = np.zeros((k, nz, ny + 2 * r, nx + 2 * r), dtype=np.float32)
    padded[:, :, r : r + ny, r : r + nx] = coeffs
    mpad = np.zeros((nz, ny + 2 * r, nx + 2 * r), dtype=np.float32)
    mpad[:, r : r + ny, r : r + nx] = mf

    def view(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
        return a[..., r + dy : r + dy + ny, r + dx : r + dx + nx]

    both = (mf * view(mpad, 0, 1)) > 0
    d_ref = float(np.median(((coeffs - view(padded, 0, 1)) ** 2).sum(axis=0)[both]))
    d_ref = max(d_ref, 1e-6 * float((coeffs**2).sum(axis=0)[mf > 0].mean() + 1e-12))
    num = np.zeros_like(coeffs)
    den = np.zeros(mf.shape, dtype=np.float32)
    diff = np.empty_like(coeffs)
    for dy, dx in offsets:
        spatial = np.float32(np.exp(-(dy * dy + dx * dx) / (2.0 * sigma_px**2)))
        shifted = view(padded, dy, dx)
        np.subtract(coeffs, shifted, out=diff)
        np.square(diff, out=diff)
        d = diff.sum(axis=0)
        d *= np.float32(1.0 / d_ref)
        d -= 1.0
        np.maximum(d, 0.0, out=d)
        d *= -np.float32(1.0 / 0.5)
        w = np.exp(d)
        w *= spatial
        w *= view(mpad, dy, dx)
        w *= mf
        np.multiply(shifted, w, out=diff)
        num += diff
        den += w
    out = np.divide(num, den, out=num, where=den > 0)
    np.copyto(out, coeffs, where=~(den > 0))
    return out


def test_bilateral_pass_equals_the_plain_per_offset_filter_exactly() -> None:
    from strokeflow.analysis.denoise import _bilateral_pass

    rng = np.random.default_rng(4)
    coeffs = rng.normal(size=(6, 5, 40, 36)).astype(np.float32)
    coeffs[:, :, 10:20, 8:30] += 4.0  # a region with another profile
    mf = np.ones((5, 40, 36), dtype=np.float32)
    mf[:, :3] = 0.0
    mf[2, 15:18, 5:9] = 0.0
    # Slices whose tissue boxes differ (the pass filters each slice's own box): a box off
    # the array's edges, one at its last column, and a slice with no tissue at all.
    mf[1, :12] = 0.0
    mf[1, :, 25:] = 0.0
    mf[3, :, :20] = 0.0
    mf[4] = 0.0
    coeffs *= mf
    r, sigma = 3, 1.5
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    expected = _bilateral_pass_reference(coeffs, mf, offsets, sigma, r)
    np.testing.assert_array_equal(_bilateral_pass(coeffs, mf, offsets, sigma, 0.5, r), expected)


def test_selected_curves_are_those_of_the_whole_filter() -> None:
    from strokeflow.analysis.denoise import profile_bilateral

    rng = np.random.default_rng(3)
    nt, nz, n = 20, 3, 24
    rise = np.clip(np.arange(nt) - 5.0, 0.0, None)[:, None, None, None]
    gain = np.where(np.arange(n) < n // 2, 1.0, 3.0)[None, None, None, :]
    signal = (rise * gain + rng.normal(0.0, 2.0, (nt, nz, n, n))).astype(np.float32)
    mask = np.ones((nz, n, n), dtype=bool)
    mask[:, :3] = False
    whole = profile_bilateral(signal, mask, sigma_px=1.2, radius_px=2)
    assert whole.shape == (nt, int(mask.sum())) and whole.dtype == np.float32
    select = mask & (rng.random(mask.shape) < 0.3)
    select[:, 0, :4] = True  # outside the mask: returned as they are
    part = profile_bilateral(signal, mask, select=select, sigma_px=1.2, radius_px=2)
    assert part.shape == (nt, int(select.sum()))
    in_mask = mask[select]
    # The same curves up to float32 rounding: BLAS may block the reconstruction's matrix
    # product differently for another number of columns (seen on an AMD EPYC: 4e-6 of 1).
    np.testing.assert_allclose(part[:, in_mask], whole[:, select[mask]], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(part[:, ~in_mask], signal[:, select & ~mask])
    # The filter did smooth: the selected tissue curves are closer to the noise-free ones.
    clean = (rise * gain * np.ones((1, nz, n, n)))[:, select & mask]
    assert (
        np.abs(part[:, in_mask] - clean).mean()
        < 0.6 * np.abs(signal[:, select & mask] - clean).mean()
    )
    with pytest.raises(ValueError, match="select"):
        profile_bilateral(signal, mask, select=select[:, :-1])
