"""DICOM client side: C-ECHO a peer and C-STORE files to it as they are (no transcoding)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pydicom.misc import is_dicom
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from strokeflow.config import Destination
from strokeflow.dicomnet.status import STORED, describe_status

LOG = logging.getLogger(__name__)

#: A-ASSOCIATE-RQ allows at most 128 presentation contexts.
MAX_CONTEXTS = 128


class DicomNetworkError(RuntimeError):
    """The peer could not be reached or refused the association."""


def _associate(ae: AE, destination: Destination) -> Association:
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        what = "rejected the association" if assoc.is_rejected else "could not be reached"
        raise DicomNetworkError(f"{destination} {what}")
    return assoc


def echo(destination: Destination, calling_ae_title: str = "STROKEFLOW") -> int:
    """C-ECHO ``destination``.

    Returns
    -------
    int
        The C-ECHO status (0x0000 is success).

    Raises
    ------
    DicomNetworkError
        No association, or no answer.
    """
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, destination)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in status:
        raise DicomNetworkError(f"{destination} did not answer the C-ECHO")
    return int(status.Status)


def dicom_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every DICOM Part 10 file among ``paths`` (folders searched recursively), sorted."""
    for path in paths:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            if is_dicom(candidate):
                yield candidate


@dataclass
class SendReport:
    """What happened to each file sent."""

    sent: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def send(
    files: Iterable[Path], destination: Destination, calling_ae_title: str = "STROKEFLOW"
) -> SendReport:
    """C-STORE ``files`` to ``destination`` as they are encoded, one association per batch
    of at most 128 (SOP class, transfer syntax) pairs.

    Returns
    -------
    SendReport

    Raises
    ------
    DicomNetworkError
        The destination cannot be reached or refuses the association.
    """
    # pynetdicom streams a file given by path without decoding and re-encoding it only
    # with this process-wide option; StrokeFlow always wants that for paths.
    _config.STORE_SEND_CHUNKED_DATASET = True
    report = SendReport()
    batches: list[tuple[set[tuple[str, str]], list[Path]]] = []
    for path in files:
        try:
            meta = read_file_meta_info(path)
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        except Exception as exc:  # unreadable meta: say which file and why
            report.failed.append((path, f"unreadable file meta: {exc}"))
            continue
        if not batches or (pair not in batches[-1][0] and len(batches[-1][0]) >= MAX_CONTEXTS):
            batches.append((set(), []))
        batches[-1][0].add(pair)
        batches[-1][1].append(path)
    for pairs, paths in batches:
        ae = AE(ae_title=calling_ae_title)
        ae.maximum_pdu_size = 0
        for sop_class, syntax in sorted(pairs):
            ae.add_requested_context(sop_class, syntax)
        assoc = _associate(ae, destination)
        try:
            for path in paths:
                # A path (not a Dataset) makes pynetdicom send the encoded bytes unchanged.
                status = assoc.send_c_store(path)
                code = int(status.Status) if "Status" in status else None
                if code in STORED:
                    report.sent.append(path)
                else:
                    text = describe_status(code)
                    report.failed.append((path, text))
                    LOG.warning("%s: %s refused %s", path, destination, text)
                if not assoc.is_established:
                    raise DicomNetworkError(f"{destination} ended the association")
        finally:
            if assoc.is_established:
                assoc.release()
    return report
