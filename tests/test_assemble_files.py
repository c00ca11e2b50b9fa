"""Reading DICOM files: what is found, what is reported, and pixel decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicomfactory import StudyTags, uid, write_ct_instance, write_ctp_series
from strokeflow.assemble import DicomProblem, files, read_frame, scan_paths


def _image(ny: int = 12, nx: int = 10) -> np.ndarray:
    y, x = np.mgrid[0:ny, 0:nx]
    return (-1000.0 + 37.0 * y + 5.0 * x).astype(np.float32)


def _write(path: Path, pixels: np.ndarray, **kwargs: object) -> Path:
    return write_ct_instance(
        path,
        pixels,
        study=StudyTags(),
        series_uid=uid("series"),
        sop_uid=uid(str(path)),
        position_mm=(0.0, 0.0, 0.0),
        **kwargs,  # type: ignore[arg-type]
    )


def test_scan_finds_dicom_in_nested_folders_and_ignores_other_files(tmp_path: Path) -> None:
    write_ctp_series(tmp_path / "a" / "b", np.zeros((5, 2, 4, 4)), np.arange(5.0))
    (tmp_path / "truth.json").write_text('{"core_ml": 12}')
    (tmp_path / "a" / "README").write_text("phantom study\n")
    headers, problems = scan_paths([tmp_path])
    assert len(headers) == 10
    assert problems == []
    assert {h.series_uid for h in headers} == {headers[0].series_uid}


def test_scan_accepts_single_files_and_rejects_a_missing_path(tmp_path: Path) -> None:
    path = _write(tmp_path / "one.dcm", _image())
    headers, _ = scan_paths([path])
    assert [h.path for h in headers] == [path]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_paths([tmp_path / "nowhere"])


def test_corrupt_and_truncated_dicom_are_reported_not_fatal(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.dcm", _image())
    bad = tmp_path / "garbage.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xffjunk")
    truncated = _write(tmp_path / "truncated.dcm", _image(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:-3000])
    headers, problems = scan_paths([tmp_path])
    assert [h.path for h in headers] == [good]
    reasons = {Path(p.path).name: p.reason for p in problems}
    assert set(reasons) == {"garbage.dcm", "truncated.dcm"}
    assert "truncated" in reasons["truncated.dcm"]
    assert all(isinstance(p, DicomProblem) for p in problems)


def test_a_file_copied_twice_is_kept_once(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.dcm", _image())
    (tmp_path / "copy.dcm").write_bytes(path.read_bytes())
    headers, problems = scan_paths([tmp_path])
    assert len(headers) == 1 and problems == []


@pytest.mark.parametrize(
    ("slope", "intercept", "signed"),
    [(1.0, -1024.0, False), (0.5, -1024.0, False), (1.0, 0.0, True)],
)
def test_read_frame_applies_rescale(
    tmp_path: Path, slope: float, intercept: float, signed: bool
) -> None:
    hu = _image()
    path = _write(
        tmp_path / "x.dcm", hu, rescale_slope=slope, rescale_intercept=intercept, signed=signed
    )
    (header,), _ = scan_paths([path])
    assert header.pixel_offset is not None  # native data takes the fast path
    out = np.empty(hu.shape, dtype=np.float32)
    read_frame(header, out)
    np.testing.assert_array_equal(out, hu)
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(out, ds.pixel_array * slope + intercept)


def test_read_frame_sign_extends_12_bit_signed_data(tmp_path: Path) -> None:
    hu = np.array([[-2000.0, -1.0], [0.0, 2047.0]], dtype=np.float32)
    path = _write(tmp_path / "x.dcm", hu, rescale_intercept=0.0, signed=True)
    # Rewrite as 12 bits stored in 16 with junk in the top nibble, as old scanners do.
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11
    values = np.frombuffer(ds.PixelData, dtype="<i2").astype(np.uint16) & 0x0FFF
    ds.PixelData = (values | 0x5000).astype("<u2").tobytes()
    ds.save_as(path)
    (header,), _ = scan_paths([path])
    out = np.empty(hu.shape, dtype=np.float32)
    read_frame(header, out)
    np.testing.assert_array_equal(out, hu)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_pixels_decode_exactly(tmp_path: Path, syntax: str) -> None:
    hu = _image(32, 32)
    path = _write(tmp_path / "c.dcm", hu, transfer_syntax=syntax)
    (header,), problems = scan_paths([path])
    assert problems == []
    assert header.transfer_syntax_uid == syntax
    assert header.pixel_offset is None
    out = np.empty(hu.shape, dtype=np.float32)
    read_frame(header, out)
    np.testing.assert_array_equal(out, hu)


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_undecodable_pixels_raise_a_message_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.dcm", _image(32, 32), transfer_syntax=RLELossless)
    (header,), _ = scan_paths([path])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(ValueError, match=r"c\.dcm"):
        read_frame(header, np.empty((32, 32), dtype=np.float32))


def test_dicomdir_index_is_not_reported_as_a_problem(tmp_path: Path) -> None:
    paths = write_ctp_series(tmp_path / "src", np.zeros((5, 2, 4, 4)), np.arange(5.0))
    fileset = FileSet()
    for path in paths:
        fileset.add(pydicom.dcmread(path))
    fileset.write(tmp_path / "media")
    headers, problems = scan_paths([tmp_path / "media"])
    assert len(headers) == 10
    assert problems == []


@pytest.mark.parametrize("dtype", ["<u1", "<i1", "<u2", "<i2", "<u4", "<i4"])
@pytest.mark.parametrize(
    ("slope", "intercept"), [(1.0, -1024.0), (1.0, 0.0), (1.0, 0.5), (2.5, -7.25)]
)
def test_rescale_gives_the_bits_of_multiply_then_add(
    dtype: str, slope: float, intercept: float
) -> None:
    info = np.iinfo(np.dtype(dtype))
    rng = np.random.default_rng(3)
    pixels = rng.integers(info.min, info.max, size=(16, 16), endpoint=True).astype(dtype)
    expected = np.empty(pixels.shape, dtype=np.float32)
    np.multiply(pixels, slope, out=expected, casting="unsafe")
    if intercept:
        expected += np.float32(intercept)
    out = np.empty(pixels.shape, dtype=np.float32)
    files._rescale_into(pixels, slope, intercept, out)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))
