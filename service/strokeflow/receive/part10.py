"""The DICOM Part 10 file header (preamble, ``DICM``, File Meta Information) of a received
C-STORE data set, encoded directly.

pynetdicom's ``Event.encoded_dataset()`` builds the same bytes through a pydicom
``FileMetaDataset`` and its writer, which costs about 0.8 ms per instance: a tenth of the
receiver's time per instance with one sender. The File Meta group is fixed (PS3.10
section 7.1: Explicit VR Little Endian, seven elements), so it is encoded here in a few
microseconds. ``tests/service/test_service_part10.py`` checks the bytes against pynetdicom's
for every kind of UID length.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_PREAMBLE = b"\x00" * 128 + b"DICM"
#: (0002,0001) File Meta Information Version, OB, value 00 01.
_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def _short_element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    """One group-2 element with a 16-bit length, padded to even length with ``pad``."""
    if len(value) % 2:
        value += pad
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


_IMPLEMENTATION = _short_element(
    0x0012, b"UI", str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii"), b"\x00"
) + _short_element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" ")


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, prefix and File Meta Information for a data set received over the network.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid : str
        Media Storage SOP Class / Instance UID (the C-STORE's Affected SOP Class / Instance
        UID), already checked to be valid UIDs.
    transfer_syntax_uid : str
        The presentation context's transfer syntax: the data set's encoding.

    Returns
    -------
    bytes
        What goes before the data set in the stored file; equal to the start of
        pynetdicom's ``Event.encoded_dataset(include_meta=True)``.
    """
    group = b"".join(
        (
            _VERSION,
            _short_element(0x0002, b"UI", sop_class_uid.encode("ascii"), b"\x00"),
            _short_element(0x0003, b"UI", sop_instance_uid.encode("ascii"), b"\x00"),
            _short_element(0x0010, b"UI", transfer_syntax_uid.encode("ascii"), b"\x00"),
            _IMPLEMENTATION,
        )
    )
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return _PREAMBLE + length + group
