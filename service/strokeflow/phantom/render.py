"""Image a fine-grid truth model with an acquisition protocol: slice averaging and noise.

The truth lives on a grid that is finer in z than any acquired slice (``fine_per_slice``
truth slices per acquired slice). Every truth voxel holds an unenhanced attenuation, the
index of its tissue class (or -1) and partial volumes of the vascular curves. An acquired
slice is the mean of the truth slices it covers (slice thickness as partial-volume
averaging), evaluated at that slice's own acquisition times, plus Gaussian noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from strokeflow.phantom.bolus import sample_curves


@dataclass(frozen=True)
class FineModel:
    """Truth on the fine grid, ``(z_fine, y, x)`` arrays.

    Attributes
    ----------
    base_hu : numpy.ndarray
        float32 unenhanced attenuation.
    tissue_class : numpy.ndarray
        intp index into the tissue curves, -1 where the voxel holds no perfused tissue.
    vascular_pv : dict of str to numpy.ndarray
        float32 fraction of the voxel filled by the blood of each named vascular curve.
    fine_per_slice : int
        Truth slices per acquired slice.
    """

    base_hu: np.ndarray
    tissue_class: np.ndarray
    vascular_pv: dict[str, np.ndarray] = field(default_factory=dict)
    fine_per_slice: int = 1

    def __post_init__(self) -> None:
        if self.base_hu.shape != self.tissue_class.shape:
            raise ValueError("base_hu and tissue_class must have one shape")
        if self.base_hu.shape[0] % self.fine_per_slice:
            raise ValueError(
                f"{self.base_hu.shape[0]} truth slices do not split into slices of "
                f"{self.fine_per_slice}"
            )
        for name, pv in self.vascular_pv.items():
            if pv.shape != self.base_hu.shape:
                raise ValueError(f"partial volume map {name!r} has shape {pv.shape}")

    @property
    def n_slices(self) -> int:
        """Number of acquired slices."""
        return self.base_hu.shape[0] // self.fine_per_slice


def render_series(
    model: FineModel,
    fine_s: np.ndarray,
    tissue_curves_hu: np.ndarray,
    vascular_curves_hu: dict[str, np.ndarray],
    times_s: np.ndarray,
    noise_sigma_hu: float,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """The acquired ``(t, z, y, x)`` float32 HU of a model.

    Parameters
    ----------
    model : FineModel
        Truth on the fine grid.
    fine_s : numpy.ndarray
        ``(n,)`` uniform grid the curves are given on.
    tissue_curves_hu : numpy.ndarray
        ``(n_classes, n)`` enhancement of each tissue class.
    vascular_curves_hu : dict of str to numpy.ndarray
        ``(n,)`` enhancement of pure blood of each vascular curve named in the model.
    times_s : numpy.ndarray
        ``(t, z)`` acquisition time of every image.
    noise_sigma_hu : float
        Sigma of the independent Gaussian noise per voxel and image.
    rng : numpy.random.Generator or None
        Noise source; None gives the noise-free series.

    Returns
    -------
    numpy.ndarray
        ``(t, z, y, x)`` float32.
    """
    nt, nz = times_s.shape
    if nz != model.n_slices:
        raise ValueError(f"times for {nz} slices, model has {model.n_slices}")
    m = model.fine_per_slice
    _, ny, nx = model.base_hu.shape
    out = np.empty((nt, nz, ny, nx), dtype=np.float32)
    for z in range(nz):
        fine = slice(z * m, (z + 1) * m)
        table = sample_curves(fine_s, tissue_curves_hu, times_s[:, z]).astype(np.float32)
        # A zero column for voxels without tissue, addressed by index -1.
        table = np.concatenate([table, np.zeros((nt, 1), dtype=np.float32)], axis=1)
        acc = np.zeros((nt, ny, nx), dtype=np.float32)
        for cls in model.tissue_class[fine]:
            acc += table[:, cls]
        acc /= np.float32(m)
        for name, pv in model.vascular_pv.items():
            curve = np.interp(times_s[:, z], fine_s, vascular_curves_hu[name]).astype(np.float32)
            acc += curve[:, None, None] * pv[fine].mean(axis=0)[None]
        out[:, z] = acc + model.base_hu[fine].mean(axis=0)[None]
    if rng is not None and noise_sigma_hu > 0:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise_sigma_hu)
    return out


def grid_affine(matrix: int, pixel_mm: float, slices: int, slice_mm: float) -> np.ndarray:
    """Affine of an axial grid centred on the LPS origin.

    Columns go to the patient's left, rows posterior, slices towards the head; voxel
    ``(x, y, z, 1)`` maps to patient mm, as ``strokeflow.analysis.volume.Geometry``.
    """
    half = (matrix - 1) / 2.0 * pixel_mm
    affine = np.diag([pixel_mm, pixel_mm, float(slice_mm), 1.0])
    affine[:3, 3] = (-half, -half, -(slices - 1) / 2.0 * slice_mm)
    return affine


def pixel_centres_mm(matrix: int, pixel_mm: float) -> np.ndarray:
    """In-plane coordinates of the pixel centres (mm), centred on 0."""
    return (np.arange(matrix) - (matrix - 1) / 2.0) * pixel_mm
