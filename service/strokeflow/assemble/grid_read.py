"""Read a CT perfusion straight into the analysis grid: slabs and in-plane bins.

The analysis averages thin slices into ~5 mm slabs and bins ~0.45 mm pixels into
~1.8 mm ones before anything else (``analysis.slabs``, ``analysis.motion.bin_inplane``).
Doing that after reading means holding the whole acquisition at full resolution first:
a 2400-image thin-slice study is 2.5 GB of float32 for a 30 MB analysis grid. Here each
slab (its input slices over all frames) is decoded, gap-filled in time, averaged and
binned by one worker thread, and only the result is kept; the decoder's file reads
and numpy's array operations release the GIL, so the threads overlap.

The operations and their order are those of the full-resolution path (rescale into
float32, interpolation of missing frames per input slice, slab mean, strided bin sums),
so the grid holds the same float32 values it would after ``combine_slices`` and
``bin_inplane``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from strokeflow.analysis.motion import bin_inplane
from strokeflow.analysis.slabs import SlabPlan
from strokeflow.assemble.files import InstanceHeader, read_frame

#: Interpolates the missing frames of one input slice ``(t, y, x)`` in place, given
#: that slice's times ``(t,)`` and missing mask ``(t,)``.
Interpolator = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class SliceImages:
    """The images of one input slice: ``(frame, header)`` pairs."""

    z: int
    images: list[tuple[int, InstanceHeader]]


def read_into_grid(
    slices: Sequence[SliceImages],
    plan: SlabPlan,
    factor: int,
    shape_tyx: tuple[int, int, int],
    times_s: np.ndarray,
    interpolate: Interpolator,
    workers: int,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every image, fill gaps in time, average slabs and bin, slab by slab.

    Parameters
    ----------
    slices : sequence of SliceImages
        Every input slice, in slice order (``slices[z].z == z``).
    plan : SlabPlan
        Slab grouping; slices outside the slabs (``plan.dropped_slices``) are decoded
        too, so that an unreadable file there is reported as before, but not kept.
    factor : int
        In-plane binning factor (1: none).
    shape_tyx : tuple of int
        ``(frames, rows, columns)`` of the input images.
    times_s : numpy.ndarray
        ``(t, z)`` acquisition times of the input slices (missing ones filled).
    interpolate : callable
        Fills the missing frames of one input slice in place.
    workers : int
        Threads.

    Returns
    -------
    grid : numpy.ndarray
        ``(t, n_slabs, rows // factor, columns // factor)`` float32.
    missing : numpy.ndarray
        ``(t, z)`` bool on the input slices: no image, or one that could not be decoded.
    errors : list of str
        Why each image that could not be decoded failed, in slice then frame order.
    """
    nt, ny, nx = shape_tyx
    nz = len(slices)
    n = plan.slices_per_slab
    grid = np.empty((nt, plan.n_slabs, ny // factor, nx // factor), dtype=np.float32)
    missing = np.ones((nt, nz), dtype=bool)
    units: list[tuple[int | None, list[int]]] = [
        (s, list(range(plan.first_slice + s * n, plan.first_slice + (s + 1) * n)))
        for s in range(plan.n_slabs)
    ]
    used = {z for _, zs in units for z in zs}
    units += [(None, [z]) for z in range(nz) if z not in used]

    # One decode buffer per thread, reused from unit to unit: a fresh one per unit is a
    # fresh mapping from the kernel (150 MB for a slab of five thin slices), whose pages
    # are faulted in and zeroed every time. Every element is written before it is read.
    buffers = threading.local()

    def load(unit: tuple[int | None, list[int]]) -> list[tuple[int, int, str]]:
        slab, zs = unit
        shape = (nt, len(zs), ny, nx)
        buf = getattr(buffers, "buf", None)
        if buf is None or buf.shape != shape:
            buf = buffers.buf = np.empty(shape, dtype=np.float32)
        errors: list[tuple[int, int, str]] = []
        for j, z in enumerate(zs):
            for t, header in slices[z].images:
                try:
                    read_frame(header, buf[t, j])
                except ValueError as exc:
                    errors.append((z, t, str(exc)))
                    continue
                missing[t, z] = False
            n_missing = int(missing[:, z].sum())
            if 0 < n_missing <= nt - 2:  # fewer than two frames: refused by the caller
                interpolate(buf[:, j], times_s[:, z], missing[:, z])
        if slab is None:
            return errors
        # Frame by frame, so that the mean's output is still in the CPU cache when it is
        # binned (a third less time than the slab at once; the same sums in the same
        # order, so the same values).
        for t in range(nt):
            mean = buf[t, 0] if len(zs) == 1 else buf[t].mean(axis=0, dtype=np.float32)
            grid[t, slab] = bin_inplane(mean, factor) if factor > 1 else mean
        return errors

    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = [e for unit_errors in pool.map(load, units) for e in unit_errors]
    errors.sort(key=lambda e: (e[0], e[1]))
    return grid, missing, [message for _, _, message in errors]
