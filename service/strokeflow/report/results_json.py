"""The ``results.json`` entries of an analysis, written from its :class:`AnalysisSummary`.

One writer for every modality (:meth:`~strokeflow.report.summary.AnalysisSummary.to_json`);
these two functions are the shortcuts from an analysis to its entry.
"""

from __future__ import annotations

from typing import Any

from strokeflow.analysis.ctp import CtpAnalysis
from strokeflow.analysis.mri import MriAcquisition, MriAnalysis, MriSettings
from strokeflow.analysis.settings import CtpSettings
from strokeflow.report.ctp_content import ctp_summary
from strokeflow.report.mri_content import mri_summary


def ctp_analysis_json(
    analysis: CtpAnalysis,
    series_instance_uids: list[str],
    settings: CtpSettings,
    timings_s: dict[str, float],
    warnings: list[str],
) -> dict[str, Any]:
    """One entry of ``studies[].analyses`` for a CT perfusion acquisition.

    See :func:`~strokeflow.report.ctp_content.ctp_summary`.
    """
    return ctp_summary(analysis, settings, series_instance_uids, timings_s, warnings).to_json()


def mri_analysis_json(
    analysis: MriAnalysis,
    acquisition: MriAcquisition,
    settings: MriSettings,
    timings_s: dict[str, float],
    warnings: list[str],
) -> dict[str, Any]:
    """One entry of ``studies[].analyses`` for an MR stroke study.

    See :func:`~strokeflow.report.mri_content.mri_summary` (the analysis' own stage
    timings follow ``timings_s``).
    """
    return mri_summary(analysis, acquisition, settings, timings_s, warnings).to_json()
