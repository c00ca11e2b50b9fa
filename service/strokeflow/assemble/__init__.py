"""Read DICOM files, recognise the series of each study and assemble CT perfusion.

Usage::

    headers, problems = scan_paths([Path("incoming/")])
    for study in build_inventory(headers):
        for acquisition in assemble_ctp(study):
            ...  # acquisition.perfusion is a strokeflow.analysis.volume.PerfusionSeries
"""

from strokeflow.assemble.ctp import AssemblyError, CtpAcquisition, assemble_ctp
from strokeflow.assemble.files import DicomProblem, InstanceHeader, read_frame, scan_paths
from strokeflow.assemble.series import SeriesSummary, StudyInventory, build_inventory

__all__ = [
    "AssemblyError",
    "CtpAcquisition",
    "DicomProblem",
    "InstanceHeader",
    "SeriesSummary",
    "StudyInventory",
    "assemble_ctp",
    "build_inventory",
    "read_frame",
    "scan_paths",
]
