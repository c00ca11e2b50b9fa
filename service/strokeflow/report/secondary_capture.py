"""Secondary Capture images of the rendered result pages (RGB, 8 bit, burned-in text)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid


def _source_image_sequence(images: Sequence[Dataset]) -> DicomSequence:
    items = []
    for image in images:
        item = Dataset()
        item.ReferencedSOPClassUID = image.SOPClassUID
        item.ReferencedSOPInstanceUID = image.SOPInstanceUID
        items.append(item)
    return DicomSequence(items)


def acquisition_equipment(reference: Dataset) -> hd.ContributingEquipment | None:
    """The source's acquisition equipment, as ``SCImage.from_ref_dataset`` lists it first in
    ContributingEquipmentSequence (None when the source says no manufacturer).

    To find once per study and give to :func:`build_secondary_captures`: highdicom's
    check that the source is an image walks its standard tables (about 0.1 s a call),
    and every page has the same source.

    Parameters
    ----------
    reference : pydicom.Dataset
        The source image that supplies patient and study attributes.

    Returns
    -------
    highdicom.ContributingEquipment or None
    """
    try:
        return hd.ContributingEquipment.for_image_acquisition(reference)
    except (AttributeError, KeyError, ValueError):
        return None


def build_secondary_captures(
    pages: Sequence[np.ndarray],
    source_images: Sequence[Dataset],
    *,
    series_description: str,
    series_number: int,
    software_version: str,
    derivation: str,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    equipment: hd.ContributingEquipment | Literal["find"] | None = "find",
) -> list[Dataset]:
    """One SC instance per page, all in one new series of the source study.

    Parameters
    ----------
    pages : sequence of numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB pages.
    source_images : sequence of pydicom.Dataset
        Headers of the source images the pages were derived from; the first supplies
        patient and study attributes, all are listed in SourceImageSequence.
    series_description, series_number : str, int
        Of the new series (SeriesNumber in the 9xxx range by convention).
    software_version : str
        Written to SoftwareVersions.
    derivation : str
        DerivationDescription, e.g. ``"CT perfusion summary (StrokeFlow 0.1.0)"``.
    transfer_syntax_uid : str
        Explicit VR Little Endian by default: every PACS takes it and it costs nothing
        to encode (5.8 MB a page). RLE Lossless (about 0.1 s a page to encode, 0.5-2.5
        MB) or JPEG-LS Lossless (about 0.05 s, 0.3-0.9 MB) for sites that want them.
    equipment : highdicom.ContributingEquipment or None, optional
        :func:`acquisition_equipment` of ``source_images[0]``, when already found for
        another series of the study; found here by default.

    Returns
    -------
    list of pydicom.Dataset
        highdicom ``SCImage`` objects (lossless: text stays sharp).

    Raises
    ------
    ValueError
        If a page is not ``(rows, columns, 3)`` uint8 or no source image is given.
    """
    if not source_images:
        raise ValueError("secondary captures need at least one source image for patient/study")
    reference = source_images[0]
    series_uid = generate_uid()
    if isinstance(equipment, str):
        equipment = acquisition_equipment(reference)
    out: list[Dataset] = []
    for number, page in enumerate(pages, start=1):
        if page.ndim != 3 or page.shape[2] != 3 or page.dtype != np.uint8:
            raise ValueError(
                f"page {number}: expected (rows, columns, 3) uint8, got {page.shape} {page.dtype}"
            )
        # SCImage.from_ref_dataset, with the acquisition equipment found once per study.
        sc = hd.sc.SCImage(
            pixel_array=page,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            # Image panels are drawn with the patient's left to the right of the page and
            # posterior down (radiological convention).
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            study_instance_uid=reference.StudyInstanceUID,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=generate_uid(),
            instance_number=number,
            manufacturer="StrokeFlow",
            patient_id=reference.get("PatientID"),
            patient_name=reference.get("PatientName"),
            patient_birth_date=reference.get("PatientBirthDate"),
            patient_sex=reference.get("PatientSex"),
            accession_number=reference.get("AccessionNumber"),
            study_id=reference.get("StudyID"),
            study_date=reference.get("StudyDate"),
            study_time=reference.get("StudyTime"),
            referring_physician_name=reference.get("ReferringPhysicianName"),
            patient_orientation=("L", "P"),
            transfer_syntax_uid=UID(transfer_syntax_uid),
            contributing_equipment=None if equipment is None else [copy.deepcopy(equipment)],
            specific_character_set=reference.get("SpecificCharacterSet"),
            series_description=series_description,
        )
        sc.BurnedInAnnotation = "YES"
        sc.BodyPartExamined = "HEAD"
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.SoftwareVersions = software_version
        sc.ManufacturerModelName = "StrokeFlow"
        sc.DerivationDescription = derivation[:1024]
        sc.SourceImageSequence = _source_image_sequence(source_images)
        out.append(sc)
    return out
