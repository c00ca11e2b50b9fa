"""Values of plain header elements read from their raw bytes, as pydicom would give them.

A received instance's index row and checks read ~25 elements. Through pydicom each access
looks the keyword up, converts the raw element (validation regexes, value classes) and
keeps the converted element: ~40 % of the index writer's CPU and a tenth of the answer's
(cProfile of the receiver, 4 senders). A value whose raw bytes are plain (printable ASCII,
one value, a VR listed here) is decoded here directly; anything else (non-ASCII text,
several values, an unexpected VR, a value already converted) is left to pydicom, so the
result is always pydicom's (tests/service/test_header_values.py compares every element of
real files).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

#: Text VRs whose pydicom value is the bytes decoded with trailing spaces and NULs cut.
#: (AE strips leading spaces too; PN, DS, IS and the date-times become objects.)
_TEXT_VRS = frozenset({"CS", "LO", "SH", "UI", "LT", "ST", "UT"})
_DECIMAL_VRS = frozenset({"DS"})
#: Printable ASCII without a backslash (one value) and without a leading space.
_PLAIN_TEXT = re.compile(rb"(?:[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]*)?")
#: An IS or DS value that int() or float() read exactly as pydicom's IS or DSfloat does.
_PLAIN_INT = re.compile(rb" *[+-]?[0-9]{1,12} *")
_PLAIN_DECIMAL = re.compile(rb" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")


@lru_cache(maxsize=256)
def _tag_and_vr(keyword: str) -> tuple[BaseTag, str]:
    # A BaseTag, which Dataset.get_item takes as it is (an int goes through Tag()).
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    return BaseTag(tag), dictionary_VR(tag)


def _plain_raw(ds: Dataset, keyword: str, vrs: frozenset[str]) -> bytes | bool | None:
    """The raw value bytes of ``keyword`` when they may be decoded here; ``None`` when the
    element is absent; ``False`` when pydicom must decode it."""
    tag, vr = _tag_and_vr(keyword)
    raw = ds.get_item(tag)  # still raw (unconverted) unless something read it
    if raw is None:
        return None
    if not isinstance(raw, RawDataElement) or (raw.VR or vr) != vr or vr not in vrs:
        return False
    return raw.value or b""


def text(ds: Dataset, keyword: str) -> str | None:
    """``str(ds.<keyword>)``, or ``None`` when the element is absent or empty."""
    value = _plain_raw(ds, keyword, _TEXT_VRS)
    if value is None:
        return None
    if isinstance(value, bytes):
        body = value.rstrip(b" \0")
        if _PLAIN_TEXT.fullmatch(body):
            return body.decode("ascii") or None
    found = ds.get(keyword)
    return None if found is None or found == "" else str(found)


def integer(ds: Dataset, keyword: str) -> int | None:
    """``int(ds.<keyword>)`` of an IS or US element; ``None`` when absent, empty or not an
    integer."""
    tag, vr = _tag_and_vr(keyword)
    raw = ds.get_item(tag)
    if raw is None:
        return None
    if isinstance(raw, RawDataElement) and (raw.VR or vr) == vr:
        value = raw.value or b""
        if vr == "IS" and _PLAIN_INT.fullmatch(body := value.rstrip(b"\0")):
            return int(body)
        if vr == "US" and len(value) == 2 and raw.is_little_endian:
            return int.from_bytes(value, "little")
    found = ds.get(keyword)
    try:
        return int(found) if found not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None


def decimals(ds: Dataset, keyword: str) -> list[float] | None:
    """The values of a DS element as floats; ``None`` when absent or empty.

    Raises
    ------
    ValueError, TypeError, OverflowError
        A value that is not a number (as ``float()`` of pydicom's value would).
    """
    value = _plain_raw(ds, keyword, _DECIMAL_VRS)
    if isinstance(value, bytes) and not config.use_DS_numpy:
        parts = value.rstrip(b" \0").split(b"\\")
        if all(_PLAIN_DECIMAL.fullmatch(part) for part in parts):
            return [float(part) for part in parts] if parts != [b""] else None
    if value is None:
        return None
    found: Any = ds.get(keyword)
    if found is None or found == "":
        return None
    if isinstance(found, str | bytes) or not hasattr(found, "__len__"):
        return [float(found)]
    return [float(v) for v in found]
