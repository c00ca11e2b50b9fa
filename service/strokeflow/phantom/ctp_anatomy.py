"""Anatomy of the CT perfusion phantom: head labels, unenhanced HU, vessels and the lesion.

Coordinates: the head is centred on the LPS origin in-plane; ``X`` mm increases towards
the patient's left (image column), ``Y`` mm posterior (image row), slices go towards the
head. Everything anatomical is defined in mm, so the volumes do not depend on the
matrix; the lesion is defined relative to the slab (see ``_lesion_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strokeflow.phantom.ctp_options import (
    AIR,
    ARTERY,
    CSF,
    DEEP_GREY,
    GREY,
    SCALP,
    SINUS,
    SKULL,
    TISSUE_LABELS,
    VENTRICLE,
    WHITE,
    CtpPhantomOptions,
    slab_centre_mm,
)

#: Unenhanced attenuation per label (HU); the skull gets a table/diploe profile instead.
BASE_HU = {
    AIR: -1000.0,
    SCALP: 40.0,
    SKULL: 1350.0,
    CSF: 7.0,
    VENTRICLE: 5.0,
    GREY: 40.0,
    DEEP_GREY: 38.0,
    WHITE: 28.0,
    ARTERY: 40.0,
    SINUS: 40.0,
}

#: Reference slab for which the lesion sizes are tuned (8 slices x 5 mm).
REFERENCE_SLAB_MM = 40.0
ARTERY_PV = 0.75

# Head outline (outer scalp semi-axes, mm) and layer depths from the outer surface (mm).
HEAD_AX_MM, HEAD_AY_MM = 74.0, 94.0
_SULCUS_FIRST_RAD, _SULCUS_STEP_RAD, _SULCUS_COUNT = np.deg2rad(-174.0), np.deg2rad(12.0), 30
_SCALP_MM, _SKULL_OUT_MM, _CSF_RIM_MM, _CORTEX_MM = 3.0, 9.5, 11.0, 16.0

# Lesion ellipsoids per lesion kind and zone: (lateral centre, Y centre, semi-axes X, Y mm,
# semi-axis in slab half-thicknesses). Zones are intersected so that they nest.
_LESIONS: dict[str, dict[int, tuple[float, float, float, float, float]]] = {
    "standard": {
        1: (40.0, 0.0, 32.0, 52.0, 1.6),
        2: (42.0, 2.0, 26.0, 41.0, 1.3),
        3: (44.0, 2.0, 18.5, 28.0, 1.05),
        4: (42.0, 0.0, 13.5, 20.5, 1.0),
    },
    "large": {
        1: (36.0, 0.0, 40.0, 64.0, 1.8),
        2: (36.0, 0.0, 36.0, 58.0, 1.6),
        3: (36.0, 0.0, 32.0, 50.0, 1.5),
        4: (36.0, 0.0, 25.3, 38.4, 1.22),
    },
    "malignant": {
        1: (34.0, 0.0, 44.0, 74.0, 2.0),
        2: (34.0, 0.0, 42.0, 70.0, 1.9),
        3: (34.0, 0.0, 40.0, 66.0, 1.8),
        4: (34.0, 0.0, 31.0, 52.0, 1.42),
    },
}


@dataclass(frozen=True)
class Anatomy:
    labels: np.ndarray  # (z, y, x) uint8
    base_hu: np.ndarray  # (z, y, x) float32
    pv_artery: np.ndarray  # (z, y, x) float32, normally filled arteries
    pv_occluded: np.ndarray  # (z, y, x) float32, arteries beyond the occlusion
    pv_sinus: np.ndarray  # (z, y, x) float32


Pose = tuple[float, float, float]  # (tx_mm, ty_mm, rotation_deg) of the head


def _in_plane_mm(
    options: CtpPhantomOptions, pose: Pose | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Head-frame coordinates (mm) of every pixel centre, for a head in ``pose``.

    The head moved as ``p_image = R p_head + t`` (rotation about the image centre), so
    pixels see ``p_head = R^T (p_image - t)``: a moved frame is rendered exactly, with no
    resampling blur, as a real scanner would image it.
    """
    coords = (np.arange(options.matrix) - (options.matrix - 1) / 2.0) * options.pixel_mm
    Y, X = np.meshgrid(coords, coords, indexing="ij")
    if pose is None or pose == (0.0, 0.0, 0.0):
        return X, Y
    tx, ty, rot = pose
    c, s = np.cos(np.deg2rad(rot)), np.sin(np.deg2rad(rot))
    Xs, Ys = X - tx, Y - ty
    return c * Xs + s * Ys, -s * Xs + c * Ys


def _slab_u(options: CtpPhantomOptions, z_mm: float) -> float:
    """Position in the slab in half-thicknesses: -1 bottom edge, +1 top edge."""
    half = options.slices * options.slice_mm / 2.0
    return (z_mm - slab_centre_mm(options)) / half


def _partial_volume(distance_mm: np.ndarray, radius_mm: float, pixel_mm: float) -> np.ndarray:
    """Fraction of a pixel inside a vessel of ``radius_mm`` (linear edge over one pixel)."""
    return np.clip((radius_mm - distance_mm) / pixel_mm + 0.5, 0.0, 1.0)


def _segment_distance(
    X: np.ndarray, Y: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    s = np.clip(((X - ax) * dx + (Y - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.asarray(np.hypot(X - ax - s * dx, Y - ay - s * dy))


def head_anatomy(options: CtpPhantomOptions, z_mm: np.ndarray, pose: Pose | None = None) -> Anatomy:
    """Labels, unenhanced HU and vessel partial volumes of the head in ``pose`` at ``z_mm``."""
    X, Y = _in_plane_mm(options, pose)
    shape = (z_mm.size, *X.shape)
    labels = np.zeros(shape, dtype=np.uint8)
    base = np.zeros(shape, dtype=np.float32)
    pv_art = np.zeros(shape, dtype=np.float32)
    pv_occ = np.zeros(shape, dtype=np.float32)
    pv_sin = np.zeros(shape, dtype=np.float32)
    px = options.pixel_mm
    occluded_sign = 0.0
    if options.lesion != "none":
        occluded_sign = 1.0 if options.lesion_side == "left" else -1.0
    r_mm = np.hypot(X, Y)
    phi = np.arctan2(Y, X)
    for k, z in enumerate(z_mm):
        u = _slab_u(options, float(z))
        shrink = 1.0 - 0.03 * u  # the head narrows towards the vertex
        ax, ay = HEAD_AX_MM * shrink, HEAD_AY_MM * shrink
        rho = np.hypot(X / ax, Y / ay)
        grad = np.hypot(X / ax**2, Y / ay**2)
        # First-order distance to the ellipse: (1 - rho) / |grad rho|, grad rho = grad / rho.
        depth = np.where(rho > 0.3, (1.0 - rho) * rho / np.maximum(grad, 1e-12), 1e3)
        lab = np.full(X.shape, WHITE, dtype=np.uint8)
        brain_depth = depth - _CSF_RIM_MM

        # Cortex: a ribbon under the surface, folded around radial sulci.
        grey = brain_depth < _CORTEX_MM - _CSF_RIM_MM
        # Radial sulci every 12 degrees; only the nearest one can reach a pixel at the
        # depths where sulci exist, so one lookup replaces a loop over all of them.
        nearest = np.rint((phi - _SULCUS_FIRST_RAD) / _SULCUS_STEP_RAD)
        offset = phi - (_SULCUS_FIRST_RAD + nearest * _SULCUS_STEP_RAD)
        across = r_mm * np.abs(np.sin(offset))
        index = nearest.astype(np.intp) % _SULCUS_COUNT
        sulcus_depth = (10.0 + 4.0 * np.sin(1.7 * np.arange(_SULCUS_COUNT) + 2.0 * u))[index]
        sulcus = (across < 0.8) & (brain_depth < sulcus_depth)
        grey |= (across < 4.0) & (brain_depth < sulcus_depth + 2.5)
        # Interhemispheric fissure with the medial cortex, in front of and behind the
        # corpus callosum.
        fissure_zone = (-30.0 + 4.0 * u > Y) | (32.0 - 4.0 * u < Y)
        grey |= fissure_zone & (np.abs(X) < 3.8)
        sulcus |= fissure_zone & (np.abs(X) < 0.9)
        # Sylvian fissures and insular cortex (lower and middle slab).
        y_sylvian = -6.0 + 4.0 * u
        if u < 0.6:
            ins = (np.abs(Y - y_sylvian) < 15.0) & (np.abs(X) > 33.0) & (np.abs(X) < 37.0)
            grey |= ins | ((np.abs(Y - y_sylvian) < 4.5) & (np.abs(X) > 35.0))
            sulcus |= (np.abs(Y - y_sylvian) < 1.6) & (np.abs(X) > 37.0)
        lab[grey] = GREY

        # Deep grey matter: lentiform and caudate nuclei, thalami.
        deep = np.zeros(X.shape, dtype=bool)
        if u < 0.45:
            deep |= np.hypot((np.abs(X) - 20.0) / 6.5, (Y + 3.0) / 13.0) < 1.0
            deep |= np.hypot((np.abs(X) - 10.0) / 4.0, (Y + 18.0) / 6.0) < 1.0
        if u < 0.25:
            deep |= np.hypot((np.abs(X) - 9.0) / 7.0, (Y - 10.0) / 9.0) < 1.0
        lab[deep] = DEEP_GREY
        lab[sulcus] = CSF

        # Lateral ventricles: bodies widening upwards, occipital horns low in the slab.
        grow = (1.0 + u) / 2.0
        vent = np.hypot((np.abs(X) - 4.0 - 1.5 * grow) / (2.5 + 2.0 * grow), (Y + 5.0) / 19.0) < 1
        if u < 0.0:
            vent |= np.hypot((np.abs(X) - 14.0) / 3.0, (Y - 27.0) / 7.0) < 1.0
        lab[vent] = VENTRICLE

        # Outer layers.
        lab[brain_depth < 0] = CSF
        lab[depth < _SKULL_OUT_MM] = SKULL
        lab[depth < _SCALP_MM] = SCALP
        lab[depth < 0] = AIR

        # Vessels. Arteries: anterior cerebral arteries near the midline, M1 along the
        # sylvian fissure low in the slab, M2 branches in the fissure above it.
        pv_a = np.zeros(X.shape)
        pv_o = np.zeros(X.shape)
        for side in (-1.0, 1.0):
            pieces = [(np.hypot(X - side * 2.3, Y + 33.0), 1.8, False)]
            if u < -0.2:
                pieces.append(
                    (_segment_distance(X, Y, (side * 12, -10), (side * 22, -9)), 1.9, False)
                )
                pieces.append(
                    (_segment_distance(X, Y, (side * 22, -9), (side * 36, -7)), 1.9, True)
                )
            else:
                pieces.append((np.hypot(X - side * 41.0, Y - y_sylvian + 2.0), 1.7, True))
                pieces.append((np.hypot(X - side * 45.0, Y - y_sylvian - 5.0), 1.7, True))
            for dist, radius, distal in pieces:
                pv = ARTERY_PV * _partial_volume(dist, radius * options.artery_radius_scale, px)
                if distal and side == occluded_sign:
                    pv_o = np.maximum(pv_o, pv)
                else:
                    pv_a = np.maximum(pv_a, pv)
        # Superior sagittal sinus: posterior midline under the skull, ~9 mm wide.
        sinus_y = ay - _CSF_RIM_MM - 4.5
        pv_s = _partial_volume(np.hypot(X, Y - sinus_y), 4.5, px)
        vessel = (pv_a > 0) | (pv_o > 0) | (pv_s > 0)
        lab[(pv_a > 0) | (pv_o > 0)] = ARTERY
        lab[pv_s > 0] = SINUS

        b = np.zeros(X.shape, dtype=np.float32)
        for code, value in BASE_HU.items():
            b[lab == code] = value
        skull = lab == SKULL
        # Dense outer and inner tables around a lighter diploe.
        frac = (depth[skull] - _SCALP_MM) / (_SKULL_OUT_MM - _SCALP_MM)
        b[skull] = 1200.0 + 300.0 * np.abs(2.0 * frac - 1.0)
        b[vessel] = BASE_HU[ARTERY]
        labels[k], base[k] = lab, b
        pv_art[k], pv_occ[k], pv_sin[k] = pv_a, pv_o, pv_s
    return Anatomy(labels, base, pv_art, pv_occ, pv_sin)


def _lesion_scale(options: CtpPhantomOptions) -> float:
    """In-plane scale of the lesion blobs for slabs other than the 40 mm reference.

    The blobs span a fixed fraction of the slab in z, so their volume grows with the
    slab; shrinking them in-plane by sqrt(40 mm / slab) keeps the volumes (and the
    decisions) close to the reference ones, within the limits the hemisphere allows.
    """
    slab = options.slices * options.slice_mm
    return float(np.clip(np.sqrt(REFERENCE_SLAB_MM / slab), 0.7, 1.3))


def lesion_zones(
    options: CtpPhantomOptions, z_mm: np.ndarray, labels: np.ndarray, pose: Pose | None = None
) -> np.ndarray:
    """Perfusion zone of every tissue voxel (0 normal ... 4 core) for the options' lesion."""
    zones = np.zeros(labels.shape, dtype=np.uint8)
    if options.lesion == "none":
        return zones
    side = 1.0 if options.lesion_side == "left" else -1.0
    X, Y = _in_plane_mm(options, pose)
    phi = np.arctan2(Y, side * X)
    rng = np.random.default_rng([options.seed, 3])
    # Slightly irregular outline: a few low angular harmonics, per zone, seeded.
    harmonics = rng.uniform(0.0, 2.0 * np.pi, size=(5, 3))
    scale = _lesion_scale(options)
    tissue = np.isin(labels, TISSUE_LABELS)
    inside = np.ones(labels.shape, dtype=bool)
    for zone, (cx, cy, sx, sy, su) in sorted(_LESIONS[options.lesion].items()):
        wobble = 1.0 + sum(0.04 * np.cos((n + 2) * phi + harmonics[zone, n]) for n in range(3))
        q_plane = np.hypot((side * X - cx * scale) / (sx * scale), (Y - cy * scale) / (sy * scale))
        mask = np.zeros(labels.shape, dtype=bool)
        for k, z in enumerate(z_mm):
            mask[k] = np.hypot(q_plane, _slab_u(options, float(z)) / su) < wobble
        inside &= mask
        zones[inside] = zone
    # Never cross the midline; lesions live in tissue only.
    medial = np.broadcast_to(side * X < 2.0, labels.shape)
    zones[medial | ~tissue] = 0
    return zones
