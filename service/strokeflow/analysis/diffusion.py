"""Apparent diffusion coefficient, MR brain mask and the diffusion-defined ischaemic core.

The core is restricted diffusion as the stroke definition has it: low ADC *and* a
trace-weighted DWI brighter than the contralateral tissue; bilateral, mirror-symmetric
low ADC (deep white matter in DTI, the slab's edge) is set apart and never core.

ADC values are in x10^-6 mm²/s, which is µm²/s (``adc_um2_s``): normal grey matter
~800, white matter ~700, CSF ~3000, acute core < 620 (Purushotham 2015, the RAPID and
DEFUSE 3 threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokeflow.analysis.hemispheres import LEFT, RIGHT, Hemispheres, find_hemispheres
from strokeflow.analysis.lesions import clean_mask
from strokeflow.analysis.volume import Geometry

#: Published core threshold (x10^-6 mm²/s).
CORE_ADC_THRESHOLD_UM2_S = 620.0
#: A core voxel's trace DWI exceeds the contralateral tissue's by at least this ratio: the
#: 620 threshold against white matter (~720) alone gives exp(0.1) = 1.1 at b = 1000 with an
#: unchanged T2, so a real core (ADC ~500) is brighter still, and noise (3x3 median) and
#: symmetric anatomy stay below it.
MIN_DWI_RATIO = 1.1
#: Low ADC within this distance of a cluster's mirror image is its contralateral
#: counterpart (the midline is a line fitted to an imperfectly symmetric head).
SYMMETRY_RADIUS_MM = 6.0
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


@dataclass(frozen=True)
class DiffusionCore:
    """The diffusion-defined core and what was left out of it, on one ``(z, y, x)`` grid.

    Attributes
    ----------
    core : numpy.ndarray
        Bool core: ADC below the threshold, DWI brighter than the contralateral tissue,
        not mirrored by low ADC on the other side, cleaned.
    tissue : numpy.ndarray
        Bool brain tissue (brain without CSF and its rim) the core was searched in.
    symmetric : numpy.ndarray
        Bool low-ADC voxels whose mirror across the midline is low too (deep white
        matter of a DTI, the edge of the field of view): a bilateral pattern, not core.
    not_bright_ml : float
        Volume of low-ADC clusters without DWI hyperintensity, left out of the core.
    """

    core: np.ndarray
    tissue: np.ndarray
    symmetric: np.ndarray
    not_bright_ml: float


def mirror_across_midline(
    values: np.ndarray, hemispheres: Hemispheres, pixel_mm_yx: tuple[float, float], order: int
) -> np.ndarray:
    """Each voxel's value at its mirror position across the mid-sagittal line.

    Parameters
    ----------
    values : numpy.ndarray
        ``(z, y, x)`` image or mask.
    hemispheres : Hemispheres
        Midline of the same grid (one line for all slices).
    pixel_mm_yx : (float, float)
        Pixel size along y and x (the reflection is made in mm).
    order : int
        Interpolation order (0 for masks, 1 for images); 0 outside the grid.

    Returns
    -------
    numpy.ndarray
        ``(z, y, x)`` float32 (or bool for a bool input) mirrored values.
    """
    dy, dx = pixel_mm_yx
    cy, cx = hemispheres.centre_yx
    angle = np.radians(hemispheres.angle_deg)
    my, mx = float(np.cos(angle)), float(np.sin(angle))
    yy, xx = np.mgrid[0 : values.shape[1], 0 : values.shape[2]].astype(np.float64)
    py, px = (yy - cy) * dy, (xx - cx) * dx
    along = py * my + px * mx
    src = np.stack([cy + (2.0 * along * my - py) / dy, cx + (2.0 * along * mx - px) / dx])
    data = np.asarray(values, dtype=np.float32)
    out = np.stack([ndimage.map_coordinates(z, src, order=order, cval=0.0) for z in data])
    if values.dtype == bool:
        return np.asarray(out > 0.5)
    return np.asarray(out, dtype=np.float32)


def adc_core(
    adc_um2_s: np.ndarray,
    brain: np.ndarray,
    geometry: Geometry,
    *,
    dwi_trace: np.ndarray | None = None,
    threshold_um2_s: float = CORE_ADC_THRESHOLD_UM2_S,
    min_cluster_ml: float = 0.5,
    csf_adc_um2_s: float = CSF_ADC_UM2_S,
    min_dwi_ratio: float = MIN_DWI_RATIO,
) -> DiffusionCore:
    """Ischaemic core: low ADC with DWI hyperintensity in brain tissue, cleaned as for CT.

    The stroke definition is restricted diffusion: an ADC below the threshold *and* a
    trace DWI brighter than the contralateral tissue. Each connected low-ADC cluster is
    judged whole: when most of it has low ADC near its mirror image across the midline
    it is a bilateral pattern (anisotropic deep white matter, the corticospinal tracts,
    the slab's edge) and never core; otherwise it is core when its median DWI exceeds
    ``min_dwi_ratio`` x the contralateral DWI (the mirror position, or the other
    hemisphere's median on that slice where the mirror is not tissue).

    Parameters
    ----------
    adc_um2_s : numpy.ndarray
        ``(z, y, x)`` ADC in x10^-6 mm²/s (NaN allowed outside the brain).
    brain : numpy.ndarray
        ``(z, y, x)`` bool intracranial mask.
    geometry : Geometry
        Grid of the arrays (voxel volume, pixel size, sides).
    dwi_trace : numpy.ndarray, optional
        ``(z, y, x)`` high-b trace-weighted DWI on the same grid; without it only the ADC
        and the symmetry decide.
    threshold_um2_s : float
        Core threshold.
    min_cluster_ml : float
        Smallest connected cluster kept.
    csf_adc_um2_s : float
        Voxels above this are CSF and excluded from the tissue.
    min_dwi_ratio : float
        A core cluster's median DWI over the contralateral DWI exceeds this.

    Returns
    -------
    DiffusionCore
    """
    vv = geometry.voxel_volume_ml
    adc = np.nan_to_num(np.asarray(adc_um2_s, dtype=np.float32), nan=0.0)
    # The brain's rim mixes tissue with skull and CSF (low b0 and ADC noise): one voxel in.
    inner = ndimage.binary_erosion(brain, structure=_disk(1)[None])
    tissue = inner & (adc > 0) & (adc < csf_adc_um2_s)
    # A 3x3 in-plane median removes isolated noise voxels before the threshold.
    smoothed = ndimage.median_filter(np.where(tissue, adc, csf_adc_um2_s), size=(1, 3, 3))
    low = tissue & (smoothed < threshold_um2_s)
    empty = np.zeros(low.shape, dtype=bool)
    if not low.any() or not tissue.any():
        return DiffusionCore(empty, tissue, empty, 0.0)
    hemis = find_hemispheres(brain, geometry)
    pixel_yx = (geometry.voxel_size_mm[1], geometry.voxel_size_mm[2])
    # The head is never exactly symmetric about the midline found: low ADC within
    # SYMMETRY_RADIUS_MM of a cluster's mirror image counts as its counterpart.
    radius_px = max(1, round(SYMMETRY_RADIUS_MM / min(pixel_yx)))
    mirrored = mirror_across_midline(low, hemis, pixel_yx, order=0)
    near_mirror = ndimage.binary_dilation(mirrored, structure=_disk(radius_px)[None])
    ratio = None
    if dwi_trace is not None:
        ratio = _contralateral_dwi_ratio(dwi_trace, tissue, hemis, pixel_yx)
    clusters = clean_mask(low, tissue, vv, min_cluster_ml)
    labels, _ = ndimage.label(clusters, structure=np.ones((3, 3, 3), dtype=bool))
    core = np.zeros(low.shape, dtype=bool)
    symmetric = np.zeros(low.shape, dtype=bool)
    not_bright = 0
    for k, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None:
            continue
        member = labels[where] == k
        if np.mean(near_mirror[where][member]) >= 0.5:
            symmetric[where] |= member
        elif ratio is not None and not np.nanmedian(ratio[where][member]) > min_dwi_ratio:
            not_bright += int(np.count_nonzero(member))
        else:
            core[where] |= member
    return DiffusionCore(core, tissue, symmetric, not_bright * vv)


def _contralateral_dwi_ratio(
    dwi: np.ndarray,
    tissue: np.ndarray,
    hemis: Hemispheres,
    pixel_yx: tuple[float, float],
) -> np.ndarray:
    """(3x3 median) DWI over the contralateral DWI: at the mirror position where that is
    tissue, else the other hemisphere's tissue median on the slice (NaN where neither)."""
    smooth = ndimage.median_filter(np.asarray(dwi, dtype=np.float32), size=(1, 3, 3))
    mirrored = mirror_across_midline(smooth, hemis, pixel_yx, order=1)
    mirror_tissue = mirror_across_midline(tissue, hemis, pixel_yx, order=0)
    reference = np.where(mirror_tissue, mirrored, np.nan)
    for z in range(dwi.shape[0]):
        for side in (LEFT, RIGHT):
            other = tissue[z] & (hemis.side[z] == -side)
            fallback = float(np.median(smooth[z][other])) if other.any() else np.nan
            here = (hemis.side[z] == side) & ~mirror_tissue[z]
            reference[z][here] = fallback
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(smooth / reference, dtype=np.float32)


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
