"""The :class:`ResultContent` of an MR stroke analysis (DWI/ADC core, DSC Tmax).

Same pages, SEG and SR as CT perfusion (:mod:`strokeflow.report.dicom_outputs`), in the
common DWI space: the lesion pages outline the ADC core (magenta) and Tmax > 6 s (green)
on the high-b DWI, the SEG lies on the DWI source grid, the map pages show the ADC and the
DSC maps (CBF and CBV in relative units). Without a DSC series only the core is
reported; the Tmax volumes and the mismatch decisions are "n/a", never "NO".
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from strokeflow.analysis.decisions import HIR_POOR_COLLATERALS, PUBLISHED_TMAX_S, RULE_SETS
from strokeflow.analysis.mri import MriAcquisition, MriAnalysis, MriSettings
from strokeflow.assemble.files import InstanceHeader
from strokeflow.assemble.series import StudyInventory
from strokeflow.report.dicom_outputs import (
    DISCLAIMER,
    INFARCT,
    MISMATCH_RGB,
    ResultContent,
    flag_lines,
    load_source_references,
    location_text,
)
from strokeflow.report.render import (
    CORE_RGB,
    TMAX6_RGB,
    TMAX10_RGB,
    Curve,
    Decision,
    MapSpec,
    SummaryContent,
)
from strokeflow.report.segmentation import Region
from strokeflow.report.structured_report import (
    HYPOPERFUSION_INTENSITY_RATIO,
    MISMATCH_RATIO,
    RATIO_UNIT,
    ReportFindings,
    private_code,
)

#: Procedure codes (LOINC): DSC perfusion needs gadolinium, a diffusion-only study not.
MR_BRAIN_WITH_CONTRAST = Code("24587-8", "LN", "MR Brain WO and W contrast IV")
MR_BRAIN = Code("24590-2", "LN", "MR Brain")
MR_PERFUSION_METHOD = Code("126303", "DCM", "Perfusion analysis by Susceptibility MR technique")
DIFFUSION_METHOD = Code("129105", "DCM", "Diffusion image analysis")
#: ADC display range (x10^-6 mm²/s): CSF (~3000) saturates, tissue and core are spread.
ADC_WINDOW_UM2_S = (0.0, 2000.0)
PERFUSION_NOT_AVAILABLE = "Perfusion not available: core only"


def _ml(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} mL"


def _anatomy(
    analysis: MriAnalysis, acquisition: MriAcquisition
) -> tuple[np.ndarray, tuple[float, float], str]:
    """High-b DWI on the analysis grid (or the ADC), its window and its name."""
    dwi = acquisition.dwi
    if (
        dwi is not None
        and dwi.by_b_value
        and np.allclose(dwi.geometry.affine_lps, analysis.geometry.affine_lps, atol=1e-3)
    ):
        b = max(dwi.by_b_value)
        image = dwi.by_b_value[b]
        if image.shape == analysis.core.shape:
            inside = image[analysis.brain] if analysis.brain.any() else image.ravel()
            high = float(np.percentile(inside, 99.5)) if inside.size else 1.0
            return image, (0.0, max(high, 1e-3)), f"DWI b = {b:g} s/mm²"
    return analysis.adc_um2_s, ADC_WINDOW_UM2_S, "ADC"


def _relative_range(values: np.ndarray, tissue: np.ndarray | None) -> float:
    """Upper display limit of a relative map: its 99th percentile in tissue."""
    finite = values[np.isfinite(values) & (tissue if tissue is not None else True)]
    if finite.size == 0:
        return 1.0
    top = float(np.percentile(finite, 99.0))
    return top if top > 0 else 1.0


def mri_result_content(
    analysis: MriAnalysis, acquisition: MriAcquisition, settings: MriSettings
) -> ResultContent:
    """Describe the result objects of an MR stroke analysis.

    Parameters
    ----------
    analysis : MriAnalysis
        Masks on the DWI grid, DSC maps on their own grid, metrics and decisions.
    acquisition : MriAcquisition
        The assembled series (its high-b DWI is the anatomy of the lesion pages).
    settings : MriSettings
        The thresholds the analysis used.

    Returns
    -------
    ResultContent
    """
    m = analysis.metrics
    perfusion = analysis.perfusion_available and m is not None
    thr = settings.adc_core_threshold_um2_s
    t6, t10 = PUBLISHED_TMAX_S
    cluster = f"; clusters under {settings.min_cluster_ml:g} mL removed"
    core_def = (
        f"ADC < {thr:g} x10^-6 mm2/s in brain tissue (ADC > {settings.csf_adc_um2_s:g} "
        f"is CSF, excluded){cluster}"
    )
    regions = [
        Region(
            "core",
            f"Ischemic core (ADC < {thr:g} um2/s)",
            analysis.core,
            analysis.core_ml,
            INFARCT,
            CORE_RGB,
            core_def,
        )
    ]
    region_measurements: dict[str, list[tuple[Code, float, Code]]] = {}
    if perfusion:
        assert m is not None and analysis.tmax6 is not None and analysis.tmax10 is not None
        regions += [
            Region(
                "tmax6",
                f"Tmax > {t6:g} s",
                analysis.tmax6,
                m.tmax6_ml,
                private_code("TMAX_ABOVE_6S", f"Hypoperfused tissue, Tmax > {t6:g} s"),
                TMAX6_RGB,
                f"DSC Tmax > {t6:g} s in DWI space, including the core{cluster}",
            ),
            Region(
                "tmax10",
                f"Tmax > {t10:g} s",
                analysis.tmax10,
                m.tmax10_ml,
                private_code("TMAX_ABOVE_10S", f"Severely hypoperfused tissue, Tmax > {t10:g} s"),
                TMAX10_RGB,
                f"DSC Tmax > {t10:g} s in DWI space{cluster}",
            ),
            Region(
                "mismatch",
                "Mismatch (Tmax > 6 s minus core)",
                analysis.tmax6 & ~analysis.core,
                m.mismatch_ml,
                private_code("MISMATCH_REGION", "Perfusion-core mismatch region"),
                MISMATCH_RGB,
                f"Tmax > {t6:g} s region outside the ADC core",
            ),
        ]
        if m.mismatch_ratio is not None:
            region_measurements["mismatch"] = [(MISMATCH_RATIO, m.mismatch_ratio, RATIO_UNIT)]
        if m.hypoperfusion_intensity_ratio is not None:
            region_measurements["tmax10"] = [
                (HYPOPERFUSION_INTENSITY_RATIO, m.hypoperfusion_intensity_ratio, RATIO_UNIT)
            ]

    hir = None if m is None else m.hypoperfusion_intensity_ratio
    if m is None or not perfusion:
        ratio_text = hir_text = "n/a"
    else:
        ratio_text = "no core (infinite)" if m.mismatch_ratio is None else f"{m.mismatch_ratio:.1f}"
        hir_text = "-" if hir is None else f"{hir:.2f}"
    volume_rows = [
        (f"Core (ADC < {thr:g} x10⁻⁶ mm²/s)", _ml(analysis.core_ml)),
        (f"Tmax > {t6:g} s", _ml(m.tmax6_ml if m is not None else None)),
        (f"Tmax > {t10:g} s", _ml(m.tmax10_ml if m is not None else None)),
        ("Mismatch volume", _ml(m.mismatch_ml if m is not None else None)),
        ("Mismatch ratio", ratio_text),
        ("Hypoperfusion intensity ratio", hir_text),
        ("Lesion side", (analysis.lesion_side or "none detected").upper()),
    ]
    rules = {r.key: r for r in RULE_SETS}
    decisions = [
        Decision(rules[k].name, analysis.decisions.get(k), rules[k].describe())
        for k in ("defuse3", "extend", "defuse2")
        if k in rules
    ]
    alerts = [] if perfusion else [PERFUSION_NOT_AVAILABLE]
    if analysis.decisions.get("malignant_profile"):
        alerts.append(f"WARNING: {rules['malignant_profile'].name}")
    if hir is not None and hir > HIR_POOR_COLLATERALS:
        alerts.append(f"HIR {hir:.2f} > {HIR_POOR_COLLATERALS:g}: poor collaterals likely")

    curves = []
    if analysis.aif is not None and analysis.grid_s is not None and analysis.pwi_geometry:
        curves.append(
            Curve(
                "AIF",
                analysis.grid_s - analysis.grid_s[0],
                analysis.aif.curve.curve,
                location_text(analysis.aif.curve, analysis.pwi_geometry),
                (255, 70, 70),
            )
        )
    method = (
        f"DSC: oSVD deconvolution (oscillation index {settings.oscillation_index:g}) of "
        "delta-R2*, automatically detected arterial input; Tmax mapped to DWI space"
        if perfusion
        else "diffusion only (no DSC perfusion series)"
    )
    anatomy, window, anatomy_name = _anatomy(analysis, acquisition)
    series = (
        ", ".join(f"{name} ({what})" for name, what in acquisition.series_used) or "not recorded"
    )
    summary = SummaryContent(
        title="MR stroke",
        header_lines=[],
        decisions=decisions,
        alerts=alerts,
        volume_rows=volume_rows,
        quality_ok=analysis.quality_ok,
        quality_lines=flag_lines(analysis.flags),
        curves=curves,
        curve_unit="delta-R2* (1/s)",
        curve_title="Arterial input (DSC)",
        notice=""
        if perfusion
        else f"{PERFUSION_NOT_AVAILABLE}. Tmax, mismatch and the mismatch decisions "
        "need a DSC perfusion series.",
        footer_lines=[
            f"Core: ADC < {thr:g} x10^-6 mm²/s ({analysis.adc_source} ADC) with DWI "
            f"hyperintensity. Series: {series}. Method: {method}. "
            f"Lesion pages on the {anatomy_name}.",
            DISCLAIMER,
        ],
    )
    adc_shown = np.where(analysis.brain, analysis.adc_um2_s, np.nan).astype(np.float32)
    maps = [
        MapSpec("ADC", adc_shown, "x10^-6 mm²/s", *ADC_WINDOW_UM2_S, cmap="gray"),
    ]
    if perfusion and analysis.maps is not None and analysis.pwi_geometry is not None:
        pm, grid, tissue = analysis.maps, analysis.pwi_geometry, analysis.pwi_tissue
        maps += [
            MapSpec(
                "CBF",
                pm.cbf_relative,
                "relative",
                0.0,
                _relative_range(pm.cbf_relative, tissue),
                geometry=grid,
            ),
            MapSpec(
                "CBV",
                pm.cbv_relative,
                "relative",
                0.0,
                _relative_range(pm.cbv_relative, tissue),
                geometry=grid,
            ),
            MapSpec("MTT", pm.mtt_s, "s", 0.0, 15.0, geometry=grid),
            MapSpec("Tmax", pm.tmax_s, "s", 0.0, 12.0, geometry=grid),
        ]
    parameters = [
        f"core: {core_def}",
        f"ADC source: {analysis.adc_source}",
        f"perfusion: {method}",
    ]
    if perfusion:
        parameters.append(f"hypoperfusion: Tmax > {t6:g} s and Tmax > {t10:g} s")
    findings = ReportFindings(
        procedure=MR_BRAIN_WITH_CONTRAST if perfusion else MR_BRAIN,
        method=MR_PERFUSION_METHOD if perfusion else DIFFUSION_METHOD,
        regions=regions,
        region_measurements=region_measurements,
        decisions=[
            (
                private_code(r.key.upper().replace("_PROFILE", ""), f"{r.name} ({r.version})"),
                analysis.decisions.get(r.key),
            )
            for r in RULE_SETS
        ],
        lesion_side=analysis.lesion_side,
        algorithm_parameters=parameters,
        region_methods={"core": DIFFUSION_METHOD},
    )
    return ResultContent(
        title="MR stroke",
        geometry=analysis.geometry,
        anatomy_zyx=anatomy,
        anatomy_window=window,
        regions=regions,
        outlined=["core", "tmax6"] if perfusion else ["core"],
        maps=maps,
        summary=summary,
        findings=findings,
        anatomy_head_zyx=analysis.brain,
    )


def _source_headers(study: StudyInventory, acquisition: MriAcquisition) -> list[InstanceHeader]:
    """Images of the diffusion series whose grid the MR results lie on (see
    :func:`mri_source_paths`)."""
    if acquisition.dwi is not None and acquisition.dwi_series_uids:
        uids = list(acquisition.dwi_series_uids)
        shape = acquisition.dwi.by_b_value[max(acquisition.dwi.by_b_value)].shape
    elif acquisition.adc is not None and acquisition.adc_series_uid is not None:
        uids = [acquisition.adc_series_uid]
        shape = acquisition.adc.values.shape
    else:
        raise ValueError(f"study {study.study_uid}: no DWI or ADC series to reference")
    best: list[InstanceHeader] = []
    best_positions = -1
    for uid in uids:
        kept = [
            h
            for h in study.instances_of(uid)
            if (h.rows, h.columns) == shape[1:] and h.position_mm is not None
        ]
        positions = len({tuple(round(v, 2) for v in h.position_mm or ()) for h in kept})
        if positions >= best_positions:
            best, best_positions = kept, positions
    return best


def mri_source_paths(study: StudyInventory, acquisition: MriAcquisition) -> list[Path]:
    """Files of the diffusion series whose grid the MR results lie on.

    The DWI series (the one covering most slice positions when the b-values are split
    over several), or the scanner ADC map when there is no usable DWI; the result
    objects reference one image per slice of it.

    Parameters
    ----------
    study : StudyInventory
        The study the acquisition was assembled from.
    acquisition : MriAcquisition
        Its assembled series.

    Returns
    -------
    list of Path
        Each file once (a multi-frame or mosaic file holds several slices).

    Raises
    ------
    ValueError
        If the acquisition has no diffusion series.
    """
    return list(dict.fromkeys(h.path for h in _source_headers(study, acquisition)))


def mri_source_references(study: StudyInventory, acquisition: MriAcquisition) -> list[Dataset]:
    """Headers the MR result objects reference: one per slice, or one multi-frame image.

    Classic images: the earliest image at each slice position
    (:func:`~strokeflow.report.dicom_outputs.load_source_references`). An enhanced
    multi-frame image is referenced as itself. A Siemens mosaic holds every slice in one
    image whose own position is that of the tiled picture: each slice is referenced by
    a copy of the mosaic's header that carries the slice's true geometry (from the CSA
    header, as assembled), so that every object lies where the slices are.

    Raises
    ------
    ValueError
        If the acquisition has no diffusion series or its files cannot be read.
    """
    headers = _source_headers(study, acquisition)
    if all(h.frame_index is None for h in headers):
        return load_source_references([h.path for h in headers])
    first = min(headers, key=lambda h: (h.instance_number or 0, str(h.path)))
    ds = pydicom.dcmread(first.path, stop_before_pixels=True)
    if first.stored_shape is None:
        return [ds]  # enhanced multi-frame: its functional groups place every frame
    tiles = sorted((h for h in headers if h.path == first.path), key=lambda h: h.frame_index or 0)
    out: list[Dataset] = []
    for h in tiles:
        tile = copy.deepcopy(ds)
        assert h.position_mm is not None and h.orientation is not None
        tile.ImagePositionPatient = [f"{v:.6f}" for v in h.position_mm]
        tile.ImageOrientationPatient = [f"{v:.8f}" for v in h.orientation]
        tile.Rows, tile.Columns = h.rows, h.columns
        out.append(tile)
    return out
