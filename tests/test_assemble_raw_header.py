"""The raw header walk gives the headers pydicom's parse gave, file for file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from dicomfactory import StudyTags, uid, write_ct_instance
from shared_data import shared_data
from strokeflow.assemble import files
from strokeflow.assemble.files import scan_paths
from strokeflow.assemble.raw_header import read_raw_header
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study


def _both_ways(
    paths: list[Path], monkeypatch: pytest.MonkeyPatch
) -> tuple[tuple[object, object], tuple[object, object]]:
    walked = scan_paths(paths)
    with monkeypatch.context() as m:
        m.setattr(files, "read_raw_header", lambda fp, size: None)
        parsed = scan_paths(paths)
    return walked, parsed


def _walks(path: Path) -> bool:
    with path.open("rb") as fp:
        return read_raw_header(fp, path.stat().st_size) is not None


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "rle", "jpegls"])
def test_phantom_study_headers_match_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str
) -> None:
    phantom = simulate_ctp(CtpPhantomOptions(matrix=32, slices=2, frames=4))
    paths = write_ctp_study(phantom, tmp_path, transfer_syntax=syntax)  # type: ignore[arg-type]
    (walked, parsed) = _both_ways([tmp_path], monkeypatch)
    assert walked == parsed
    assert len(walked[0]) >= 8  # type: ignore[arg-type]
    assert all(_walks(p) for p in paths)


def _image() -> np.ndarray:
    return np.full((8, 6), 40.0, dtype=np.float32)


def test_undefined_length_sequences_and_private_tags_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = Dataset()
    item.CodeValue = "123"
    inner = Dataset()
    inner.CodeMeaning = "nested"
    item.ConceptNameCodeSequence = Sequence([inner])
    paths = []
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless):
        path = write_ct_instance(
            tmp_path / f"{syntax}.dcm",
            _image(),
            study=StudyTags(),
            series_uid=uid("series"),
            sop_uid=uid(syntax),
            position_mm=(1.0, 2.0, 3.0),
            transfer_syntax=RLELossless if syntax == RLELossless else ExplicitVRLittleEndian,
            extra={"ProcedureCodeSequence": Sequence([item])},
        )
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.private_block(0x0029, "STROKEFLOW TEST", create=True).add_new(0x10, "LO", "x" * 9)
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = True
        ds.save_as(path)
        paths.append(path)
    (walked, parsed) = _both_ways([tmp_path], monkeypatch)
    assert walked == parsed
    assert all(_walks(p) for p in paths)
    assert {h.position_mm for h in walked[0]} == {(1.0, 2.0, 3.0)}  # type: ignore[union-attr]


def test_damaged_files_fall_back_to_pydicom_with_the_same_problems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = write_ct_instance(
        tmp_path / "good.dcm",
        np.zeros((64, 64), dtype=np.float32),
        study=StudyTags(),
        series_uid=uid("series"),
        sop_uid=uid("good"),
        position_mm=(0.0, 0.0, 0.0),
    )
    (tmp_path / "truncated.dcm").write_bytes(good.read_bytes()[:-3000])
    (tmp_path / "header_cut.dcm").write_bytes(good.read_bytes()[:300])
    (tmp_path / "garbage.dcm").write_bytes(
        b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xffjunk"
    )
    ds = pydicom.dcmread(good)
    ds.SOPInstanceUID = uid("no preamble")
    no_preamble = tmp_path / "no_preamble.dcm"
    ds.save_as(no_preamble, enforce_file_format=False)
    (walked, parsed) = _both_ways([tmp_path], monkeypatch)
    assert walked == parsed
    problems = {Path(p.path).name for p in walked[1]}  # type: ignore[attr-defined]
    assert problems == {"truncated.dcm", "header_cut.dcm", "garbage.dcm"}
    assert {h.path.name for h in walked[0]} == {"good.dcm", "no_preamble.dcm"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "folder",
    [
        "vendor/toshiba_aquilion_4dctp_headers",
        "vendor/ge_hispeed_ct_tilt",
        "vendor/siemens_prisma_mosaic_dwi",
        "vendor/siemens_xa30_enhanced_dwi",
        "vendor/philips_ingenia_dti_classic",
    ],
)
def test_vendor_headers_match_pydicom(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (walked, parsed) = _both_ways([shared_data(folder)], monkeypatch)
    assert walked == parsed
    assert walked[0]


def test_keyword_tags_match_the_dicom_dictionary() -> None:
    from pydicom.datadict import tag_for_keyword

    assert {k: tag_for_keyword(k) for k in files._TAGS} == files._TAGS


def test_reading_a_plain_ct_perfusion_never_imports_pydicom(tmp_path: Path) -> None:
    import subprocess
    import sys

    phantom = simulate_ctp(CtpPhantomOptions(matrix=32, slices=2, frames=20))
    write_ctp_study(phantom, tmp_path, extra_series=False)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from strokeflow.assemble import assemble_ctp, build_inventory, scan_paths\n"
        "from strokeflow.assemble.mri import classify_mr_series\n"
        f"headers, problems = scan_paths([Path({str(tmp_path)!r})])\n"
        "study = build_inventory(headers)[0]\n"
        "classify_mr_series(study)\n"
        "assert assemble_ctp(study), 'no acquisition'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'nibabel')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_raw_dicom_without_preamble_is_still_read(tmp_path: Path) -> None:
    path = write_ct_instance(
        tmp_path / "x.dcm",
        _image(),
        study=StudyTags(),
        series_uid=uid("series"),
        sop_uid=uid("raw"),
        position_mm=(0.0, 0.0, 0.0),
    )
    ds = pydicom.dcmread(path)
    del ds.file_meta  # no preamble, no file meta: the bare dataset
    ds.preamble = None
    for implicit in (False, True):
        raw = tmp_path / f"raw-{implicit}"
        ds.save_as(raw, enforce_file_format=False, implicit_vr=implicit, little_endian=True)
        assert raw.read_bytes()[:2] == b"\x08\x00"
        assert [h.sop_uid for h in scan_paths([raw])[0]] == [uid("raw")]
