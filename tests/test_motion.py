"""In-plane binning and rigid motion correction on a synthetic moving head."""

from __future__ import annotations

import numpy as np
import pytest

from strokeflow.analysis.motion import bin_inplane, correct_motion

PIXEL_MM = 1.8
SLICE_MM = 5.0
N = 112  # 200 mm field of view


def _head_hu(
    z: float, y: np.ndarray, x: np.ndarray, artery_hu: float, sinus_hu: float
) -> np.ndarray:
    """Analytic head in HU, mm coordinates about its centre: ellipsoidal skull with a
    frontal bony crest, cortex/white matter, ventricles, an artery and the sagittal sinus."""
    ay, ax, az, th = 92.0, 76.0, 80.0, 7.0

    def q(a: float, b: float, c: float) -> np.ndarray:
        return np.asarray((y / a) ** 2 + (x / b) ** 2 + (z / c) ** 2)

    hu = np.full(y.shape, -1000.0)
    hu[q(ay, ax, az) <= 1] = 1200.0
    inside = q(ay - th, ax - th, az - th) <= 1
    hu[inside] = 40.0
    hu[q(ay - th - 5, ax - th - 5, az - th - 5) <= 1] = 28.0
    hu[((y - 5) / 22) ** 2 + ((np.abs(x) - 9) / 5) ** 2 <= 1] = 5.0
    crest = (y + ay - th) ** 2 + (x - 15) ** 2 < 6.0**2
    hu[crest & (q(ay, ax, az) <= 1.05)] = 1200.0
    hu[inside & ((y + 10) ** 2 + (x + 35) ** 2 < 2.0**2)] = 40.0 + artery_hu
    hu[inside & ((y - ay + th + 4) ** 2 + x**2 < 4.0**2)] = 40.0 + sinus_hu
    return hu


def _frame(
    shift_mm: tuple[float, float] = (0.0, 0.0),
    rot_deg: float = 0.0,
    dz_mm: float = 0.0,
    artery_hu: float = 0.0,
    sinus_hu: float = 0.0,
    nz: int = 6,
) -> np.ndarray:
    """(z, y, x) frame of the head moved by ``shift_mm`` and ``rot_deg`` about its
    centre, evaluated exactly (2x supersampled), not interpolated."""
    s = 2
    c = ((np.arange(N * s) + 0.5) / s - N / 2) * PIXEL_MM
    y, x = np.meshgrid(c, c, indexing="ij")
    t = np.radians(rot_deg)
    py, px = y - shift_mm[0], x - shift_mm[1]
    ry = np.cos(t) * py + np.sin(t) * px
    rx = -np.sin(t) * py + np.cos(t) * px
    out = np.empty((nz, N, N), dtype=np.float32)
    for k in range(nz):
        hu = _head_hu(25.0 + dz_mm + SLICE_MM * k, ry, rx, artery_hu, sinus_hu)
        out[k] = hu.reshape(N, s, N, s).mean(axis=(1, 3))
    return out


def _noisy(frames: list[np.ndarray], noise_hu: float = 12.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    series = np.stack(frames)
    return (series + rng.normal(0.0, noise_hu, series.shape)).astype(np.float32)


MOTIONS = [
    ((0.0, 0.0), 0.0),
    ((2.5, -1.0), 1.0),
    ((-4.0, 3.0), -3.0),
    ((6.0, 5.0), 5.0),
    ((-1.2, -6.0), -1.5),
    ((0.4, 0.3), 0.2),
    ((3.0, -3.0), 8.0),
]


@pytest.fixture(scope="module")
def moved() -> tuple[np.ndarray, object]:
    frames = [_frame(shift, rot) for shift, rot in MOTIONS]
    series = _noisy(frames)
    return series, correct_motion(series, PIXEL_MM)


def test_known_shifts_and_rotations_are_recovered(moved) -> None:
    _, result = moved
    shifts = np.array([m[0] for m in MOTIONS])
    rots = np.array([m[1] for m in MOTIONS])
    # The skull centroid sits within a few mm of the head centre, the rotation centre
    # of the phantom; the resulting shift offset is far below the tolerance.
    np.testing.assert_allclose(result.shifts_mm, shifts, atol=0.5)
    np.testing.assert_allclose(result.rotations_deg, rots, atol=0.5)
    assert not result.excluded.any(), result.messages


def test_corrected_frames_match_the_reference(moved) -> None:
    series, result = moved
    ref = series[0]
    tissue = (ref > 20) & (ref < 60)
    before = np.abs(series[3] - ref)[tissue].mean()
    after = np.abs(result.corrected[3] - ref)[tissue].mean()
    assert after < 0.5 * before
    assert result.corrected.dtype == np.float32 and result.corrected.shape == series.shape


def test_displacement_combines_shift_and_rotation(moved) -> None:
    _, result = moved
    shift = np.hypot(*result.shifts_mm.T)
    expected = shift + 2 * 75.0 * np.abs(np.sin(np.radians(result.rotations_deg) / 2))
    np.testing.assert_allclose(result.displacement_mm, expected, rtol=1e-6)
    assert result.displacement_mm[0] == 0.0


def test_still_frames_are_left_untouched() -> None:
    series = _noisy([_frame() for _ in range(4)])
    result = correct_motion(series, PIXEL_MM)
    assert np.all(result.displacement_mm < 0.1 * PIXEL_MM)
    np.testing.assert_array_equal(result.corrected, series)


def test_enhancing_vessels_do_not_fool_registration() -> None:
    # Still head; the artery and sinus enhance strongly in the late frames.
    enh = [(0, 0), (0, 0), (150, 50), (600, 300), (500, 600), (200, 400), (100, 150)]
    series = _noisy([_frame(artery_hu=a, sinus_hu=s) for a, s in enh])
    result = correct_motion(series, PIXEL_MM)
    assert np.all(np.abs(result.shifts_mm) < 0.2)
    assert np.all(np.abs(result.rotations_deg) < 0.2)
    assert not result.excluded.any(), result.messages


def test_through_plane_frame_is_excluded() -> None:
    frames = [_frame((0.5 * k, -0.3 * k), 0.4 * k) for k in range(8)]
    frames[5] = _frame((2.5, -1.5), 2.0, dz_mm=SLICE_MM)  # the slab slid by one slice
    times = np.arange(8) * 1.5
    result = correct_motion(_noisy(frames), PIXEL_MM, times_s=times)
    assert result.excluded.tolist() == [k == 5 for k in range(8)]
    assert result.messages == [result.messages[0]]
    assert "frame 5 (t=7.5 s)" in result.messages[0]
    assert "through-plane" in result.messages[0]


def test_large_motion_is_excluded() -> None:
    frames = [_frame(), _frame((1.0, 0.0)), _frame((12.0, 9.0), 3.0), _frame((0.0, 1.0))]
    result = correct_motion(_noisy(frames), PIXEL_MM, max_motion_mm=10.0)
    assert result.excluded.tolist() == [False, False, True, False]
    assert "frame 2" in result.messages[-1] and "limit 10.0 mm" in result.messages[-1]


def test_missing_skull_skips_correction_with_a_message() -> None:
    series = np.full((3, 2, 32, 32), 30.0, dtype=np.float32)
    result = correct_motion(series, PIXEL_MM)
    assert "no skull" in result.messages[0]
    np.testing.assert_array_equal(result.corrected, series)


def test_bad_reference_is_reported() -> None:
    with pytest.raises(ValueError, match="reference frame 5"):
        correct_motion(np.zeros((3, 1, 8, 8), np.float32), PIXEL_MM, reference=5)


def test_bin_inplane_means_blocks_and_crops_the_remainder() -> None:
    a = np.arange(2 * 3 * 9 * 10, dtype=np.int16).reshape(2, 3, 9, 10)
    b = bin_inplane(a, 4)
    assert b.shape == (2, 3, 2, 2) and b.dtype == np.float32
    expected = a[..., :8, :8].reshape(2, 3, 2, 4, 2, 4).mean(axis=(3, 5))
    np.testing.assert_allclose(b, expected, rtol=1e-6)
    np.testing.assert_array_equal(bin_inplane(a, 1), a.astype(np.float32))
    with pytest.raises(ValueError, match="larger than"):
        bin_inplane(a, 11)


def test_frames_registered_in_threads_give_the_serial_result(
    moved, monkeypatch: pytest.MonkeyPatch
) -> None:
    from strokeflow.analysis import motion

    series, threaded = moved
    monkeypatch.setattr(motion, "usable_cpus", lambda: 1)
    serial = correct_motion(series, PIXEL_MM)
    for name in ("corrected", "shifts_mm", "rotations_deg", "displacement_mm", "residual"):
        np.testing.assert_array_equal(getattr(threaded, name), getattr(serial, name), name)
    assert threaded.messages == serial.messages
