"""Arterial, venous and tissue enhancement curves of the CT perfusion phantom."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from strokeflow.phantom.ctp_options import (
    DEEP_GREY,
    GREY,
    LABEL_NAMES,
    TISSUE_LABELS,
    WHITE,
    ZONE_NAMES,
    CtpPhantomOptions,
)
from strokeflow.phantom.physics import arterial_input, tissue_enhancement, venous_outflow

#: Normal perfusion per tissue label: (CBF mL/100 g/min, MTT s).
NORMAL_PERFUSION = {GREY: (60.0, 4.0), DEEP_GREY: (50.0, 4.0), WHITE: (28.0, 4.8)}

#: Lesion zones 1-3: (CBF factor, MTT factor, Tmax delay s) relative to the tissue's normal.
ZONE_FACTORS = {1: (0.85, 1.3, 3.5), 2: (0.7, 1.6, 8.0), 3: (0.6, 1.8, 12.0)}
#: Core: absolute CBF (mL/100 g/min), MTT (s) and delay (s).
CORE_PERFUSION = (5.0, 10.0, 12.0)
#: Non-core zones never fall below this fraction of the mean normal tissue CBF, so that
#: relative CBF < 30 % is unambiguously core.
MIN_NONCORE_RCBF = 0.42

#: First-pass gamma variate: shape and scale (peak at arrival + 6 s, FWHM ~8.5 s).
AIF_ALPHA, AIF_BETA_S = 3.0, 2.0
VENOUS_DELAY_S = 5.5
VENOUS_DISPERSION_S = 3.0
#: Affected-side MCA beyond the occlusion: collateral filling, late and weak.
OCCLUDED_DELAY_S = 6.0
OCCLUDED_FRACTION = 0.35


@dataclass(frozen=True)
class Curves:
    fine_s: np.ndarray
    arterial: np.ndarray
    occluded: np.ndarray
    venous: np.ndarray
    tissue: np.ndarray  # (16, n_fine): class = 5 * tissue index + zone; 15 = no tissue
    parameters: list[dict[str, Any]]


def arterial_peak_time_s(options: CtpPhantomOptions | None = None) -> float:
    """Time of the first-pass arterial peak on the phantom's clock (for CT angiography)."""
    options = options or CtpPhantomOptions()
    # gamma_variate peaks at t0 + alpha * beta.
    return options.arterial_arrival_s + AIF_ALPHA * AIF_BETA_S * options.bolus_width_scale


def tissue_parameters(
    options: CtpPhantomOptions, labels: np.ndarray
) -> tuple[list[dict[str, Any]], float]:
    """CBF, MTT and delay for every (tissue, zone) class and the mean normal CBF."""
    counts = {lab: int(np.count_nonzero(labels == lab)) for lab in TISSUE_LABELS}
    total = sum(counts.values())
    if total:
        mean_cbf = sum(NORMAL_PERFUSION[lab][0] * n for lab, n in counts.items()) / total
    else:
        mean_cbf = float(np.mean([v[0] for v in NORMAL_PERFUSION.values()]))
    params = []
    for lab in TISSUE_LABELS:
        cbf0, mtt0 = NORMAL_PERFUSION[lab]
        for zone in range(5):
            if zone == 0:
                cbf, mtt, delay = cbf0, mtt0, 0.0
            elif zone == 4:
                cbf, mtt, delay = CORE_PERFUSION
            else:
                f_cbf, f_mtt, delay = ZONE_FACTORS[zone]
                cbf, mtt = max(f_cbf * cbf0, MIN_NONCORE_RCBF * mean_cbf), f_mtt * mtt0
            params.append(
                {
                    "label": LABEL_NAMES[lab],
                    "zone": ZONE_NAMES[zone],
                    "cbf_ml_100g_min": round(cbf, 3),
                    "mtt_s": round(mtt, 3),
                    "cbv_ml_100g": round(cbf * mtt / 60.0, 3),
                    "tmax_s": delay,
                }
            )
    return params, float(mean_cbf)


def perfusion_curves(options: CtpPhantomOptions, labels: np.ndarray, end_s: float) -> Curves:
    """Arterial, venous, occluded-MCA and per-class tissue curves on a 0.1 s grid."""
    fine = np.arange(0.0, end_s + 0.1 + 1e-9, 0.1)
    width = options.bolus_width_scale
    # A wider bolus of the same dose is lower: the peak scales as 1 / width, so the
    # arterial area (and every tissue's enhancement per unit CBV) is kept.
    arterial = arterial_input(
        fine,
        options.arterial_arrival_s,
        options.aif_peak_hu / width,
        alpha=AIF_ALPHA,
        beta_s=AIF_BETA_S * width,
        recirculation_delay_s=9.0 * width,
    )
    occluded = OCCLUDED_FRACTION * venous_outflow(fine, arterial, OCCLUDED_DELAY_S, 3.0)
    venous = venous_outflow(fine, arterial, VENOUS_DELAY_S, VENOUS_DISPERSION_S)
    params, _ = tissue_parameters(options, labels)
    tissue = np.zeros((16, fine.size), dtype=np.float64)
    for i, p in enumerate(params):
        tissue[i] = tissue_enhancement(
            fine,
            arterial,
            p["cbf_ml_100g_min"],
            p["mtt_s"],
            delay_s=p["tmax_s"],
            residue_kind=options.residue_kind,
        )
    return Curves(fine, arterial, occluded, venous, tissue, params)


def class_map(labels: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """Index of each voxel's tissue curve: 5 x tissue label index + zone (15: none)."""
    classes = np.full(labels.shape, 15, dtype=np.intp)
    for i, lab in enumerate(TISSUE_LABELS):
        sel = labels == lab
        classes[sel] = 5 * i + zones[sel]
    return classes
