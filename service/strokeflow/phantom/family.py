"""Validation family: anatomical lesion cases imaged by any acquisition protocol.

The project's own phantom (``strokeflow.phantom.ctp``) is what the analysis was
developed on; this family differs in anatomy (``ellipsoid_head``), arterial bolus and
residue shape (``bolus``: lagged-normal bolus, gamma residue), lesion design (shells whose
Tmax sits about 1 s either side of 6 s and of 10 s) and acquisition (``protocols``), so
that accuracy measured on it is not accuracy on the data the method was tuned to.

``simulate_lesion_case`` returns the acquisition as a ``PerfusionSeries`` and the truth as
a JSON-ready dict (volumes from the 1 mm truth grid, decisions from
``strokeflow.analysis.decisions``).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from strokeflow.analysis.decisions import evaluate_decisions, lesion_metrics
from strokeflow.analysis.volume import Geometry, PerfusionSeries
from strokeflow.phantom.bolus import (
    FamilyResidue,
    TissueClass,
    arterial_curve,
    collateral_curve,
    fine_grid_s,
    tissue_curves,
    venous_curve,
)
from strokeflow.phantom.ellipsoid_head import (
    N_ZONES,
    TISSUE_LABELS,
    ZONE_NAMES,
    HeadAnatomy,
    LesionShape,
    build_head,
)
from strokeflow.phantom.protocols import AcquisitionProtocol, acquisition_times_s
from strokeflow.phantom.render import FineModel, grid_affine, render_series

LesionKind = Literal["small", "medium", "penumbral", "large_core", "severe"]
LESION_KINDS: tuple[LesionKind, ...] = ("small", "medium", "penumbral", "large_core", "severe")

MATRIX = 112
FOV_MM = 200.0
#: Outer semi-axes (X, Y, Z mm) and zone radii (core, >10 s, <10 s, >6 s, <6 s) per kind.
_LESIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float, float, float]]] = {
    "small": ((30.0, 46.0, 26.0), (0.50, 0.56, 0.72, 0.87, 1.0)),
    "medium": ((32.0, 50.0, 28.0), (0.58, 0.76, 0.84, 0.92, 1.0)),
    "penumbral": ((30.0, 48.0, 26.0), (0.36, 0.52, 0.74, 0.90, 1.0)),
    "large_core": ((36.0, 58.0, 32.0), (0.74, 0.86, 0.91, 0.96, 1.0)),
    "severe": ((36.0, 58.0, 32.0), (0.52, 0.84, 0.90, 0.95, 1.0)),
}
#: Shells 1-4: CBF and MTT factors relative to the tissue's normal values.
_SHELL_FACTORS = {1: (0.9, 1.2), 2: (0.8, 1.5), 3: (0.7, 1.7), 4: (0.6, 2.0)}
#: Non-core tissue keeps at least this fraction of the mean normal CBF (rCBF > 30 % clearly).
MIN_SHELL_RCBF = 0.45


@dataclass(frozen=True)
class FamilyCase:
    """One simulated study of the family and its truth.

    Attributes
    ----------
    series : PerfusionSeries
        The acquisition, ``(t, z, y, x)`` HU with ``(t, z)`` times.
    truth : dict
        JSON-serialisable truth (volumes, decisions, side, parameters, protocol).
    labels_fine, zones_fine : numpy.ndarray
        ``(z_fine, y, x)`` uint8 truth on the 1 mm grid (see ``ellipsoid_head``).
    fine_voxel_ml : float
        Volume of one truth voxel.
    """

    series: PerfusionSeries
    truth: dict[str, Any]
    labels_fine: np.ndarray
    zones_fine: np.ndarray
    fine_voxel_ml: float


def case_rng(seed: int, protocol: AcquisitionProtocol, stream: int) -> np.random.Generator:
    """Generator for one case, protocol and purpose (stable across runs and machines)."""
    return np.random.default_rng([seed, zlib.crc32(protocol.name.encode()), stream])


def _lesion_shape(kind: LesionKind, side: int, rng: np.random.Generator) -> LesionShape:
    semi, radii = _LESIONS[kind]
    scale = rng.uniform(0.95, 1.05)
    return LesionShape(
        centre_mm=(38.0 + rng.uniform(-3.0, 3.0), -4.0 + rng.uniform(-4.0, 4.0), 0.0),
        semi_axes_mm=(semi[0] * scale, semi[1] * scale, semi[2] * scale),
        radii=radii,
        side=side,
        harmonics=(float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi))),
    )


def tissue_classes(
    rng: np.random.Generator, mean_normal_cbf: float, residue: FamilyResidue
) -> tuple[list[TissueClass], dict[str, float]]:
    """Perfusion of every (tissue label, zone): index ``N_ZONES * label index + zone``.

    Returns the classes and the zone delays (Tmax truth) drawn for this case.
    """
    normal = {
        TISSUE_LABELS[0]: (rng.uniform(52.0, 64.0), rng.uniform(3.5, 4.2)),
        TISSUE_LABELS[1]: (rng.uniform(44.0, 54.0), rng.uniform(3.8, 4.4)),
        TISSUE_LABELS[2]: (rng.uniform(20.0, 28.0), rng.uniform(4.6, 5.4)),
    }
    margins = rng.uniform(0.8, 1.2, size=4)
    delays = {
        1: 6.0 - margins[0],
        2: 6.0 + margins[1],
        3: 10.0 - margins[2],
        4: 10.0 + margins[3],
        5: float(rng.uniform(11.5, 13.0)),
    }
    core_cbf = float(rng.uniform(0.10, 0.20)) * mean_normal_cbf
    core_mtt = float(rng.uniform(9.0, 12.0))
    classes = []
    for lab in TISSUE_LABELS:
        cbf0, mtt0 = normal[lab]
        for zone in range(N_ZONES):
            if zone == 0:
                cbf, mtt, delay = cbf0, mtt0, 0.0
            elif zone == 5:
                cbf, mtt, delay = core_cbf, core_mtt, delays[5]
            else:
                f_cbf, f_mtt = _SHELL_FACTORS[zone]
                cbf = max(f_cbf * cbf0, MIN_SHELL_RCBF * mean_normal_cbf)
                mtt, delay = f_mtt * mtt0, delays[zone]
            classes.append(TissueClass(float(cbf), float(mtt), float(delay), residue))
    return classes, {ZONE_NAMES[k]: round(v, 4) for k, v in delays.items()}


def _mean_normal_cbf(head: HeadAnatomy, side: int, classes_cbf: dict[int, float]) -> float:
    """Volume-weighted normal CBF of the hemisphere opposite the lesion (the reference)."""
    contra = (head.x_mm * -side > 2.0)[None, None, :]
    counts = {lab: int(np.count_nonzero((head.labels == lab) & contra)) for lab in TISSUE_LABELS}
    total = sum(counts.values())
    return sum(classes_cbf[lab] * n for lab, n in counts.items()) / max(total, 1)


def simulate_lesion_case(
    kind: LesionKind,
    protocol: AcquisitionProtocol,
    seed: int,
    *,
    residue: FamilyResidue = "gamma",
    noise: bool = True,
) -> FamilyCase:
    """Simulate one anatomical case of the family.

    Parameters
    ----------
    kind : {"small", "medium", "penumbral", "large_core", "severe"}
        Lesion size class (see docs/phantom.md for the volumes).
    protocol : AcquisitionProtocol
        The acquisition (timing, slab, noise, bolus).
    seed : int
        Seeds the side, lesion outline, perfusion values, bolus peak and noise.
    residue : {"exponential", "gamma", "box"}
        Residue shape of every tissue.
    noise : bool
        False gives the noise-free series (for checking the truth).

    Returns
    -------
    FamilyCase
    """
    if kind not in _LESIONS:
        raise ValueError(f"unknown lesion kind {kind!r}; use one of {LESION_KINDS}")
    rng = case_rng(seed, protocol, 0)
    side = 1 if rng.uniform() < 0.5 else -1
    lesion = _lesion_shape(kind, side, rng)
    pixel_mm = FOV_MM / MATRIX
    n_fine = protocol.slices * protocol.slice_mm
    z_fine = (np.arange(n_fine) - (n_fine - 1) / 2.0) * 1.0
    head = build_head(MATRIX, pixel_mm, z_fine, lesion)

    # The reference CBF needs the tissue mix; draw the normal values once, then rebuild
    # the classes with the final mean (the same draws: a fresh generator of one stream).
    probe, _ = tissue_classes(case_rng(seed, protocol, 1), 1.0, residue)
    normal_cbf = {lab: probe[N_ZONES * i].cbf_ml_100g_min for i, lab in enumerate(TISSUE_LABELS)}
    mean_cbf = _mean_normal_cbf(head, side, normal_cbf)
    classes, zone_delays = tissue_classes(case_rng(seed, protocol, 1), mean_cbf, residue)

    times = acquisition_times_s(protocol)
    fine_s = fine_grid_s(float(times.max()) + 1.0)
    peak_hu = float(rng.uniform(320.0, 420.0))
    arterial = arterial_curve(fine_s, protocol.arrival_s, protocol.bolus_width, peak_hu)
    vascular = {
        "artery": arterial,
        "collateral": collateral_curve(fine_s, arterial),
        "sinus": venous_curve(fine_s, arterial),
    }
    tissue_index = {lab: i for i, lab in enumerate(TISSUE_LABELS)}
    cls = np.full(head.labels.shape, -1, dtype=np.intp)
    for lab, i in tissue_index.items():
        sel = head.labels == lab
        cls[sel] = N_ZONES * i + head.zones[sel]
    model = FineModel(
        base_hu=head.base_hu,
        tissue_class=cls,
        vascular_pv={
            "artery": head.artery_pv,
            "collateral": head.collateral_pv,
            "sinus": head.sinus_pv,
        },
        fine_per_slice=protocol.slice_mm,
    )
    sigma = protocol.noise_hu_at_045mm * 0.45 / pixel_mm
    signal = render_series(
        model,
        fine_s,
        tissue_curves(fine_s, arterial, classes),
        vascular,
        times,
        sigma,
        case_rng(seed, protocol, 2) if noise else None,
    )
    affine = grid_affine(MATRIX, pixel_mm, protocol.slices, protocol.slice_mm)
    series = PerfusionSeries(signal, times, Geometry(affine))
    fine_ml = pixel_mm * pixel_mm * 1.0 / 1000.0
    truth = _truth(kind, seed, protocol, head, classes, zone_delays, mean_cbf, fine_ml, side)
    truth.update(
        {
            "residue": residue,
            "arterial_peak_hu": round(peak_hu / protocol.bolus_width, 2),
            "noise_sigma_hu": round(sigma, 4),
            "frame_times_s": np.round(times, 4).tolist(),
            "arterial_curve_hu": np.round(np.interp(times[:, 0], fine_s, arterial), 3).tolist(),
            "venous_curve_hu": np.round(
                np.interp(times[:, 0], fine_s, vascular["sinus"]), 3
            ).tolist(),
            "affine_lps": affine.tolist(),
            "voxel_volume_ml": Geometry(affine).voxel_volume_ml,
        }
    )
    return FamilyCase(series, truth, head.labels, head.zones, fine_ml)


def _truth(
    kind: str,
    seed: int,
    protocol: AcquisitionProtocol,
    head: HeadAnatomy,
    classes: list[TissueClass],
    zone_delays: dict[str, float],
    mean_cbf: float,
    fine_ml: float,
    lesion_side: int,
) -> dict[str, Any]:
    counts = np.bincount(head.zones.ravel(), minlength=N_ZONES).astype(np.float64) * fine_ml
    core_ml = float(counts[5])
    tmax6_ml = float(counts[2:].sum())
    tmax10_ml = float(counts[4:].sum())
    metrics = lesion_metrics(core_ml, tmax6_ml, tmax10_ml)
    side = int(np.sign(lesion_side)) if head.zones.any() else 0
    tissue = np.isin(head.labels, TISSUE_LABELS)
    return {
        "generator": "strokeflow.phantom.family",
        "case": f"{kind}/{protocol.name}/seed{seed}",
        "kind": kind,
        "seed": seed,
        "protocol": dataclasses.asdict(protocol),
        "lesion_side": None if not side else ("left" if side > 0 else "right"),
        "core_ml": round(core_ml, 3),
        "tmax6_ml": round(tmax6_ml, 3),
        "tmax10_ml": round(tmax10_ml, 3),
        "hir": metrics.hypoperfusion_intensity_ratio,
        "zone_ml": {name: round(float(counts[i]), 3) for i, name in enumerate(ZONE_NAMES)},
        "zone_tmax_s": zone_delays,
        "metrics": dataclasses.asdict(metrics),
        "decisions": evaluate_decisions(metrics),
        "tissue_ml": round(float(np.count_nonzero(tissue)) * fine_ml, 3),
        "mean_normal_cbf_ml_100g_min": round(mean_cbf, 3),
        "tissue_classes": [
            {"label": int(lab), "zone": ZONE_NAMES[z], **classes[N_ZONES * i + z].as_dict()}
            for i, lab in enumerate(TISSUE_LABELS)
            for z in range(N_ZONES)
        ],
    }
