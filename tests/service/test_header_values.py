"""Header values read from raw bytes (strokeflow.store.header_values) equal pydicom's."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from pydicom.datadict import dictionary_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from shared_data import shared_data
from strokeflow.store import header_values

VENDORS = [
    "vendor/canon_galan_dti",
    "vendor/ge_hispeed_ct_tilt",
    "vendor/ge_signa_dwi_oblique",
    "vendor/philips_ingenia_dti_classic",
    "vendor/siemens_prisma_mosaic_dwi",
    "vendor/toshiba_aquilion_4dctp_headers",
]


def _pydicom_text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return None if value is None or value == "" else str(value)


def _pydicom_int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None


def _pydicom_decimals(ds: Dataset, keyword: str) -> list[float] | str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return [float(v) for v in value] if hasattr(value, "__len__") else [float(value)]
    except (TypeError, ValueError, OverflowError):
        return "error"


def _ours_decimals(ds: Dataset, keyword: str) -> list[float] | str | None:
    try:
        return header_values.decimals(ds, keyword)
    except (TypeError, ValueError, OverflowError):
        return "error"


def _assert_same(data: bytes, where: str) -> int:
    """Every plain top-level element of ``data``, ours and pydicom's each on its own parse
    (pydicom keeps what it converted). Returns how many were compared."""
    ours = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    theirs = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    raw = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    keywords = [
        (dictionary_keyword(elem.tag), elem.VR)
        for elem in raw
        if elem.tag.group > 2 and not elem.tag.is_private
    ]
    compared = 0
    for keyword, vr in keywords:
        if not keyword:
            continue
        if vr in {"CS", "LO", "SH", "UI", "LT", "ST", "UT", "DA", "TM", "PN"}:
            assert header_values.text(ours, keyword) == _pydicom_text(theirs, keyword), (
                where,
                keyword,
            )
        elif vr in {"IS", "US"}:
            assert header_values.integer(ours, keyword) == _pydicom_int(theirs, keyword), (
                where,
                keyword,
            )
        elif vr == "DS":
            assert _ours_decimals(ours, keyword) == _pydicom_decimals(theirs, keyword), (
                where,
                keyword,
            )
        else:
            continue
        compared += 1
    return compared


@pytest.mark.parametrize("folder", VENDORS)
def test_values_equal_pydicoms_on_vendor_files(folder: str) -> None:
    files = sorted(p for p in shared_data(folder).rglob("*") if p.is_file())
    checked = 0
    for path in files[:: max(1, len(files) // 2)][:2]:
        data = path.read_bytes()
        if data[128:132] != b"DICM":
            continue
        checked += _assert_same(data, str(path))
    assert checked > 20


def _encoded(ds: Dataset, *, implicit: bool) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    write_dataset(out, ds)
    return out.getvalue()


@pytest.mark.parametrize("implicit", [False, True])
def test_edge_values_equal_pydicoms(implicit: bool) -> None:
    ds = Dataset()
    ds.PatientID = " lead"  # a leading space stays
    ds.StudyDescription = "Café"  # not ASCII: pydicom decodes it
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SeriesDescription = "a\\b"  # two values
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = "1.2.3\0"
    ds.SeriesNumber = " +12 "
    ds.AcquisitionNumber = "1.0"  # pydicom accepts it, int() of the text would not
    ds.InstanceNumber = "2\\3"
    ds.Rows = 512
    ds.ImagePositionPatient = ["-1.5", "2e1", " .5"]
    ds.SliceLocation = "+3.25"
    ds.SliceThickness = ""
    body = _encoded(ds, implicit=implicit)
    for keyword in ("PatientID", "StudyDescription", "SeriesDescription", "AccessionNumber"):
        ours = pydicom.dcmread(BytesIO(body), force=True)
        theirs = pydicom.dcmread(BytesIO(body), force=True)
        assert header_values.text(ours, keyword) == _pydicom_text(theirs, keyword), keyword
    assert header_values.text(pydicom.dcmread(BytesIO(body), force=True), "StudyInstanceUID") == (
        "1.2.3"
    )
    for keyword in ("SeriesNumber", "AcquisitionNumber", "InstanceNumber", "Rows"):
        ours = pydicom.dcmread(BytesIO(body), force=True)
        theirs = pydicom.dcmread(BytesIO(body), force=True)
        assert header_values.integer(ours, keyword) == _pydicom_int(theirs, keyword), keyword
    for keyword in ("ImagePositionPatient", "SliceLocation", "SliceThickness"):
        ours = pydicom.dcmread(BytesIO(body), force=True)
        theirs = pydicom.dcmread(BytesIO(body), force=True)
        assert _ours_decimals(ours, keyword) == _pydicom_decimals(theirs, keyword), keyword


def test_a_value_already_converted_is_read_from_pydicom() -> None:
    ds = Dataset()
    ds.SeriesNumber = "7"
    ds.ImagePositionPatient = ["1", "2", "3"]
    read = pydicom.dcmread(BytesIO(_encoded(ds, implicit=False)), force=True)
    _ = read.SeriesNumber, read.ImagePositionPatient  # converted now, no longer raw
    assert header_values.integer(read, "SeriesNumber") == 7
    assert header_values.decimals(read, "ImagePositionPatient") == [1.0, 2.0, 3.0]
    assert header_values.text(read, "PatientID") is None
