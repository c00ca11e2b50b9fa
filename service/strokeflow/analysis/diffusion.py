"""Apparent diffusion coefficient, MR brain mask and the diffusion-defined ischaemic core.

ADC values are in x10^-6 mm²/s, which is µm²/s (``adc_um2_s``): normal grey matter
~800, white matter ~700, CSF ~3000, acute core < 620 (Purushotham 2015, the RAPID and
DEFUSE 3 threshold).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from strokeflow.analysis.lesions import clean_mask

#: Published core threshold (x10^-6 mm²/s).
CORE_ADC_THRESHOLD_UM2_S = 620.0
#: Voxels above this are CSF (free water ~3000), never core and never tissue.
CSF_ADC_UM2_S = 1600.0
#: Plausible median ADC of a brain (tissue and CSF), used to recognise the units.
_BRAIN_MEDIAN_RANGE_UM2_S = (350.0, 2500.0)
#: Units scanners write ADC maps in, as the factor to x10^-6 mm²/s, with their names.
_ADC_UNITS: tuple[tuple[float, str], ...] = (
    (1.0, "x10^-6 mm²/s"),
    (1e3, "x10^-3 mm²/s"),
    (1e6, "mm²/s"),
    (10.0, "x10^-5 mm²/s"),
    (0.1, "x10^-7 mm²/s"),
)


def adc_from_dwi(
    b0: np.ndarray, b_high: np.ndarray, b_value_s_mm2: float, brain: np.ndarray | None = None
) -> np.ndarray:
    """Mono-exponential ADC from a b0 and one high-b trace-weighted image.

    ``ADC = ln(S0 / Sb) / b``. Signals are floored at 1 % of the b0's robust maximum so
    that noise-floor voxels (CSF at b1000) give a large, finite ADC rather than infinity.

    Parameters
    ----------
    b0, b_high : numpy.ndarray
        ``(z, y, x)`` magnitude images on the same grid.
    b_value_s_mm2 : float
        b-value of ``b_high`` in s/mm².
    brain : numpy.ndarray, optional
        ``(z, y, x)`` bool: outside it the ADC is NaN.

    Returns
    -------
    numpy.ndarray
        ``(z, y, x)`` float32 ADC in x10^-6 mm²/s, clipped to 0..5000.

    Raises
    ------
    ValueError
        If the shapes differ or ``b_value_s_mm2`` is not positive.
    """
    if b0.shape != b_high.shape:
        raise ValueError(f"b0 {b0.shape} and high-b {b_high.shape} images differ in shape")
    if not b_value_s_mm2 > 0:
        raise ValueError(f"the high b-value must be positive; got {b_value_s_mm2}")
    s0 = np.asarray(b0, dtype=np.float32)
    floor = max(float(np.percentile(s0, 99.0)) * 0.01, 1e-3)
    ratio = np.maximum(s0, floor) / np.maximum(np.asarray(b_high, dtype=np.float32), floor)
    adc = np.clip(np.log(ratio) / np.float32(b_value_s_mm2) * np.float32(1e6), 0.0, 5000.0)
    if brain is not None:
        adc = np.where(brain, adc, np.nan)
    return np.asarray(adc, dtype=np.float32)


def scanner_adc_um2_s(values: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, str]:
    """Bring a scanner ADC map to x10^-6 mm²/s, recognising its units from its values.

    Vendors store ADC as integers in x10^-6 mm²/s (Siemens, GE, most Philips), others as
    x10^-3 mm²/s or mm²/s floats (after RescaleSlope). The scale whose brain median falls
    in the physiological range is chosen.

    Parameters
    ----------
    values : numpy.ndarray
        ``(z, y, x)`` map as stored (after RescaleSlope/Intercept).
    brain : numpy.ndarray
        ``(z, y, x)`` bool brain mask on the same grid.

    Returns
    -------
    adc_um2_s : numpy.ndarray
        ``(z, y, x)`` float32 ADC in x10^-6 mm²/s (NaN outside ``brain``).
    units : str
        The units recognised, for the report.

    Raises
    ------
    ValueError
        If no brain voxel holds a positive value, or no scale gives a plausible median.
    """
    v = np.asarray(values, dtype=np.float64)
    inside = v[brain & (v > 0)]
    if inside.size == 0:
        raise ValueError("the scanner ADC map is empty (no positive value inside the brain)")
    median = float(np.median(inside))
    low, high = _BRAIN_MEDIAN_RANGE_UM2_S
    for factor, name in _ADC_UNITS:
        if low <= median * factor <= high:
            adc = np.where(brain, v * factor, np.nan).astype(np.float32)
            return adc, name
    raise ValueError(
        f"scanner ADC map: brain median {median:.4g} fits none of the known units "
        f"({', '.join(n for _, n in _ADC_UNITS)}); is it really an ADC map?"
    )


def mr_brain_mask(image: np.ndarray, pixel_mm: float, threshold: float | None = None) -> np.ndarray:
    """Intracranial mask of a T2(*)-weighted EPI volume (DWI b0 or DSC baseline).

    The skull is dark on EPI, so the intracranial space is the largest bright 3D
    component once the background and the (fat-suppressed) scalp are thresholded away:
    the threshold is half the Otsu level of the head, a small in-plane opening cuts
    thin bridges to the scalp, and holes are filled slice by slice.

    Parameters
    ----------
    image : numpy.ndarray
        ``(z, y, x)`` magnitude image.
    pixel_mm : float
        In-plane pixel size, to size the opening.
    threshold : float, optional
        Signal above which a voxel may be brain; default half the Otsu level. Scanner
        ADC maps are zero outside the head and their CSF is brightest, so they use 0.

    Returns
    -------
    numpy.ndarray
        ``(z, y, x)`` bool mask (empty when nothing bright is found).
    """
    img = np.asarray(image, dtype=np.float32)
    positive = img[img > 0]
    if positive.size == 0:
        return np.zeros(img.shape, dtype=bool)
    level = 0.5 * _otsu(positive) if threshold is None else threshold
    bright = img > level
    radius = max(1, round(2.0 / pixel_mm))
    disk = _disk(radius)
    opened = ndimage.binary_opening(bright, structure=disk[None])
    labels, count = ndimage.label(opened)
    if count == 0:
        return np.zeros(img.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    brain = labels == int(np.argmax(sizes))
    filled = np.stack([ndimage.binary_fill_holes(s) for s in brain])
    return np.asarray(filled, dtype=bool)


def adc_core(
    adc_um2_s: np.ndarray,
    brain: np.ndarray,
    voxel_volume_ml: float,
    *,
    threshold_um2_s: float = CORE_ADC_THRESHOLD_UM2_S,
    min_cluster_ml: float = 0.5,
    csf_adc_um2_s: float = CSF_ADC_UM2_S,
) -> tuple[np.ndarray, np.ndarray]:
    """Ischaemic core: ADC below the threshold in brain tissue, cleaned as for CT.

    Parameters
    ----------
    adc_um2_s : numpy.ndarray
        ``(z, y, x)`` ADC in x10^-6 mm²/s (NaN allowed outside the brain).
    brain : numpy.ndarray
        ``(z, y, x)`` bool intracranial mask.
    voxel_volume_ml : float
        Volume of one voxel.
    threshold_um2_s : float
        Core threshold.
    min_cluster_ml : float
        Smallest connected cluster kept.
    csf_adc_um2_s : float
        Voxels above this are CSF and excluded from the tissue.

    Returns
    -------
    core : numpy.ndarray
        ``(z, y, x)`` bool core mask.
    tissue : numpy.ndarray
        ``(z, y, x)`` bool brain tissue (brain without CSF) the core was searched in.
    """
    adc = np.nan_to_num(np.asarray(adc_um2_s, dtype=np.float32), nan=0.0)
    # The brain's rim mixes tissue with skull and CSF (low b0 and ADC noise): one voxel in.
    inner = ndimage.binary_erosion(brain, structure=_disk(1)[None])
    tissue = inner & (adc > 0) & (adc < csf_adc_um2_s)
    # A 3x3 in-plane median removes isolated noise voxels before the threshold.
    smoothed = ndimage.median_filter(np.where(tissue, adc, csf_adc_um2_s), size=(1, 3, 3))
    raw = tissue & (smoothed < threshold_um2_s)
    core = clean_mask(raw, tissue, voxel_volume_ml, min_cluster_ml)
    return core, tissue


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(yy * yy + xx * xx <= radius * radius)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu threshold of a 1D sample (between-class variance maximum)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0 / w0 - (total - m0) / w1) ** 2 * w0 * w1
    between = np.nan_to_num(between)
    return float(centres[int(np.argmax(between))])
