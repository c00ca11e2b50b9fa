"""The filter width follows the study: narrow for a sharp, clear study, wide otherwise.

Measured in docs/deconvolution.md ("A filter width that follows the study"): the narrow
filter keeps the core's borders where the arterial input is sharp and the tissue curves
clear; under a wide bolus (low cardiac output) or at low dose it turns penumbra into
core and moves Tmax > 10 s, so the wide filter stays there.
"""

from __future__ import annotations

import numpy as np
import pytest

from strokeflow.analysis.ctp import analyse_ctp
from strokeflow.analysis.filter_width import choose_filter_width, tissue_contrast_to_noise
from strokeflow.analysis.settings import CtpSettings
from strokeflow.phantom.family import simulate_lesion_case
from strokeflow.phantom.protocols import protocol_by_name


def _noisy_study(
    noise_sd: float, peak: float, n_pre: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frames with ``n_pre`` baseline frames, a tissue bolus of ``peak``, white noise."""
    rng = np.random.default_rng(seed)
    nt, shape = 30, (3, 20, 20)
    times = np.arange(nt, dtype=np.float64)[:, None] + np.zeros(shape[0])[None, :]
    t = np.arange(nt, dtype=np.float64)
    bolus = np.where(t >= n_pre, peak * np.exp(-(((t - n_pre - 6.0) / 4.0) ** 2)), 0.0)
    clean = 40.0 + bolus[:, None, None, None] * np.ones(shape)
    frames = clean + rng.normal(0.0, noise_sd, (nt, *shape))
    concentration = frames - frames[:n_pre].mean(axis=0)
    tissue = np.ones(shape, dtype=bool)
    return frames.astype(np.float32), times, concentration.astype(np.float32), tissue


def test_contrast_to_noise_is_the_median_peak_over_the_baseline_noise() -> None:
    frames, times, conc, tissue = _noisy_study(noise_sd=4.0, peak=12.0, n_pre=5)
    cnr = tissue_contrast_to_noise(frames, times, 5.0, conc, tissue)
    assert cnr is not None
    # The median curve's peak is the true peak plus little noise: 12 / 4 = 3.
    assert cnr == pytest.approx(3.0, rel=0.08)


def test_contrast_to_noise_needs_two_baseline_frames() -> None:
    frames, times, conc, tissue = _noisy_study(noise_sd=4.0, peak=12.0, n_pre=5)
    assert tissue_contrast_to_noise(frames, times, 1.0, conc, tissue) is None
    assert tissue_contrast_to_noise(frames, times, 5.0, conc, np.zeros_like(tissue)) is None


def test_a_late_slice_keeps_its_frame_out_of_the_baseline() -> None:
    frames, times, conc, tissue = _noisy_study(noise_sd=4.0, peak=12.0, n_pre=5)
    # Frames 0 and 1 precede an arrival at 2 s ...
    assert tissue_contrast_to_noise(frames, times, 2.0, conc, tissue) is not None
    # ... but once the last slice is imaged 1.2 s into its frame, frame 1 ends at 2.2 s.
    times[:, -1] += 1.2
    assert tissue_contrast_to_noise(frames, times, 2.0, conc, tissue) is None


@pytest.mark.parametrize(
    ("fwhm_s", "cnr", "sigma_mm", "word"),
    [
        (5.0, 2.0, 3.5, "sharp"),
        (6.0, 1.3, 3.5, "sharp"),
        (8.0, 2.0, 4.0, "middle width"),
        (10.0, 2.0, 4.5, "wide arterial"),
        (None, 2.0, 4.5, "no arterial input found"),
        (5.0, 1.15, 4.0, "middle contrast"),
        (5.0, 0.9, 4.5, "noisy"),
        (5.0, None, 4.5, "not measurable"),
        # The wider of the two is kept.
        (9.0, 1.15, 4.25, "middle width"),
        (7.0, 1.075, 4.25, "middle contrast"),
    ],
)
def test_the_width_follows_bandwidth_and_contrast_the_wider_kept(
    fwhm_s: float | None, cnr: float | None, sigma_mm: float, word: str
) -> None:
    width = choose_filter_width(3.5, 4.5, fwhm_s, cnr, (6.0, 10.0), (1.0, 1.3))
    assert width.sigma_mm == pytest.approx(sigma_mm)
    assert word in width.reason


def test_the_width_has_no_cliff() -> None:
    widths = [
        choose_filter_width(3.5, 4.5, f, 2.0, (6.0, 10.0), (1.0, 1.3)).sigma_mm
        for f in np.arange(5.0, 11.01, 0.5)
    ]
    assert np.all(np.diff(widths) >= 0)
    assert np.max(np.diff(widths)) <= 0.5 * 1.0 / 4.0 + 1e-9


@pytest.mark.parametrize(
    ("protocol", "sigma_mm"),
    [("1s_45s", 3.5), ("low_output", 4.5), ("1.5s_60s_wide", 4.5), ("low_dose", 4.5)],
)
def test_the_family_protocols_get_the_width_their_signal_allows(
    protocol: str, sigma_mm: float
) -> None:
    case = simulate_lesion_case("medium", protocol_by_name(protocol), seed=41)
    analysis = analyse_ctp(case.series, CtpSettings())
    assert analysis.filter_width is not None
    assert analysis.filter_width.sigma_mm == sigma_mm, analysis.filter_width.reason


def test_equal_widths_measure_nothing() -> None:
    case = simulate_lesion_case("small", protocol_by_name("1s_45s"), seed=42)
    settings = CtpSettings(smoothing_sigma_mm=4.5, smoothing_sigma_wide_mm=4.5)
    width = analyse_ctp(case.series, settings).filter_width
    assert width is not None and width.sigma_mm == 4.5
    assert width.arterial_fwhm_s is None and width.tissue_cnr is None


def test_a_width_must_be_positive() -> None:
    with pytest.raises(ValueError, match="smoothing_sigma_wide_mm"):
        CtpSettings(smoothing_sigma_wide_mm=0.0)
    with pytest.raises(ValueError, match="smoothing_cnr_range"):
        CtpSettings(smoothing_cnr_range=(1.3, 1.0))
