"""The 4D perfusion acquisition handed to the analysis, and its geometry."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of a ``(z, y, x)`` grid lie in the patient.

    Attributes
    ----------
    affine_lps : numpy.ndarray
        ``(4, 4)`` matrix mapping a homogeneous voxel index ``(x, y, z, 1)`` (column,
        row, slice; note the order is the reverse of the array axes) to DICOM patient
        coordinates in mm (LPS: +x towards the patient's left, +y posterior, +z head).
    """

    affine_lps: np.ndarray

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        """Voxel size ``(dz, dy, dx)`` in mm: slice spacing along the slice normal, edges.

        With a gantry tilt the slice axis of the affine is sheared (longer than the
        spacing); ``dz`` is still the distance between the slice planes, so that
        ``dz * dy * dx`` is the voxel volume.
        """
        a = self.affine_lps[:3, :3]
        norms = np.linalg.norm(a, axis=0)
        normal = np.cross(a[:, 0], a[:, 1])
        length = float(np.linalg.norm(normal))
        dz = abs(float(a[:, 2] @ normal)) / length if length > 0 else float(norms[2])
        return dz, float(norms[1]), float(norms[0])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL."""
        return float(abs(np.linalg.det(self.affine_lps[:3, :3]))) / 1000.0

    def downsampled(self, factor_yx: int) -> Geometry:
        """Geometry of the grid after ``factor_yx`` x ``factor_yx`` in-plane binning."""
        if factor_yx == 1:
            return self
        a = self.affine_lps.copy()
        # Voxel index i of the binned grid covers fine indices f*i .. f*i + f - 1,
        # whose centre is at fine index f*i + (f - 1) / 2.
        offset = a[:3, 0] * (factor_yx - 1) / 2.0 + a[:3, 1] * (factor_yx - 1) / 2.0
        a[:3, 0] *= factor_yx
        a[:3, 1] *= factor_yx
        a[:3, 3] += offset
        return Geometry(a)

    def patient_left_sign_x(self) -> int:
        """+1 if increasing x index moves towards the patient's left, else -1."""
        return 1 if self.affine_lps[0, 0] >= 0 else -1

    def patient_posterior_sign_y(self) -> int:
        """+1 if increasing y index moves towards the patient's back, else -1."""
        return 1 if self.affine_lps[1, 1] >= 0 else -1


@dataclass(frozen=True)
class PerfusionSeries:
    """A time-resolved acquisition ready for analysis.

    Attributes
    ----------
    signal : numpy.ndarray
        ``(t, z, y, x)`` float32; Hounsfield units for CT, raw signal for MR DSC.
    times_s : numpy.ndarray
        ``(t, z)`` float64: acquisition time of frame ``t`` at slice ``z`` in seconds
        from the first acquired image. Slices of one frame may differ (multi-slab
        acquisitions), so every slice keeps its own clock.
    geometry : Geometry
        Position of the ``(z, y, x)`` grid.
    missing : numpy.ndarray
        ``(t, z)`` bool: True where no image was received and the frame was filled
        by interpolation in time.
    echo_time_s : float or None
        MR only: echo time, for the signal to delta-R2* conversion.
    """

    signal: np.ndarray
    times_s: np.ndarray
    geometry: Geometry
    missing: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    echo_time_s: float | None = None

    def __post_init__(self) -> None:
        if self.signal.ndim != 4:
            raise ValueError(f"signal must be (t, z, y, x); got shape {self.signal.shape}")
        nt, nz = self.signal.shape[:2]
        if self.times_s.shape != (nt, nz):
            raise ValueError(f"times_s must be (t, z) = {(nt, nz)}; got {self.times_s.shape}")
        if self.missing.size == 0:
            object.__setattr__(self, "missing", np.zeros((nt, nz), dtype=bool))
        elif self.missing.shape != (nt, nz):
            raise ValueError(f"missing must be (t, z) = {(nt, nz)}; got {self.missing.shape}")
