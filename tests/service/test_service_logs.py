"""No patient data in the logs: identifying values sent through the real listener and the
real analysis, with library warnings about them, never reach a log line."""

from __future__ import annotations

import io
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from servicekit import pynetdicom_store

from strokeflow.logsetup import configure_logging, scrub_values
from strokeflow.phantom.ctp import CtpPhantomOptions, simulate_ctp
from strokeflow.phantom.ctp_dicom import write_ctp_study
from strokeflow.store.studies import force_complete, queue_complete
from strokeflow.worker.jobs import JobRunner

NAME = "Zebediah"  # one component: highdicom warns about it, quoting it
PATIENT_ID = "ZQX998877" + "4" * 60  # longer than LO allows: pydicom warns


def test_quoted_values_are_scrubbed() -> None:
    text = """The string "Zebediah" is odd; Invalid value for VR PN: 'DOE^JOHN'; b'\\x00A'"""
    assert scrub_values(text) == "The string '…' is odd; Invalid value for VR PN: '…'; '…'"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_identifying_values_never_reach_the_logs(listener, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = write_ctp_study(
        simulate_ctp(CtpPhantomOptions(matrix=48, slices=3, frames=20)),
        tmp_path / "sent",
        extra_series=False,
    )
    sent = sorted(p for p in files if p.suffix == ".dcm")
    for path in sent:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = NAME, PATIENT_ID
        ds.save_as(path)
    broken = tmp_path / "broken.dcm"  # refused: its reason quotes the bad value
    ds = pydicom.dcmread(sent[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.{NAME}"
    ds.save_as(broken)

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        # An earlier in-process command of the session may have left warnings captured;
        # capturing again would then be a no-op and the warnings would miss this log.
        logging.captureWarnings(False)
        configure_logging(stream=stream)  # INFO, as the service runs
        statuses = pynetdicom_store(listener.port, [*sent, broken])
        now = datetime.now(UTC)
        with listener.sessions() as session, session.begin():
            force_complete(session, str(ds.StudyInstanceUID), now)
            (job,) = queue_complete(session, now)
            job_id = job.id
        JobRunner(listener.settings, listener.sessions).run(job_id)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    assert statuses[:-1] == [0] * len(sent) and statuses[-1] != 0
    text = stream.getvalue()
    assert "UserWarning" in text and "instance refused" in text  # the lines are there
    for value in (NAME, "ZQX998877"):
        assert value not in text, [line for line in text.splitlines() if value in line][:3]


def test_log_lines_follow_standard_error_when_it_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        configure_logging()
        logging.getLogger("strokeflow.test").info("one")
        first.close()  # e.g. a command run by a test harness, whose stream is gone
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("strokeflow.test").info("two")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    assert second.getvalue().rstrip().endswith("two")
    assert "Logging error" not in second.getvalue()


def test_scrubbing_leaves_other_handlers_their_own_lines() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    ours, theirs = io.StringIO(), io.StringIO()
    other = logging.StreamHandler(theirs)
    try:
        configure_logging(stream=ours)
        root.addHandler(other)
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'DOE^JOHN'")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    assert "DOE^JOHN" not in ours.getvalue() and "Invalid value for VR PN: '…'" in ours.getvalue()
    assert "'DOE^JOHN'" in theirs.getvalue()  # a handler a site adds decides for itself
