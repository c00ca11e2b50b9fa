"""Mid-sagittal line and left/right hemisphere labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strokeflow.analysis.volume import Geometry

LEFT = 1
RIGHT = -1


@dataclass(frozen=True)
class Hemispheres:
    """Hemisphere of every voxel of a ``(z, y, x)`` grid.

    Attributes
    ----------
    side : numpy.ndarray
        ``(z, y, x)`` int8: ``LEFT`` (+1), ``RIGHT`` (-1), or 0 on the midline itself
        (within half a pixel), which belongs to neither side.
    centre_yx : tuple of float
        A point of the midline, in pixels.
    angle_deg : float
        Angle of the midline from the image's anterior-posterior (row) axis.
    """

    side: np.ndarray
    centre_yx: tuple[float, float]
    angle_deg: float


def find_hemispheres(brain: np.ndarray, geometry: Geometry) -> Hemispheres:
    """Split the brain along its mid-sagittal line.

    The midline is the longest principal axis of the brain mask projected on the axial
    plane: the cerebrum is longer front-to-back than side-to-side, and the axis passes
    through the centroid, which is robust to a lesion in one hemisphere (the mask holds
    tissue and CSF alike). In-plane head rotation is followed; the slab is thin, so one
    line serves all slices.

    Parameters
    ----------
    brain : numpy.ndarray
        ``(z, y, x)`` bool intracranial mask.
    geometry : Geometry
        Voxel geometry, to name the sides in the patient's frame.

    Returns
    -------
    Hemispheres
    """
    if not brain.any():
        raise ValueError("no brain voxels: cannot find the midline")
    footprint = brain.any(axis=0)
    ys, xs = np.nonzero(footprint)
    cy, cx = float(ys.mean()), float(xs.mean())
    _, dy, dx = geometry.voxel_size_mm
    # Principal axes in mm, so that anisotropic pixels do not tilt the line.
    coords = np.stack([(ys - cy) * dy, (xs - cx) * dx])
    cov = coords @ coords.T / coords.shape[1]
    eigvals, eigvecs = np.linalg.eigh(cov)
    major = eigvecs[:, int(np.argmax(eigvals))]  # (y, x) direction of the midline
    if abs(major[0]) < abs(major[1]):
        # The head is wider than long in this image: fall back to the row axis.
        major = np.array([1.0, 0.0])
    if major[0] < 0:
        major = -major
    normal = np.array([-major[1], major[0]])  # points towards increasing x
    if normal[1] < 0:
        normal = -normal
    yy, xx = np.mgrid[0 : brain.shape[1], 0 : brain.shape[2]]
    signed_mm = (yy - cy) * dy * normal[0] + (xx - cx) * dx * normal[1]
    half_pixel_mm = 0.5 * dx
    towards_x = np.where(
        signed_mm > half_pixel_mm, 1, np.where(signed_mm < -half_pixel_mm, -1, 0)
    ).astype(np.int8)
    side_2d = towards_x * np.int8(geometry.patient_left_sign_x())
    side = np.broadcast_to(side_2d, brain.shape).copy()
    angle = float(np.degrees(np.arctan2(major[1], major[0])))
    return Hemispheres(side=side, centre_yx=(cy, cx), angle_deg=angle)


def side_name(side: int) -> str | None:
    """``"left"``, ``"right"`` or None for a side code."""
    return {LEFT: "left", RIGHT: "right"}.get(side)
