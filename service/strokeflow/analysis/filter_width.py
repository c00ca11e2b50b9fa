"""Width of the edge-preserving filter for one study: as narrow as its signal allows.

The bilateral filter trades noise for spatial resolution. A narrower filter keeps the
borders between the core and the delayed penumbra around it (less of the penumbra's
flow mixed into the core, and less of the core's into the penumbra), but leaves more
noise for the deconvolution to amplify. How much noise the deconvolution can bear
depends on the study: a wide arterial bolus (low cardiac output) carries less temporal
bandwidth, and a low-dose scan or a low-contrast study less signal over its noise. Both
are measured before the filter, on the unfiltered curves: the narrow width where both
allow it, the wide one where either forbids it, and between them a width that moves
with the measurement (docs/deconvolution.md, "A filter width that follows the study").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FilterWidth", "choose_filter_width", "flow_filter_share", "tissue_contrast_to_noise"]

#: Tissue voxels sampled for the contrast-to-noise ratio (evenly strided).
SAMPLE_VOXELS = 8192


@dataclass(frozen=True)
class FilterWidth:
    """The filter width chosen for one study and what chose it.

    Attributes
    ----------
    sigma_mm : float
        Spatial sigma of the bilateral filter.
    arterial_fwhm_s : float or None
        Full width at half maximum of the arterial input found on the unfiltered curves
        (both hemispheres searched); None when none was found.
    tissue_cnr : float or None
        Peak of the brain's median tissue enhancement over the tissue's pre-bolus noise
        SD; None when fewer than two frames precede the bolus.
    reason : str
        Why this width, for results.json.
    flow_sigma_mm : float or None
        Sigma of the light filter the CBF is read from in part (``flow_filter_share``);
        None when the CBF is read from this width alone.
    flow_share : float
        Share of the CBF read from the light filter's curves (0..1).
    aligned_flow_share : float
        Share of the CBF read from curves filtered at ``sigma_mm`` once aligned in time
        (``analysis.delay_align``; 0..1, at most ``1 - flow_share``).
    aligned_oscillation_stride : float
        Grid samples between the residue samples whose second differences make the
        oscillation index of those curves' oSVD (``aligned_oscillation_stride``; 1: the
        grid's own index).
    """

    sigma_mm: float
    arterial_fwhm_s: float | None
    tissue_cnr: float | None
    reason: str
    flow_sigma_mm: float | None = None
    flow_share: float = 0.0
    aligned_flow_share: float = 0.0
    aligned_oscillation_stride: float = 1.0


def tissue_contrast_to_noise(
    frames: np.ndarray,
    times_s: np.ndarray,
    arrival_s: float,
    concentration: np.ndarray,
    tissue: np.ndarray,
) -> float | None:
    """Peak of the median tissue enhancement over the per-voxel noise SD before the bolus.

    Parameters
    ----------
    frames : numpy.ndarray
        ``(t, z, y, x)`` acquired frames (HU, motion-corrected, not resampled): their
        noise is independent from frame to frame, which interpolated frames' is not.
    times_s : numpy.ndarray
        ``(t, z)`` acquisition time of every image of ``frames``.
    arrival_s : float
        Bolus arrival on the same clock; frames whose every slice precedes it are baseline.
    concentration : numpy.ndarray
        ``(n, z, y, x)`` enhancement above baseline on the uniform grid.
    tissue : numpy.ndarray
        ``(z, y, x)`` bool tissue mask.

    Returns
    -------
    float or None
        The ratio; None when fewer than two frames precede the bolus, no tissue is
        given, or the noise is zero.
    """
    before = np.flatnonzero(np.asarray(times_s, dtype=np.float64).max(axis=1) < arrival_s - 1e-6)
    voxels = np.flatnonzero(tissue)
    if before.size < 2 or voxels.size == 0:
        return None
    # An evenly strided sample of the tissue: a median and a mean variance over a few
    # thousand voxels are as good as over all of them, at a fraction of the cost.
    voxels = voxels[:: max(1, voxels.size // SAMPLE_VOXELS)]
    nz_yx = int(np.prod(tissue.shape))
    pre = np.stack([frames[i].reshape(nz_yx)[voxels] for i in before]).astype(np.float64)
    # The mean of the voxels' sample variances is unbiased at any frame count.
    noise_sd = float(np.sqrt(np.mean(np.var(pre, axis=0, ddof=1))))
    if not noise_sd > 0:
        return None
    curves = concentration.reshape(concentration.shape[0], nz_yx)[:, voxels]
    peak = float(np.median(curves, axis=1).max())
    return peak / noise_sd


def choose_filter_width(
    sharp_sigma_mm: float,
    wide_sigma_mm: float,
    arterial_fwhm_s: float | None,
    tissue_cnr: float | None,
    fwhm_range_s: tuple[float, float],
    cnr_range: tuple[float, float],
) -> FilterWidth:
    """The narrow width for a sharp, clear study, the wide one for a wide or noisy one.

    Between, the width moves linearly with the arterial FWHM across ``fwhm_range_s`` and
    with the contrast-to-noise ratio across ``cnr_range``, the wider of the two kept: no
    study sits on a cliff where a 1 s difference in a measured width flips the filter.

    Parameters
    ----------
    sharp_sigma_mm, wide_sigma_mm : float
        The two widths.
    arterial_fwhm_s : float or None
        Arterial FWHM measured before the filter; None counts as wide.
    tissue_cnr : float or None
        Tissue contrast-to-noise ratio (:func:`tissue_contrast_to_noise`); None counts
        as noisy.
    fwhm_range_s : tuple of float
        ``(sharp, wide)``: an input at most ``sharp`` s wide allows the narrow width, one
        at least ``wide`` s wide needs the wide one.
    cnr_range : tuple of float
        ``(noisy, clear)``: a ratio at most ``noisy`` needs the wide width, one at least
        ``clear`` allows the narrow one.

    Returns
    -------
    FilterWidth
        The width and its reason.
    """
    sharp_s, wide_s = fwhm_range_s
    noisy, clear = cnr_range
    fwhm_text = (
        "no arterial input found"
        if arterial_fwhm_s is None
        else f"arterial FWHM {arterial_fwhm_s:g} s"
    )
    cnr_text = "not measurable" if tissue_cnr is None else f"{tissue_cnr:.2f}"
    by_fwhm = 1.0 if arterial_fwhm_s is None else _ramp(arterial_fwhm_s, sharp_s, wide_s)
    by_cnr = 1.0 if tissue_cnr is None else 1.0 - _ramp(tissue_cnr, noisy, clear)
    toward_wide = max(by_fwhm, by_cnr)
    sigma_mm = sharp_sigma_mm + toward_wide * (wide_sigma_mm - sharp_sigma_mm)
    if toward_wide == 0.0:
        why = "sharp arterial input and clear tissue curves"
    elif by_fwhm >= by_cnr:
        why = "wide arterial input" if by_fwhm == 1.0 else "arterial input of middle width"
    else:
        why = "noisy tissue curves" if by_cnr == 1.0 else "tissue curves of middle contrast"
    why += (
        f" ({fwhm_text}: sharp to {sharp_s:g} s, wide from {wide_s:g} s; tissue "
        f"contrast-to-noise {cnr_text}: noisy to {noisy:g}, clear from {clear:g})"
    )
    return FilterWidth(round(sigma_mm, 3), arterial_fwhm_s, tissue_cnr, why)


def flow_filter_share(arterial_fwhm_s: float | None, fwhm_range_s: tuple[float, float]) -> float:
    """Share of the CBF read from the lightly filtered curves, by the arterial input's width.

    A filter mixes each voxel's curve with its neighbours'; where they are reached at other
    times (the shells of a delayed lesion, 2-4 s apart) the mixed curve is wider and its
    residue peak, the flow, reads low, while its area stays right. A sharp input resolves
    those curves apart with little filtering, so its CBF is read from a light filter; a wide
    input needs the study's filter for the flow too (``docs/deconvolution.md``).

    Parameters
    ----------
    arterial_fwhm_s : float or None
        FWHM of the arterial input found before the filter (``FilterWidth``); None: none
        found, which counts as wide.
    fwhm_range_s : tuple of float
        ``(sharp, wide)``: share 1 at most ``sharp`` s, 0 from ``wide`` s, linear between.

    Returns
    -------
    float
        The share, 0..1.
    """
    if arterial_fwhm_s is None:
        return 0.0
    return 1.0 - _ramp(arterial_fwhm_s, *fwhm_range_s)


def _ramp(value: float, low: float, high: float) -> float:
    """0 at or below ``low``, 1 at or above ``high``, linear between."""
    if high <= low:
        return 0.0 if value < high else 1.0
    return float(min(1.0, max(0.0, (value - low) / (high - low))))


def aligned_oscillation_stride(frame_interval_s: float, step_s: float, share: float) -> float:
    """Stride of the oscillation index for the delay-aligned flow's deconvolution.

    Curves acquired every ``frame_interval_s`` and interpolated to a finer grid carry no
    oscillation between their samples, so the grid's index of a residue is lower than the
    index at the rate the curves were sampled, for the same noise. The aligned flow (the
    CBF of a study whose arterial input is wide, where the readout's noise raises low
    flows) compares samples one frame interval apart, in proportion to its share, which
    follows the arterial width (``flow_filter_share``).

    Parameters
    ----------
    frame_interval_s : float
        Typical interval between acquired frames, s.
    step_s : float
        Step of the uniform grid the curves were resampled to, s.
    share : float
        Share of the CBF read from the aligned curves (0..1).

    Returns
    -------
    float
        ``1 + share * max(frame_interval_s / step_s - 1, 0)``, rounded to 3 decimals; 1
        where an input is not finite or positive.
    """
    if not (step_s > 0 and frame_interval_s > 0 and np.isfinite(frame_interval_s)):
        return 1.0
    coarse = max(float(frame_interval_s) / float(step_s) - 1.0, 0.0)
    return round(1.0 + min(max(float(share), 0.0), 1.0) * coarse, 3)
