"""Ellipsoidal head of the validation family, with a nested-shell lesion, on a 1 mm z grid.

A different anatomy from ``strokeflow.phantom.ctp``: the head is a 3D ellipsoid (not an
extruded outline), tissue layers are shrunk ellipsoids (scalp, skull with diploe, CSF
rim), the cortex is a grey-matter band whose inner border undulates (gyri) instead of
being cut by sulci, deep grey nuclei and thalami are ellipsoids, the lateral ventricles
are ellipsoids, the arteries are vertical tubes (MCA in the sylvian region, ACA
anteriorly) and the superior sagittal sinus is a tube against the inner table.

The lesion is a family of nested, slightly irregular ellipsoidal shells in the MCA
territory of one hemisphere: core, then shells whose Tmax is just above 10 s, just below
10 s, just above 6 s and just below 6 s. Coordinates in mm: ``X`` to the patient's left,
``Y`` posterior, ``Z`` towards the head, the slab centred on ``Z = 0``.

Label codes: 0 air, 1 scalp, 2 skull, 3 CSF, 4 ventricle, 5 grey matter, 6 deep grey
matter, 7 white matter, 8 artery, 9 sinus. Zone codes (tissue only): 0 normal,
1 Tmax just below 6 s, 2 just above 6 s, 3 just below 10 s, 4 just above 10 s, 5 core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strokeflow.phantom.render import pixel_centres_mm

AIR, SCALP, SKULL, CSF, VENTRICLE, GREY, DEEP_GREY, WHITE, ARTERY, SINUS = range(10)
TISSUE_LABELS = (GREY, DEEP_GREY, WHITE)
ZONE_NAMES = ("normal", "tmax_below_6", "tmax_above_6", "tmax_below_10", "tmax_above_10", "core")
N_ZONES = len(ZONE_NAMES)

BASE_HU = {
    AIR: -1000.0,
    SCALP: 30.0,
    CSF: 6.0,
    VENTRICLE: 4.0,
    GREY: 38.0,
    DEEP_GREY: 36.0,
    WHITE: 26.0,
    ARTERY: 42.0,
    SINUS: 42.0,
}
#: Outer head semi-axes (mm) and the centre of the ellipsoid below the slab centre.
HEAD_SEMI_MM = (70.0, 88.0, 80.0)
HEAD_CENTRE_Z_MM = -15.0
#: Depths from the outer surface (mm): scalp, outer table, diploe, inner table, CSF rim.
_SCALP, _TABLE_OUT, _DIPLOE, _TABLE_IN, _CSF_RIM = 4.0, 6.0, 9.0, 11.0, 12.5
CORTEX_MM = 6.0
#: Vertical arterial tubes (lateral mm on each side, Y mm, radius mm): the MCA and two
#: M2 branches in the sylvian region (beyond the occlusion on the lesion side), and the
#: ACA and PCA, which the occlusion spares.
MCA_TUBES_MM = ((36.0, -8.0, 2.4), (44.0, -18.0, 1.5), (46.0, 4.0, 1.5))
OTHER_ARTERY_TUBES_MM = ((3.5, -42.0, 1.7), (16.0, 44.0, 1.8))


@dataclass(frozen=True)
class LesionShape:
    """Nested ellipsoidal lesion shells.

    Attributes
    ----------
    centre_mm : tuple of float
        ``(lateral, Y, Z)`` centre; lateral is the distance from the midline towards
        the lesion side.
    semi_axes_mm : tuple of float
        Semi-axes of the outermost shell (``X``, ``Y``, ``Z``).
    radii : tuple of float
        Outer radius of zones 5 (core), 4, 3, 2, 1 as fractions of the outer shell
        (increasing, last 1).
    side : int
        +1 lesion in the patient's left hemisphere, -1 right.
    harmonics : tuple of float
        Phases of the outline's angular wobble (seeded).
    """

    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    radii: tuple[float, float, float, float, float]
    side: int
    harmonics: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class HeadAnatomy:
    """Labels, zones and partial volumes on the fine grid, ``(z_fine, y, x)``."""

    labels: np.ndarray
    zones: np.ndarray
    base_hu: np.ndarray
    artery_pv: np.ndarray
    collateral_pv: np.ndarray
    sinus_pv: np.ndarray
    x_mm: np.ndarray
    z_mm: np.ndarray


def _inside(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, semi: tuple[float, float, float], depth: float
) -> np.ndarray:
    a, b, c = (s - depth for s in semi)
    return np.asarray((x / a) ** 2 + (y / b) ** 2 + ((z - HEAD_CENTRE_Z_MM) / c) ** 2 < 1.0)


def _ellipsoid(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    centre: tuple[float, float, float],
    semi: tuple[float, float, float],
) -> np.ndarray:
    return np.asarray(
        ((x - centre[0]) / semi[0]) ** 2
        + ((y - centre[1]) / semi[1]) ** 2
        + ((z - centre[2]) / semi[2]) ** 2
        < 1.0
    )


def build_head(
    matrix: int, pixel_mm: float, z_mm: np.ndarray, lesion: LesionShape | None
) -> HeadAnatomy:
    """The head and lesion on an axial grid with truth slices at ``z_mm``.

    Parameters
    ----------
    matrix, pixel_mm : int, float
        In-plane size; pixel centres are point-sampled.
    z_mm : numpy.ndarray
        ``(z_fine,)`` truth slice centres.
    lesion : LesionShape or None
        The lesion; None for a healthy head.

    Returns
    -------
    HeadAnatomy
    """
    c = pixel_centres_mm(matrix, pixel_mm)
    z = np.asarray(z_mm, dtype=np.float64)[:, None, None]
    y = c[None, :, None]
    x = c[None, None, :]
    shape = (z.shape[0], matrix, matrix)
    labels = np.zeros(shape, dtype=np.uint8)
    base = np.full(shape, BASE_HU[AIR], dtype=np.float32)

    def put(mask: np.ndarray, label: int, hu: float | None = None) -> None:
        m = np.broadcast_to(mask, shape)
        labels[m] = label
        base[m] = BASE_HU[label] if hu is None else hu

    put(_inside(x, y, z, HEAD_SEMI_MM, 0.0), SCALP)
    put(_inside(x, y, z, HEAD_SEMI_MM, _SCALP), SKULL, 1400.0)
    put(_inside(x, y, z, HEAD_SEMI_MM, _TABLE_OUT), SKULL, 800.0)
    put(_inside(x, y, z, HEAD_SEMI_MM, _DIPLOE), SKULL, 1400.0)
    intracranial = np.broadcast_to(_inside(x, y, z, HEAD_SEMI_MM, _TABLE_IN), shape)
    put(intracranial, CSF)
    brain = _inside(x, y, z, HEAD_SEMI_MM, _CSF_RIM)
    put(brain, GREY)
    # Gyri: the grey/white border undulates around the cortex depth.
    phi = np.arctan2(y, x)
    wave = 1.0 + 0.4 * np.sin(9.0 * phi + 0.12 * z)
    white = brain & _white_core(x, y, z, wave)
    put(white, WHITE)
    for sx in (-1.0, 1.0):
        put(brain & _ellipsoid(x, y, z, (20.0 * sx, 2.0, -5.0), (8.0, 15.0, 12.0)), DEEP_GREY)
        put(brain & _ellipsoid(x, y, z, (9.0 * sx, 18.0, -7.0), (7.0, 10.0, 9.0)), DEEP_GREY)
        put(brain & _ellipsoid(x, y, z, (8.0 * sx, -2.0, 8.0), (4.5, 20.0, 12.0)), VENTRICLE)
    fissure = (np.abs(x) < 1.0) & ((y < -30.0) | (y > 32.0))
    put(brain & fissure, CSF)

    zones = np.zeros(shape, dtype=np.uint8)
    if lesion is not None:
        zones = _lesion_zones(x, y, z, lesion, labels)

    artery = np.zeros(shape, dtype=np.float32)
    collateral = np.zeros(shape, dtype=np.float32)
    for sx in (-1.0, 1.0):
        mca = np.zeros(shape, dtype=bool)
        for cx, cy, r in MCA_TUBES_MM:
            mca |= np.broadcast_to(np.hypot(x - cx * sx, y - cy) < r, shape) & brain
        other = np.zeros(shape, dtype=bool)
        for cx, cy, r in OTHER_ARTERY_TUBES_MM:
            other |= np.broadcast_to(np.hypot(x - cx * sx, y - cy) < r, shape) & brain
        occluded = lesion is not None and sx == lesion.side
        (collateral if occluded else artery)[mca] = 1.0
        artery[other] = 1.0
        put(mca | other, ARTERY)
    # The sinus sits against the inner table at the back, in every slice.
    b_in = (HEAD_SEMI_MM[1] - _TABLE_IN) * np.sqrt(
        np.clip(1.0 - ((z - HEAD_CENTRE_Z_MM) / (HEAD_SEMI_MM[2] - _TABLE_IN)) ** 2, 0.0, 1.0)
    )
    sinus = np.broadcast_to(np.hypot(x, y - (b_in - 4.5)) < 4.0, shape) & intracranial
    sinus_pv = sinus.astype(np.float32)
    put(sinus, SINUS)
    zones[~np.isin(labels, TISSUE_LABELS)] = 0
    return HeadAnatomy(
        labels=labels,
        zones=zones,
        base_hu=base,
        artery_pv=artery,
        collateral_pv=collateral,
        sinus_pv=sinus_pv,
        x_mm=c,
        z_mm=np.asarray(z_mm, dtype=np.float64),
    )


def _white_core(x: np.ndarray, y: np.ndarray, z: np.ndarray, wave: np.ndarray) -> np.ndarray:
    depth = _CSF_RIM + CORTEX_MM * wave
    a, b, c = (HEAD_SEMI_MM[i] - depth for i in range(3))
    return np.asarray((x / a) ** 2 + (y / b) ** 2 + ((z - HEAD_CENTRE_Z_MM) / c) ** 2 < 1.0)


def _lesion_zones(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, lesion: LesionShape, labels: np.ndarray
) -> np.ndarray:
    lateral = lesion.side * x
    cx, cy, cz = lesion.centre_mm
    ax, ay, az = lesion.semi_axes_mm
    phi = np.arctan2(y - cy, lateral - cx)
    h1, h2 = lesion.harmonics
    wobble = 1.0 + 0.05 * np.cos(3.0 * phi + h1) + 0.04 * np.cos(5.0 * phi + h2)
    s = np.sqrt(((lateral - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2) / wobble
    s = np.broadcast_to(s, labels.shape)
    zones = np.zeros(labels.shape, dtype=np.uint8)
    # Outermost first, so that inner shells overwrite.
    for zone, radius in zip((1, 2, 3, 4, 5), reversed(lesion.radii), strict=True):
        zones[s < radius] = zone
    allowed = np.isin(labels, TISSUE_LABELS) & np.broadcast_to(lateral > 2.0, labels.shape)
    zones[~allowed] = 0
    return zones
