"""Kudo-style tile phantom: a grid of tiles of known CBF x MTT per (delay, residue) slice.

After the digital phantom Kudo et al. used to compare CT perfusion software (Radiology
2010; 254:200-209): every slice holds a 6 x 5 grid of square tiles, rows of CBF
``TILE_CBF`` and columns of MTT ``TILE_MTT_S``; each slice has one tissue delay
(``TILE_DELAYS_S``, the Tmax truth) and one residue shape (exponential, gamma, box). The
tiles sit in a head-like background (normal tissue inside a skull ring) so that the
pipeline finds a brain, and a small arterial block (3 x 3 pixels, full blood) and a
larger venous block give it an arterial input and a venous output.

Slices are 5 mm whatever the protocol (the tiles do not vary in z, and thin slices would
be combined across delays); the protocol's noise is rescaled to that thickness.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.phantom.bolus import (
    RESIDUE_KINDS,
    TissueClass,
    arterial_curve,
    fine_grid_s,
    tissue_curves,
    venous_curve,
)
from strokeflow.phantom.family import FOV_MM, MATRIX, case_rng
from strokeflow.phantom.protocols import AcquisitionProtocol, acquisition_times_s
from strokeflow.phantom.render import FineModel, grid_affine, pixel_centres_mm, render_series

TILE_CBF = (5.0, 10.0, 20.0, 40.0, 60.0, 80.0)
TILE_MTT_S = (2.0, 4.0, 8.0, 12.0, 16.0)
TILE_DELAYS_S = (0.0, 1.5, 3.0, 4.5, 6.0, 8.0)
TILE_PX, TILE_PITCH_PX = 7, 9
TILE_SLICE_MM = 5
#: Background tissue: CBF, MTT and HU before contrast.
BACKGROUND = (45.0, 4.0, 35.0)
_HEAD_SEMI_MM, _SKULL_MM, _SCALP_MM = (70.0, 88.0), 8.0, 3.0


@dataclass(frozen=True)
class TileCase:
    """A tile phantom acquisition and its truth.

    Attributes
    ----------
    series : PerfusionSeries
        ``(t, z, y, x)`` HU, z = ``len(TILE_DELAYS_S) * 3`` slices.
    truth : dict
        JSON-ready: protocol, curves and ``tiles``, one entry per tile with its slice,
        row, column, pixel bounds and CBF, CBV, MTT, Tmax and residue.
    tile_index : numpy.ndarray
        ``(z, y, x)`` int32 index into ``truth["tiles"]``, -1 outside tiles.
    """

    series: PerfusionSeries
    truth: dict[str, Any]
    tile_index: np.ndarray


def _tile_origin_px(n: int) -> tuple[int, int]:
    rows, cols = len(TILE_CBF), len(TILE_MTT_S)
    height = rows * TILE_PITCH_PX - (TILE_PITCH_PX - TILE_PX)
    width = cols * TILE_PITCH_PX - (TILE_PITCH_PX - TILE_PX)
    return (n - height) // 2, (n - width) // 2


def simulate_tile_case(protocol: AcquisitionProtocol, seed: int, *, noise: bool = True) -> TileCase:
    """Simulate the tile phantom acquired with ``protocol``.

    Parameters
    ----------
    protocol : AcquisitionProtocol
        Timing, noise and bolus; its slab is replaced by the tile slices.
    seed : int
        Seeds the arterial peak and the noise.
    noise : bool
        False gives the noise-free series.

    Returns
    -------
    TileCase
    """
    n_slices = len(TILE_DELAYS_S) * len(RESIDUE_KINDS)
    acq = dataclasses.replace(protocol, slices=n_slices, slice_mm=TILE_SLICE_MM)
    pixel_mm = FOV_MM / MATRIX
    c = pixel_centres_mm(MATRIX, pixel_mm)
    y, x = c[:, None], c[None, :]
    a, b = _HEAD_SEMI_MM
    q = (x / a) ** 2 + (y / b) ** 2
    inner = (x / (a - _SCALP_MM - _SKULL_MM)) ** 2 + (y / (b - _SCALP_MM - _SKULL_MM)) ** 2
    skull_in = (x / (a - _SCALP_MM)) ** 2 + (y / (b - _SCALP_MM)) ** 2
    base2d = np.where(q < 1, 30.0, -1000.0)
    base2d = np.where(skull_in < 1, 1300.0, base2d)
    brain = inner < 1
    base2d = np.where(brain, BACKGROUND[2], base2d).astype(np.float32)

    classes = [TissueClass(BACKGROUND[0], BACKGROUND[1], 0.0, "exponential")]
    tiles: list[dict[str, Any]] = []
    tile_index = np.full((n_slices, MATRIX, MATRIX), -1, dtype=np.int32)
    cls = np.where(brain, 0, -1)[None].repeat(n_slices, axis=0).astype(np.intp)
    r0, c0 = _tile_origin_px(MATRIX)
    for z in range(n_slices):
        residue = RESIDUE_KINDS[z // len(TILE_DELAYS_S)]
        delay = TILE_DELAYS_S[z % len(TILE_DELAYS_S)]
        for i, cbf in enumerate(TILE_CBF):
            for j, mtt in enumerate(TILE_MTT_S):
                y0, x0 = r0 + i * TILE_PITCH_PX, c0 + j * TILE_PITCH_PX
                tile = TissueClass(cbf, mtt, delay, residue)
                cls[z, y0 : y0 + TILE_PX, x0 : x0 + TILE_PX] = len(classes)
                tile_index[z, y0 : y0 + TILE_PX, x0 : x0 + TILE_PX] = len(tiles)
                classes.append(tile)
                tiles.append(
                    {
                        "slice": z,
                        "row": i,
                        "col": j,
                        "y": [y0, y0 + TILE_PX],
                        "x": [x0, x0 + TILE_PX],
                        **tile.as_dict(),
                    }
                )
    artery = np.zeros(cls.shape, dtype=np.float32)
    vein = np.zeros(cls.shape, dtype=np.float32)
    ay, ax = MATRIX // 2 - 1, c0 - 8
    # The arterial block steps sideways from slice to slice, like a vessel crossing the
    # slab obliquely: a straight column through every slice would be one 3D cluster
    # the size of a sinus.
    for z in range(n_slices):
        col = ax + 4 * (z % 2)
        artery[z, ay : ay + 3, col : col + 3] = 1.0
    vy = r0 + len(TILE_CBF) * TILE_PITCH_PX + 2
    vein[:, vy : vy + 5, MATRIX // 2 - 2 : MATRIX // 2 + 3] = 1.0
    vessel = (artery + vein) > 0
    cls[vessel] = -1
    base = np.broadcast_to(base2d, cls.shape).copy()
    base[vessel] = 42.0
    model = FineModel(base_hu=base, tissue_class=cls, vascular_pv={"artery": artery, "sinus": vein})
    rng = case_rng(seed, protocol, 3)
    times = acquisition_times_s(acq)
    fine_s = fine_grid_s(float(times.max()) + 1.0)
    peak_hu = float(rng.uniform(320.0, 420.0))
    arterial = arterial_curve(fine_s, protocol.arrival_s, protocol.bolus_width, peak_hu)
    vascular = {"artery": arterial, "sinus": venous_curve(fine_s, arterial)}
    sigma = (
        protocol.noise_hu_at_045mm * 0.45 / pixel_mm * np.sqrt(protocol.slice_mm / TILE_SLICE_MM)
    )
    signal = render_series(
        model,
        fine_s,
        tissue_curves(fine_s, arterial, classes),
        vascular,
        times,
        float(sigma),
        case_rng(seed, protocol, 4) if noise else None,
    )
    affine = grid_affine(MATRIX, pixel_mm, n_slices, TILE_SLICE_MM)
    truth = {
        "generator": "strokeflow.phantom.tiles",
        "case": f"tiles/{protocol.name}/seed{seed}",
        "seed": seed,
        "protocol": dataclasses.asdict(acq),
        "noise_sigma_hu": round(float(sigma), 4),
        "frame_times_s": np.round(times, 4).tolist(),
        "arterial_curve_hu": np.round(np.interp(times[:, 0], fine_s, arterial), 3).tolist(),
        "arterial_voxels": int(np.count_nonzero(artery)),
        "background": classes[0].as_dict(),
        "tiles": tiles,
    }
    return TileCase(PerfusionSeries(signal, times, Geometry(affine)), truth, tile_index)
