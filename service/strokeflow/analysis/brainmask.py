"""Head, brain, CSF, vessel and analysable-tissue masks of a CT perfusion slab."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from strokeflow.analysis.denoise import smooth_within_mask

#: Above this the voxel is bone (the skull ring); cortical bone is > 1000 HU, and 150 HU
#: stays above any enhancing brain tissue while still catching thin, partial-volume bone.
BONE_MIN_HU = 150.0
#: Below this the voxel is air (or fat-air partial volume), never brain.
AIR_MAX_HU = -100.0
#: Body outline: anything denser than this is part of the head (or the head rest).
HEAD_MIN_HU = -300.0
#: Between CSF (0..10 HU) and white matter (25..30 HU).
CSF_MAX_HU = 15.0
#: Smallest intracranial component kept, to drop islands enclosed by skull-base bone.
MIN_BRAIN_COMPONENT_ML = 5.0


@dataclass(frozen=True)
class BrainMasks:
    """Voxel classes of a ``(z, y, x)`` slab, all bool arrays of that shape.

    Attributes
    ----------
    head : numpy.ndarray
        Everything inside the body outline.
    brain : numpy.ndarray
        Intracranial content: inside the skull, no bone, no air, eroded by one voxel at
        the inner skull surface (partial volume and beam hardening).
    csf : numpy.ndarray
        Brain voxels of CSF density (ventricles, sulci, cisterns).
    vessels : numpy.ndarray
        Large arteries and venous sinuses (strongly enhancing), slightly dilated.
    tissue : numpy.ndarray
        ``brain & ~csf & ~vessels``: the voxels perfusion maps are computed on.
    unmeasured : numpy.ndarray
        Tissue-density voxels left out of ``tissue`` only because their curves are
        contaminated: the one-voxel rim at the inner skull surface and the rim the
        vessel mask is dilated by. They are brain tissue, so a lesion reaching them
        includes them (``analysis.lesions.fill_unmeasured``); without them the core lost
        about 10 % of its volume next to every vessel and the cortex
        (``docs/deconvolution.md``).
    """

    head: np.ndarray
    brain: np.ndarray
    csf: np.ndarray
    vessels: np.ndarray
    tissue: np.ndarray
    unmeasured: np.ndarray


def brain_masks(
    baseline_hu: np.ndarray,
    enhancement_max_hu: np.ndarray,
    pixel_mm: float,
    slice_mm: float,
    *,
    csf_max_hu: float = CSF_MAX_HU,
    csf_smoothing_mm: float = 2.0,
    csf_edge_margin_hu: float = 5.0,
    vessel_margin_hu: float = 60.0,
) -> BrainMasks:
    """Classify the voxels of a CT perfusion slab.

    Parameters
    ----------
    baseline_hu : numpy.ndarray
        ``(z, y, x)`` mean of the pre-contrast frames, in HU.
    enhancement_max_hu : numpy.ndarray
        ``(z, y, x)`` maximum over time of ``signal - baseline``, in HU.
    pixel_mm, slice_mm : float
        In-plane pixel size and slice spacing in mm.
    csf_max_hu : float
        Brain voxels whose smoothed baseline is below this are CSF.
    csf_smoothing_mm : float
        Sigma of the in-brain smoothing of the baseline before the CSF threshold.
    csf_edge_margin_hu : float
        Neighbours of CSF voxels also count as CSF when their unsmoothed baseline is
        below ``csf_max_hu + csf_edge_margin_hu``.
    vessel_margin_hu : float
        Least margin of the vessel threshold above the median brain enhancement.

    Returns
    -------
    BrainMasks

    Raises
    ------
    ValueError
        If the shapes disagree, the sizes are not positive, or no skull is found.
    """
    if baseline_hu.ndim != 3:
        raise ValueError(f"baseline must be (z, y, x); got shape {baseline_hu.shape}")
    if enhancement_max_hu.shape != baseline_hu.shape:
        raise ValueError(
            f"enhancement shape {enhancement_max_hu.shape} differs from baseline shape "
            f"{baseline_hu.shape}"
        )
    if not (pixel_mm > 0 and slice_mm > 0):
        raise ValueError(f"voxel size must be positive; got {pixel_mm} mm x {slice_mm} mm")
    base = np.asarray(baseline_hu, dtype=np.float32)
    enh = np.asarray(enhancement_max_hu, dtype=np.float32)

    head = _head(base)
    bone = base > BONE_MIN_HU
    if not bone.any():
        raise ValueError(
            f"no skull found: no voxel above {BONE_MIN_HU:.0f} HU; is the baseline a CT in HU?"
        )
    # Skull interior, before removing its 1-voxel rim: used for vessels too, since the
    # superior sagittal sinus lies right against the inner table.
    intracranial = _skull_interior(bone, base, pixel_mm) & head
    intracranial = _drop_small_components(intracranial, pixel_mm, slice_mm)
    if not intracranial.any():
        raise ValueError(
            "no closed skull contour in any slice: cannot tell brain from scalp "
            "(is the head fully inside the field of view?)"
        )
    # Erode at the inner skull surface only (not towards air, there is none inside):
    # voxels touching bone mix bone and brain and are shifted by beam hardening.
    near_bone = ndimage.binary_dilation(bone, structure=_inplane(np.ones((3, 3), bool)))
    brain = intracranial & ~near_bone

    # Low-dose noise (several HU after binning and averaging the baseline frames) is of
    # the order of the CSF-to-white-matter gap, so a voxel-wise threshold would speckle
    # white matter with "CSF"; smoothing within the brain lowers the noise while bone
    # and scalp cannot leak in.
    sigma_px = csf_smoothing_mm / pixel_mm
    smoothed = smooth_within_mask(base, brain, (sigma_px, sigma_px))
    seeds = brain & (smoothed < csf_max_hu)
    # Smoothing also pulls the CSF voxels at a ventricle or sulcus edge up towards
    # tissue values; take back the neighbours of CSF whose own baseline is still low.
    # They are partial-volume voxels at best, and partial-volume CSF would read as low
    # blood volume, that is as false core, so erring towards CSF is the safe side.
    ring = ndimage.binary_dilation(seeds, structure=_inplane(np.ones((3, 3), bool)))
    csf = seeds | (ring & brain & (base < csf_max_hu + csf_edge_margin_hu))
    # Thin sulci (one voxel wide) vanish in the smoothed image: a voxel well below the
    # threshold with a low neighbour (a sulcus is a line, noise is speckle) is CSF too.
    low = brain & (base < csf_max_hu)
    low_neighbours = ndimage.convolve(
        low.astype(np.uint8), _inplane(np.ones((3, 3), np.uint8)), mode="constant"
    )
    # "Well below": by the margin, or by three noise sigmas of the baseline when it is
    # noisier (robust sigma from differences of horizontal neighbours in the brain).
    pairs = brain[:, :, 1:] & brain[:, :, :-1]
    diffs = (base[:, :, 1:] - base[:, :, :-1])[pairs]
    noise_hu = 1.4826 * float(np.median(np.abs(diffs))) / np.sqrt(2.0) if diffs.size else 0.0
    margin = max(csf_edge_margin_hu, 3.0 * noise_hu)
    csf |= brain & (base < csf_max_hu - margin) & (low_neighbours >= 2)

    lumen, vessels = _vessels(enh, intracranial, brain, vessel_margin_hu)
    tissue = brain & ~csf & ~vessels
    # Rims of tissue density, not CSF, not the vessel lumen itself.
    rims = (intracranial & near_bone & ~bone) | (vessels & ~lumen)
    unmeasured = rims & ~lumen & ~csf & ~tissue & (base >= csf_max_hu)
    return BrainMasks(
        head=head, brain=brain, csf=csf, vessels=vessels, tissue=tissue, unmeasured=unmeasured
    )


def _inplane(structure_2d: np.ndarray) -> np.ndarray:
    """A 2-D structuring element as a (1, y, x) 3-D one: operate slice by slice."""
    return structure_2d[np.newaxis]


def _disk(radius_px: int) -> np.ndarray:
    r = np.arange(-radius_px, radius_px + 1)
    return np.asarray(r[:, None] ** 2 + r[None, :] ** 2 <= radius_px**2)


def _head(base: np.ndarray) -> np.ndarray:
    """Largest 3-D body component above the air threshold, holes filled per slice."""
    body = base > HEAD_MIN_HU
    labels, n = ndimage.label(body)
    if n == 0:
        return body
    sizes = np.bincount(labels.ravel())[1:]
    head = labels == (int(np.argmax(sizes)) + 1)
    return np.asarray(ndimage.binary_fill_holes(head, structure=_inplane(_cross())))


def _cross() -> np.ndarray:
    return np.asarray(ndimage.generate_binary_structure(2, 1))


def _skull_interior(bone: np.ndarray, base: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Per slice: the non-bone, non-air region enclosed by the skull ring.

    Thin or partial-volume bone can leave gaps in the ring; the ring is closed with
    growing disks (up to ~15 mm) until the enclosed region is a plausible share of the
    head section, rather than giving up on that slice.
    """
    soft = (base > AIR_MAX_HU) & ~bone
    out = np.zeros_like(bone)
    radii = sorted({0, *(max(1, round(mm / pixel_mm)) for mm in (2.0, 5.0, 10.0, 15.0))})
    for z in range(bone.shape[0]):
        ring = bone[z]
        if not ring.any():
            continue
        section = ndimage.binary_fill_holes(ring).sum()
        for r in radii:
            closed = ndimage.binary_closing(ring, structure=_disk(r)) if r else ring
            enclosed = ndimage.binary_fill_holes(closed) & ~closed
            inside = enclosed & soft[z]
            # An open ring encloses (almost) nothing; a closed one most of the section.
            if inside.sum() >= 0.3 * max(section, 1) and inside.any():
                out[z] = inside
                break
    return out


def _drop_small_components(mask: np.ndarray, pixel_mm: float, slice_mm: float) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    voxel_ml = pixel_mm * pixel_mm * slice_mm / 1000.0
    sizes_ml = np.bincount(labels.ravel())[1:] * voxel_ml
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = sizes_ml >= min(MIN_BRAIN_COMPONENT_ML, float(sizes_ml.max()))
    return np.asarray(keep[labels])


def _vessels(
    enh: np.ndarray, intracranial: np.ndarray, brain: np.ndarray, margin_hu: float
) -> tuple[np.ndarray, np.ndarray]:
    """Strongly enhancing voxels (the lumen) and the lumen dilated by one voxel.

    Tissue peaks at ~10..30 HU (plus the upward bias of a maximum over noisy frames);
    vessels at > 100 HU. The threshold sits a robust distance above the brain median:
    ``median + max(margin, 6 sigma)``, sigma from the median absolute deviation.
    """
    values = enh[brain] if brain.any() else enh[intracranial]
    med = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - med)))
    threshold = med + max(margin_hu, 6.0 * sigma)
    # Search one voxel beyond the eroded brain: the sagittal sinus hugs the inner table.
    region = ndimage.binary_dilation(intracranial, structure=_inplane(np.ones((3, 3), bool)))
    core = (enh > threshold) & region
    # One voxel of dilation catches the partial-volume rim, whose enhancement would
    # otherwise be read as hyperperfused tissue.
    dilated = ndimage.binary_dilation(core, structure=_inplane(np.ones((3, 3), bool)))
    return np.asarray(core & intracranial), np.asarray(dilated & intracranial)
