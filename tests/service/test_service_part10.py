"""The Part 10 header written before each received data set equals pynetdicom's."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom.events import create_file_meta, encode_file_meta

from strokeflow.receive.part10 import part10_header

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax"),
    [
        (CT_IMAGE, "1.2.3.4", ExplicitVRLittleEndian),  # even lengths
        (MR_IMAGE, "1.2.33", ImplicitVRLittleEndian),  # odd instance UID
        (CT_IMAGE, "2.25." + "9" * 59, RLELossless),  # 64 characters
        (MR_IMAGE, "1", "1.2.840.10008.1.2.4.80"),
    ],
)
def test_header_equals_pynetdicom(sop_class: str, sop_instance: str, syntax: str) -> None:
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop_instance),
        transfer_syntax=UID(syntax),
    )
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    header = part10_header(sop_class, sop_instance, syntax)
    assert header == expected
    read = dcmread(BytesIO(header))
    assert read.file_meta.MediaStorageSOPInstanceUID == sop_instance
    assert read.file_meta.TransferSyntaxUID == syntax
