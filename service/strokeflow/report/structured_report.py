"""TID 1500 measurement report of the lesion volumes, ratios and decisions.

Encoded by default as a Comprehensive 3D SR (what highdicom builds); the same content
tree uses no SCOORD3D and no by-reference relationships, so it is also a valid
Comprehensive SR and Enhanced SR: :func:`sr_in_encoding` re-labels a finished report
for destinations that reject Comprehensive 3D SR.

Volumes are NUM items in UCUM ``cm3`` (1 cm3 = 1 mL, and the unit's meaning is written
as "mL" so that SR viewers show the unit clinicians use).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

from strokeflow.report.segmentation import PRIVATE_SCHEME, PRIVATE_SCHEME_NAME, Region

SrEncoding = Literal["comprehensive3d", "comprehensive", "enhanced"]

SR_SOP_CLASSES: dict[str, str] = {
    "comprehensive3d": "1.2.840.10008.5.1.4.1.1.88.34",
    "comprehensive": "1.2.840.10008.5.1.4.1.1.88.33",
    "enhanced": "1.2.840.10008.5.1.4.1.1.88.22",
}
#: Value types each encoding may not contain (PS3.3 A.35.2-4, relationship constraints).
_FORBIDDEN_VALUE_TYPES: dict[str, set[str]] = {
    "comprehensive3d": set(),
    "comprehensive": {"SCOORD3D"},
    "enhanced": {"SCOORD3D", "TABLE"},
}

VOLUME = Code("118565006", "SCT", "Volume")
VOLUME_UNIT = Code("cm3", "UCUM", "mL")
RATIO_UNIT = Code("{ratio}", "UCUM", "ratio")
SUM_OF_VOXELS = Code("126030", "DCM", "Sum of segmented voxel method for volume")
BRAIN = Code("12738006", "SCT", "Brain")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
UNKNOWN = Code("261665006", "SCT", "Unknown")
LATERALITY = {
    "left": Code("7771000", "SCT", "Left"),
    "right": Code("24028007", "SCT", "Right"),
}
MISMATCH_RATIO = Code("MISMATCH_RATIO", PRIVATE_SCHEME, "Mismatch ratio (Tmax>6 s / core)")
HYPOPERFUSION_INTENSITY_RATIO = Code(
    "HIR", PRIVATE_SCHEME, "Hypoperfusion intensity ratio (Tmax>10 s / Tmax>6 s)"
)
TREATMENT_SELECTION = Code("SELECTION_RULES", PRIVATE_SCHEME, "Treatment selection criteria")


def private_code(value: str, meaning: str) -> Code:
    """A concept of the StrokeFlow private coding scheme.

    Raises
    ------
    ValueError
        If ``value`` is longer than 16 characters (CodeValue is SH).
    """
    if len(value) > 16:
        raise ValueError(f"private code value {value!r} is longer than 16 characters")
    return Code(value, PRIVATE_SCHEME, meaning[:64])


@dataclass(frozen=True)
class ReportFindings:
    """What the measurement report states, independent of the modality.

    Attributes
    ----------
    procedure : Code
        Procedure reported, e.g. LOINC 39142-5 "CT perfusion head with contrast IV".
    method : Code
        Perfusion method, e.g. DCM 126301 (IV iodinated contrast CT technique).
    regions : list of Region
        In SEG segment order; one volumetric group each.
    region_measurements : dict of str to list of (Code, float, Code)
        Extra ``(name, value, unit)`` measurements of a region's group, by region key
        (mismatch ratio on ``"mismatch"``, HIR on ``"tmax10"``).
    decisions : list of (Code, bool or None)
        Rule set concept and outcome; None (stated as SCT "Unknown") when the rule
        cannot be decided, e.g. mismatch rules without perfusion imaging.
    lesion_side : str or None
        ``"left"``/``"right"``: laterality of every region's finding site.
    algorithm_parameters : list of str
        Method and thresholds, in words (TID 4019 algorithm parameters).
    region_methods : dict of str to Code
        Measurement method of a region's group when it is not ``method`` (the MR core
        comes from diffusion, not perfusion, imaging).
    """

    procedure: Code
    method: Code
    regions: list[Region]
    region_measurements: dict[str, list[tuple[Code, float, Code]]]
    decisions: list[tuple[Code, bool | None]]
    lesion_side: str | None
    algorithm_parameters: list[str]
    region_methods: dict[str, Code] = field(default_factory=dict)


def build_measurement_report(
    findings: ReportFindings,
    segmentation: Dataset,
    *,
    software_version: str,
    algorithm_name: str = "StrokeFlow",
) -> hd.sr.MeasurementReport:
    """TID 1500 content: one volumetric group per region plus the decisions group.

    Parameters
    ----------
    findings : ReportFindings
        Volumes, ratios, decisions.
    segmentation : pydicom.Dataset
        The SEG whose segments (same order as ``findings.regions``) are referenced.
    software_version : str
        Algorithm version.

    Returns
    -------
    highdicom.sr.MeasurementReport
    """
    algorithm = hd.sr.AlgorithmIdentification(
        name=algorithm_name, version=software_version, parameters=findings.algorithm_parameters
    )
    laterality = LATERALITY.get(findings.lesion_side or "")
    sites = [hd.sr.FindingSite(BRAIN, laterality=laterality)]
    source_series = hd.sr.SourceSeriesForSegmentation(
        segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID
    )
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for number, region in enumerate(findings.regions, start=1):
        measurements = [
            hd.sr.Measurement(
                name=VOLUME,
                value=float(region.volume_ml),
                unit=VOLUME_UNIT,
                method=SUM_OF_VOXELS,
                algorithm_id=hd.sr.AlgorithmIdentification(
                    name=algorithm_name,
                    version=software_version,
                    parameters=[f"{region.label}: {region.definition}"],
                ),
            )
        ]
        for name, value, unit in findings.region_measurements.get(region.key, []):
            measurements.append(
                hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm)
            )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(), identifier=region.key
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=segmentation.SOPClassUID,
                    sop_instance_uid=segmentation.SOPInstanceUID,
                    segment_number=number,
                    source_series=source_series,
                ),
                finding_type=region.property_type,
                method=findings.region_methods.get(region.key, findings.method),
                algorithm_id=algorithm,
                finding_sites=sites,
                measurements=measurements,
            )
        )
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(), identifier="decisions"
            ),
            finding_type=TREATMENT_SELECTION,
            method=findings.method,
            algorithm_id=algorithm,
            finding_sites=sites,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=name, value=UNKNOWN if met is None else (YES if met else NO)
                )
                for name, met in findings.decisions
            ],
        )
    )
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[algorithm_name, software_version]),
            name=algorithm_name,
            manufacturer_name="StrokeFlow",
            model_name=algorithm_name,
        ),
    )
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=findings.procedure,
        imaging_measurements=groups,
    )


def coding_scheme_identification() -> DicomSequence:
    """CodingSchemeIdentificationSequence declaring the private scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "StrokeFlow project"
    return DicomSequence([item])


def build_structured_report(
    report: hd.sr.MeasurementReport,
    evidence: Sequence[Dataset],
    *,
    procedure: Code,
    series_description: str,
    series_number: int,
    encoding: SrEncoding = "comprehensive3d",
) -> Dataset:
    """Wrap the content in an SR document of the chosen class.

    Parameters
    ----------
    report : highdicom.sr.MeasurementReport
        Content tree.
    evidence : sequence of pydicom.Dataset
        Every instance referenced (source images and the SEG), same study.
    procedure : Code
        Performed procedure.
    series_description, series_number : str, int
        Of the new SR series.
    encoding : {"comprehensive3d", "comprehensive", "enhanced"}
        SR class.

    Returns
    -------
    pydicom.Dataset
    """
    cls = {
        "comprehensive3d": hd.sr.Comprehensive3DSR,
        "comprehensive": hd.sr.ComprehensiveSR,
        "enhanced": hd.sr.EnhancedSR,
    }[encoding]
    sr = cls(
        evidence=list(evidence),
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="StrokeFlow",
        is_complete=True,
        performed_procedure_codes=[procedure],
        series_description=series_description,
    )
    sr.CodingSchemeIdentificationSequence = coding_scheme_identification()
    return sr


def _value_types(items: DicomSequence) -> set[str]:
    found: set[str] = set()
    for item in items:
        if "ReferencedContentItemIdentifier" in item:
            found.add("BY-REFERENCE")
        if "ValueType" in item:
            found.add(str(item.ValueType))
        if "ContentSequence" in item:
            found |= _value_types(item.ContentSequence)
    return found


def sr_in_encoding(sr: Dataset, encoding: SrEncoding) -> Dataset:
    """The same report as another SR class, for destinations that reject the original.

    Parameters
    ----------
    sr : pydicom.Dataset
        A StrokeFlow SR (any of the three classes).
    encoding : {"comprehensive3d", "comprehensive", "enhanced"}
        Target class.

    Returns
    -------
    pydicom.Dataset
        A copy with the new SOP Class and a new SOP Instance UID (same series).

    Raises
    ------
    ValueError
        If the content uses value types or by-reference relationships the target class
        does not allow.
    """
    target = UID(SR_SOP_CLASSES[encoding])
    forbidden = set(_FORBIDDEN_VALUE_TYPES[encoding])
    if encoding == "enhanced":
        forbidden.add("BY-REFERENCE")
    used = _value_types(sr.get("ContentSequence", DicomSequence()))
    if used & forbidden:
        raise ValueError(
            f"SR {sr.SOPInstanceUID} uses {sorted(used & forbidden)}, not allowed in {encoding} SR"
        )
    out = copy.deepcopy(sr)
    if sr.SOPClassUID == target:
        return out
    uid = generate_uid()
    out.SOPClassUID = target
    out.SOPInstanceUID = uid
    if hasattr(out, "file_meta"):
        out.file_meta.MediaStorageSOPClassUID = target
        out.file_meta.MediaStorageSOPInstanceUID = uid
    out.InstanceNumber = int(sr.get("InstanceNumber", 1)) + 1
    return out
