"""CT perfusion acquisition protocols of the validation family: when each slice is imaged.

A protocol fixes the sampling (regular, dense-then-sparse), the scan duration, the time
offset of every slice inside a frame (all slices at once, a helical pass, or a shuttle
between two table positions), the slab (slice count and thickness), the image noise and
the patient's arterial bolus (arrival time and width). The family samples every case by
every protocol, so that no single acquisition decides the analysis' accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SliceTiming = Literal["simultaneous", "spiral", "shuttle"]


@dataclass(frozen=True)
class AcquisitionProtocol:
    """How one CT perfusion study is acquired.

    Attributes
    ----------
    name : str
        Short identifier used in benchmark tables.
    interval_s : float
        Frame interval (after ``dense_until_s``, if set, the interval is ``sparse_interval_s``).
    duration_s : float
        Time of the last frame start from the first frame; frames are kept while
        ``t <= duration_s``.
    dense_until_s : float or None
        Dense-then-sparse sampling: ``interval_s`` up to this time, then ``sparse_interval_s``.
    sparse_interval_s : float
        Interval of the sparse part.
    slice_timing : {"simultaneous", "spiral", "shuttle"}
        Simultaneous: every slice of a frame at the frame time (wide detector). Spiral:
        slice ``z`` is imaged ``z / n_slices * spiral_fraction * interval`` after the frame
        start (a helical pass over the slab). Shuttle: the table moves between two halves
        of the slab; the upper half is imaged half an interval after the lower half.
    spiral_fraction : float
        Fraction of the frame interval a helical pass takes.
    slices : int
        Number of acquired slices.
    slice_mm : int
        Slice thickness = spacing in whole mm (the truth lives on a 1 mm grid, and each
        acquired slice averages the ``slice_mm`` truth slices it covers).
    noise_hu_at_045mm : float
        Per-voxel Gaussian noise sigma of the source images at 0.45 mm pixels and this
        slice thickness; images on coarser pixels get ``noise * 0.45 / pixel_mm``.
    arrival_s : float
        Arterial bolus arrival (first rise) after the scan start.
    bolus_width : float
        Width of the arterial bolus relative to a normal cardiac output (1 = normal);
        the dose is fixed, so the peak falls as ``1 / bolus_width``.
    """

    name: str
    interval_s: float
    duration_s: float
    dense_until_s: float | None = None
    sparse_interval_s: float = 3.0
    slice_timing: SliceTiming = "simultaneous"
    spiral_fraction: float = 0.8
    slices: int = 10
    slice_mm: int = 5
    noise_hu_at_045mm: float = 12.0
    arrival_s: float = 6.0
    bolus_width: float = 1.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.sparse_interval_s <= 0:
            raise ValueError(f"protocol {self.name}: frame intervals must be positive")
        if self.duration_s < 4 * self.interval_s:
            raise ValueError(f"protocol {self.name}: duration {self.duration_s} s is too short")
        if self.slices < 2 or self.slice_mm < 1:
            raise ValueError(f"protocol {self.name}: need >= 2 slices of >= 1 mm")
        if self.slice_timing == "shuttle" and self.slices % 2:
            raise ValueError(f"protocol {self.name}: a shuttle needs an even slice count")

    @property
    def slab_mm(self) -> float:
        """Coverage of the slab in mm."""
        return float(self.slices * self.slice_mm)


def frame_start_times_s(protocol: AcquisitionProtocol) -> np.ndarray:
    """Start time of every frame in seconds from the first frame.

    Parameters
    ----------
    protocol : AcquisitionProtocol
        The acquisition.

    Returns
    -------
    numpy.ndarray
        ``(t,)`` float64, strictly increasing, first 0, last ``<= duration_s``.
    """
    times = [0.0]
    while True:
        t = times[-1]
        dense = protocol.dense_until_s is None or t < protocol.dense_until_s - 1e-9
        step = protocol.interval_s if dense else protocol.sparse_interval_s
        if t + step > protocol.duration_s + 1e-9:
            break
        times.append(round(t + step, 6))
    return np.asarray(times, dtype=np.float64)


def slice_offsets_s(protocol: AcquisitionProtocol) -> np.ndarray:
    """Time of each slice relative to its frame's start, ``(z,)`` seconds."""
    z = np.arange(protocol.slices, dtype=np.float64)
    if protocol.slice_timing == "spiral":
        return z / protocol.slices * protocol.spiral_fraction * protocol.interval_s
    if protocol.slice_timing == "shuttle":
        return np.where(z < protocol.slices // 2, 0.0, 0.5 * protocol.interval_s)
    return np.zeros(protocol.slices)


def acquisition_times_s(protocol: AcquisitionProtocol) -> np.ndarray:
    """Acquisition time of every image, ``(t, z)`` seconds from the first image.

    The layout is that of ``PerfusionSeries.times_s``: frame ``t`` of slice ``z``.
    """
    return frame_start_times_s(protocol)[:, None] + slice_offsets_s(protocol)[None, :]


#: The protocols every case is sampled by. Together they cover 1, 1.5, 2 and 3 s sampling,
#: dense-then-sparse sampling, helical and shuttle slice offsets, durations of 25 to 90 s,
#: arterial arrival 3 to 12 s, bolus widths 1 to 2.5 x normal, noise 8 to 30 HU (at
#: 0.45 mm) and slices 1 to 10 mm thick.
PROTOCOLS: tuple[AcquisitionProtocol, ...] = (
    AcquisitionProtocol("1s_45s", interval_s=1.0, duration_s=45.0, arrival_s=6.0),
    AcquisitionProtocol(
        "1.5s_60s_wide",
        interval_s=1.5,
        duration_s=60.0,
        arrival_s=8.0,
        bolus_width=2.5,
        noise_hu_at_045mm=10.0,
    ),
    AcquisitionProtocol(
        "2s_60s_8mm",
        interval_s=2.0,
        duration_s=60.0,
        slices=8,
        slice_mm=8,
        arrival_s=5.0,
        noise_hu_at_045mm=10.0,
    ),
    AcquisitionProtocol(
        "3s_90s_10mm",
        interval_s=3.0,
        duration_s=90.0,
        slices=8,
        slice_mm=10,
        arrival_s=12.0,
        bolus_width=1.5,
        noise_hu_at_045mm=8.0,
    ),
    AcquisitionProtocol(
        "dense_sparse", interval_s=1.0, duration_s=60.0, dense_until_s=22.0, arrival_s=6.0
    ),
    AcquisitionProtocol(
        "spiral_1.5s",
        interval_s=1.5,
        duration_s=45.0,
        slice_timing="spiral",
        arrival_s=7.0,
        noise_hu_at_045mm=14.0,
    ),
    AcquisitionProtocol(
        "shuttle_3s",
        interval_s=3.0,
        duration_s=60.0,
        slice_timing="shuttle",
        slices=12,
        arrival_s=6.0,
    ),
    AcquisitionProtocol("short_25s", interval_s=1.5, duration_s=25.0, arrival_s=4.0),
    AcquisitionProtocol(
        "1s_35s",
        interval_s=1.0,
        duration_s=35.0,
        arrival_s=5.0,
        bolus_width=1.2,
        noise_hu_at_045mm=14.0,
    ),
    AcquisitionProtocol(
        "low_output", interval_s=2.0, duration_s=60.0, arrival_s=9.0, bolus_width=2.0
    ),
    AcquisitionProtocol(
        "thin_1mm",
        interval_s=1.5,
        duration_s=45.0,
        slices=40,
        slice_mm=1,
        arrival_s=6.0,
        noise_hu_at_045mm=26.0,
    ),
    AcquisitionProtocol(
        "low_dose",
        interval_s=1.0,
        duration_s=50.0,
        arrival_s=3.0,
        noise_hu_at_045mm=30.0,
    ),
)


def protocol_by_name(name: str) -> AcquisitionProtocol:
    """The protocol of ``PROTOCOLS`` called ``name``.

    Raises
    ------
    KeyError
        Naming the known protocols when ``name`` is not one of them.
    """
    for p in PROTOCOLS:
        if p.name == name:
            return p
    raise KeyError(f"unknown protocol {name!r}; known: {[p.name for p in PROTOCOLS]}")
