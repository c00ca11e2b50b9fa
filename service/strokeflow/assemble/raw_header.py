"""The top-level elements of a DICOM header as raw bytes, without pydicom.

Reading a study's headers with ``pydicom.dcmread(stop_before_pixels=True)`` was a tenth
of ``strokeflow analyze``'s time on a 640-image CT perfusion (about 1 ms a file, nearly
all of it building pydicom's element objects), and importing pydicom another 0.3-0.4 s.
The header fields the assembly reads are plain top-level elements, and
:mod:`strokeflow.assemble.files` reads them from their raw bytes anyway; here those bytes
are found by walking the element headers of the file (tag, VR, length), skipping every
value and sequence by its length.

Only the common encodings are walked: a file with the ``DICM`` preamble, little-endian
explicit or implicit VR datasets (native or encapsulated pixel data). Anything else
(no preamble, big endian, deflate, a VR that is not one, a header that runs past the end
of the file) gives ``None``, and the caller reads the file with pydicom as before, so an
unusual file is read exactly as it was, errors included.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
#: Little-endian syntaxes whose dataset is not explicit VR little endian as written.
_NOT_WALKED = {
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
}
#: Explicit VRs whose length is a 4-byte field after two reserved bytes.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_LONG_VRS |= {b"UV"}
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO"}
_SHORT_VRS |= {b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: pydicom's ``stop_before_pixels`` stops at any of these (float, double, pixel data).
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
_FIRST_READ_BYTES = 8192
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


class _NotWalkableError(Exception):
    """Something this walker does not handle: the caller reads the file with pydicom."""


@dataclass(frozen=True)
class RawElement:
    """One element's raw value bytes (as pydicom's raw data element holds them)."""

    value: bytes


@dataclass(frozen=True)
class RawHeader:
    """The file meta and the top-level dataset elements of one file, values as bytes.

    ``pixel_tag_offset`` is where the pixel data element starts (its tag), or None if the
    dataset ends without one.
    """

    transfer_syntax_uid: str
    media_storage_sop_class_uid: str
    elements: dict[int, RawElement]
    pixel_tag_offset: int | None

    @property
    def original_encoding(self) -> tuple[bool, bool]:
        """(implicit VR, little endian) of the dataset."""
        return self.transfer_syntax_uid == _IMPLICIT_LE, True

    def get_item(self, tag: int) -> RawElement | None:
        """The element ``tag`` (an int, group << 16 | element), or None."""
        return self.elements.get(tag)

    def __contains__(self, tag: int) -> bool:
        return tag in self.elements


class _Walker:
    """Element headers of a buffer that grows from the file on demand."""

    def __init__(self, fp: BinaryIO, file_size: int) -> None:
        self.fp = fp
        self.file_size = file_size
        self.buf = fp.read(min(_FIRST_READ_BYTES, file_size))

    def need(self, end: int) -> None:
        """Make sure ``buf`` holds bytes up to ``end``."""
        if end <= len(self.buf):
            return
        if end > self.file_size:
            raise _NotWalkableError("header runs past the end of the file")
        self.buf += self.fp.read(max(end, 2 * len(self.buf)) - len(self.buf))
        if end > len(self.buf):
            raise _NotWalkableError("file shorter than its size")

    def element(self, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
        """(tag, VR or b"", value start, value length) of the element at ``pos``."""
        self.need(pos + 8)
        group, elem = _TAG.unpack_from(self.buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE or not explicit:  # item tags have no VR in any syntax
            return tag, b"", pos + 8, _U32.unpack_from(self.buf, pos + 4)[0]
        vr = self.buf[pos + 4 : pos + 6]
        if vr in _SHORT_VRS:
            return tag, vr, pos + 8, _U16.unpack_from(self.buf, pos + 6)[0]
        if vr in _LONG_VRS:
            self.need(pos + 12)
            return tag, vr, pos + 12, _U32.unpack_from(self.buf, pos + 8)[0]
        raise _NotWalkableError(f"unknown VR {vr!r}")

    def skip_undefined(self, pos: int, explicit: bool) -> int:
        """Past the sequence delimiter of an undefined-length value starting at ``pos``."""
        while True:
            tag, _, start, length = self.element(pos, explicit)
            if tag == _SEQUENCE_END:
                return start
            if tag != _ITEM:
                # Encapsulated pixel fragments also use items; anything else is damage.
                raise _NotWalkableError("sequence without items")
            if length != _UNDEFINED:
                pos = start + length
                continue
            pos = start
            while True:  # the item's own elements, to its delimiter
                tag, _, start, length = self.element(pos, explicit)
                if tag == _ITEM_END:
                    pos = start
                    break
                if length == _UNDEFINED:
                    pos = self.skip_undefined(start, explicit)
                else:
                    pos = start + length


def read_raw_header(fp: BinaryIO, file_size: int) -> RawHeader | None:
    """Walk the header of an open file positioned at its start.

    Parameters
    ----------
    fp : binary file
        At offset 0; left at the pixel data element's tag when one was found.
    file_size : int
        Bytes in the file.

    Returns
    -------
    RawHeader or None
        None when the file is not one this walker reads (see the module docstring): the
        caller then parses it with pydicom.
    """
    try:
        return _walk(_Walker(fp, file_size))
    except (_NotWalkableError, struct.error, UnicodeDecodeError):
        return None


def _walk(walker: _Walker) -> RawHeader | None:
    walker.need(132)
    if walker.buf[128:132] != b"DICM":
        return None
    pos, meta = 132, {}
    while True:  # the file meta group, always explicit VR little endian
        walker.need(pos + 8)
        if _TAG.unpack_from(walker.buf, pos)[0] != 0x0002:
            break
        tag, _, start, length = walker.element(pos, explicit=True)
        if length == _UNDEFINED:
            return None
        walker.need(start + length)
        meta[tag] = walker.buf[start : start + length]
        pos = start + length
    syntax = _uid(meta.get(0x00020010))
    if not syntax or syntax in _NOT_WALKED:
        return None
    explicit = syntax != _IMPLICIT_LE
    walker.need(pos + 8)
    if not explicit and walker.buf[pos + 4 : pos + 6] in _SHORT_VRS | _LONG_VRS:
        return None  # explicit VR under an implicit syntax: pydicom detects and reads it
    elements: dict[int, RawElement] = {}
    pixel_tag_offset: int | None = None
    size, buf, unpack_tag, unpack_u16 = (
        walker.file_size,
        walker.buf,
        _TAG.unpack_from,
        _U16.unpack_from,
    )
    while pos < size:
        # The common case inline (a short-VR element inside the bytes read: most of a
        # header); anything else through ``element``, which reads on and checks.
        if explicit and pos + 8 <= len(buf) and buf[pos + 4 : pos + 6] in _SHORT_VRS:
            group, elem = unpack_tag(buf, pos)
            tag, start, length = group << 16 | elem, pos + 8, unpack_u16(buf, pos + 6)[0]
            if start + length <= len(buf) and group != 0xFFFE and tag not in _PIXEL_TAGS:
                elements[tag] = RawElement(buf[start : start + length])
                pos = start + length
                continue
        tag, _, start, length = walker.element(pos, explicit)
        if tag in _PIXEL_TAGS:
            pixel_tag_offset = pos
            break
        if length == _UNDEFINED:
            elements[tag] = RawElement(b"")  # a sequence: present, its items not needed
            pos = walker.skip_undefined(start, explicit)
            buf = walker.buf
            continue
        walker.need(start + length)
        buf = walker.buf
        elements[tag] = RawElement(buf[start : start + length])
        pos = start + length
    walker.fp.seek(walker.file_size if pixel_tag_offset is None else pixel_tag_offset)
    return RawHeader(syntax, _uid(meta.get(0x00020002)), elements, pixel_tag_offset)


def _uid(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("ascii").strip(" \0")
