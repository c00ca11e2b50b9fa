"""Analyse DICOM files on disk: find the perfusion series, run the engine, write outputs.

This is the one code path behind ``strokeflow analyze`` and, later, the service worker.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strokeflow import __version__
from strokeflow.analysis.ctp import AnalysisError, analyse_ctp
from strokeflow.analysis.settings import CtpSettings
from strokeflow.assemble.ctp import AssemblyError, assemble_ctp
from strokeflow.assemble.files import scan_paths
from strokeflow.assemble.series import StudyInventory, build_inventory
from strokeflow.report.nifti import write_ctp_maps
from strokeflow.report.results_json import ctp_analysis_json

log = logging.getLogger(__name__)


class NothingToAnalyseError(Exception):
    """No study holds an analysable series; the message lists what was found."""


@dataclass
class AnalyzeOutcome:
    """What ``analyze_paths`` produced."""

    results: dict[str, Any]
    results_path: Path
    map_paths: list[Path] = field(default_factory=list)

    @property
    def n_analyses(self) -> int:
        """Number of successful analyses over all studies."""
        return sum(len(s["analyses"]) for s in self.results["studies"])


def _describe_inventory(studies: list[StudyInventory]) -> str:
    lines = []
    for study in studies:
        lines.append(f"study {study.study_uid}:")
        for s in study.series:
            lines.append(
                f"  series {s.series_number} {s.description!r} ({s.modality}, "
                f"{s.n_instances} images): {s.kind} - {s.reason}"
            )
    return "\n".join(lines) if lines else "no DICOM images"


def analyze_paths(
    paths: list[Path], out_dir: Path, settings: CtpSettings | None = None, write_maps: bool = True
) -> AnalyzeOutcome:
    """Analyse every CT perfusion acquisition found under ``paths``.

    Parameters
    ----------
    paths : list of Path
        DICOM files or folders, in any order.
    out_dir : Path
        Where ``results.json`` and ``maps/`` are written.
    settings : CtpSettings, optional
        Analysis parameters.
    write_maps : bool
        Write NIfTI maps and masks.

    Returns
    -------
    AnalyzeOutcome

    Raises
    ------
    NothingToAnalyseError
        When no study yields an analysis; ``results.json`` is still written.
    """
    settings = settings or CtpSettings()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    headers, problems = scan_paths(paths)
    for p in problems:
        log.warning("skipped %s: %s", p.path, p.reason)
    studies = build_inventory(headers)
    t_scan = time.perf_counter() - t0
    study_entries = []
    map_paths: list[Path] = []
    for study in studies:
        entry: dict[str, Any] = {
            "study_instance_uid": study.study_uid,
            "analyses": [],
            "errors": [],
            "series": [
                {
                    "series_instance_uid": s.series_uid,
                    "series_number": s.series_number,
                    "description": s.description,
                    "modality": s.modality,
                    "images": s.n_instances,
                    "kind": s.kind,
                    "reason": s.reason,
                }
                for s in study.series
            ],
        }
        t1 = time.perf_counter()
        try:
            acquisitions = assemble_ctp(study)
        except AssemblyError as exc:
            log.error("study %s: %s", study.study_uid, exc)
            entry["errors"].append(str(exc))
            acquisitions = []
        t_assemble = time.perf_counter() - t1
        for acq in acquisitions:
            try:
                analysis = analyse_ctp(acq.perfusion, settings)
            except AnalysisError as exc:
                log.error("study %s series %s: %s", study.study_uid, acq.series_uids, exc)
                entry["errors"].append(f"series {', '.join(acq.series_uids)}: {exc}")
                continue
            timings = {"read_and_index": round(t_scan, 3), "assemble": round(t_assemble, 3)}
            timings.update(analysis.timings_s)
            result = ctp_analysis_json(
                analysis, acq.series_uids, settings, timings, list(acq.warnings)
            )
            if write_maps:
                maps_dir = out_dir / "maps" / study.study_uid / acq.series_uids[0]
                map_paths.extend(write_ctp_maps(analysis, maps_dir))
                result["maps_dir"] = str(maps_dir.relative_to(out_dir))
            log.info(
                "study %s: core %.1f mL, Tmax>6 %.1f mL, quality %s",
                study.study_uid,
                result["core_ml"],
                result["tmax6_ml"],
                "ok" if result["quality"]["ok"] else "NOT OK",
            )
            entry["analyses"].append(result)
        study_entries.append(entry)
    results = {
        "software": {"name": "StrokeFlow", "version": __version__},
        "studies": study_entries,
        "problems": [{"path": p.path, "reason": p.reason} for p in problems],
        "total_time_s": round(time.perf_counter() - t0, 3),
    }
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2))
    outcome = AnalyzeOutcome(results, results_path, map_paths)
    if outcome.n_analyses == 0:
        errors = [e for s in study_entries for e in s["errors"]]
        detail = _describe_inventory(studies)
        if errors:
            detail += "\nerrors:\n  " + "\n  ".join(errors)
        raise NothingToAnalyseError(f"no analysable perfusion series found.\n{detail}")
    return outcome
