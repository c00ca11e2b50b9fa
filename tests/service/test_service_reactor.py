"""The receiver's own pieces of pynetdicom: event-woken reactors, directly encoded answers
sent from the association's thread."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from servicekit import storescu, wait_for, write_ct_files
from sqlalchemy import func, select

from strokeflow.receive.reactor import (
    PromptAssociation,
    PromptDUL,
    pdv_items,
    prompt_reactors_supported,
)
from strokeflow.receive.store_response import (
    QuickStoreResponses,
    encode_p_data_tf,
    encode_store_response,
    plain_store_request,
    use_quick_store_responses,
)
from strokeflow.store.models import Instance


def _response(message_id: int, sop_class: str, sop_instance: str, status: int) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    return rsp


def _pynetdicom_bytes(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = message.encode_msg(1, 16382)
    return bytes(pdata.presentation_data_value_list[0][1])


@pytest.mark.parametrize(
    ("message_id", "sop_class", "sop_instance", "status"),
    [
        (1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", 0x0000),  # odd and even UID lengths
        (7, "1.2.840.10008.5.1.4.1.1.4", "1.2.826.0.1.3680043.8.498.12345", 0xA700),
        (256, "1.2.840.10008.5.1.4.1.1.128", "2.25." + "9" * 59, 0xA900),  # 64 characters
        (65535, "1.2", "1.23", 0xC000),
        (42, "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4.5", 0xB000),
    ],
)
def test_store_response_is_encoded_as_pynetdicom_encodes_it(
    message_id: int, sop_class: str, sop_instance: str, status: int
) -> None:
    rsp = _response(message_id, sop_class, sop_instance, status)
    ours = b"\x03" + encode_store_response(message_id, sop_class, sop_instance, status)
    assert ours == _pynetdicom_bytes(rsp)


def test_responses_with_optional_elements_are_left_to_pynetdicom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As make_ae sets it: no standard log handlers watching every message.
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    assoc = Association(AE(), "acceptor")
    assert use_quick_store_responses(assoc)
    dimse = assoc.dimse
    assert isinstance(dimse, QuickStoreResponses)
    plain = _response(3, CTImageStorage, "1.2.3", 0x0000)
    assert dimse._quick_store_response(plain) is not None
    commented = _response(3, CTImageStorage, "1.2.3", 0xC000)
    commented.ErrorComment = "cannot understand"  # type: ignore[assignment]
    assert dimse._quick_store_response(commented) is None
    request = C_STORE()
    request.MessageID = 3
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.3"
    assert dimse._quick_store_response(request) is None
    assoc.bind(evt.EVT_DIMSE_SENT, lambda event: None)
    assert dimse._quick_store_response(plain) is None  # a watcher gets pynetdicom's objects


def _open_associations(listener) -> list[Association]:  # type: ignore[no-untyped-def]
    with listener.receiver._lock:
        return list(listener.receiver._tallies)


def _associate(listener) -> tuple[Association, Association]:  # type: ignore[no-untyped-def]
    """A CT store association to ``listener``: (ours, the listener's side of it)."""
    ae = AE(ae_title="CT01")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="STROKEFLOW")
    assert assoc.is_established
    wait_for(lambda: _open_associations(listener), 10, "the association")
    (served,) = _open_associations(listener)
    return assoc, served


@pytest.mark.skipif(not prompt_reactors_supported(), reason="pynetdicom other than 3.0")
def test_stores_release_and_abort_with_prompt_reactors(  # type: ignore[no-untyped-def]
    listener, tmp_path: Path
) -> None:
    files = write_ct_files(tmp_path / "sent", 6)
    assoc, served = _associate(listener)
    assert isinstance(served, PromptAssociation)
    assert isinstance(served.dul, PromptDUL)
    assert isinstance(served.dimse, QuickStoreResponses)
    statuses = [int(assoc.send_c_store(path).Status) for path in files[:4]]
    assert statuses == [0x0000] * 4
    assoc.release()
    assert assoc.is_released
    wait_for(lambda: not served.is_alive(), 10, "the served association to end")

    aborted, served = _associate(listener)
    assert int(aborted.send_c_store(files[4]).Status) == 0x0000
    aborted.abort()
    wait_for(lambda: not served.is_alive(), 10, "the aborted association to end")
    assert _open_associations(listener) == []

    assert storescu(listener.port, files[5:]).returncode == 0  # DCMTK after the above
    listener.receiver.index.flush(10)
    with listener.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 6


@pytest.mark.parametrize("pdv", [b"\x03" + b"\x00" * 10, b"\x02" + b"\x01" * 16383])
def test_p_data_tf_is_encoded_as_pynetdicom_encodes_it(pdv: bytes) -> None:
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((5, pdv))
    assert encode_p_data_tf(5, pdv) == P_DATA_TF(pdata).encode()


def _watch(event: evt.Event) -> None:
    """A handler that only watches."""


@pytest.mark.skipif(not prompt_reactors_supported(), reason="pynetdicom other than 3.0")
def test_answers_go_out_from_the_association_thread_unless_pdus_are_watched(  # type: ignore[no-untyped-def]
    listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[bool] = []
    send_now = PromptDUL.send_now

    def counted(self: PromptDUL, encoded_pdu: bytes) -> bool:
        outcomes.append(send_now(self, encoded_pdu))
        return outcomes[-1]

    monkeypatch.setattr(PromptDUL, "send_now", counted)
    files = write_ct_files(tmp_path / "sent", 4)
    assert storescu(listener.port, files[:2]).returncode == 0
    # The answer reaches the sender before ``counted`` records it: wait for the record.
    wait_for(lambda: len(outcomes) >= 2, 5.0, "two answers recorded")
    assert outcomes == [True, True]  # both answers sent directly, and storescu got them

    assoc, served = _associate(listener)
    served.bind(evt.EVT_PDU_SENT, _watch)  # someone watches the PDUs
    assert int(assoc.send_c_store(files[2]).Status) == 0x0000
    wait_for(lambda: len(outcomes) >= 3, 5.0, "the third answer recorded")
    assert outcomes[2:] == [False]  # queued for the DUL, which sent it as pynetdicom does
    served.unbind(evt.EVT_PDU_SENT, _watch)
    assert int(assoc.send_c_store(files[3]).Status) == 0x0000
    wait_for(lambda: len(outcomes) >= 4, 5.0, "the fourth answer recorded")
    assert outcomes[3:] == [True]
    assoc.release()
    listener.receiver.index.flush(10)
    with listener.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 4


def test_pdv_items_are_those_pynetdicom_decodes() -> None:
    pdata = P_DATA()
    values = [(1, b"\x01" + b"\x10" * 40), (1, b"\x03" + b"\x20" * 7), (3, b"\x02")]
    for value in values:
        pdata.presentation_data_value_list.append(value)
    body = P_DATA_TF(pdata).encode()[6:]
    decoded = P_DATA_TF()
    decoded.decode(P_DATA_TF(pdata).encode())
    expected = decoded.to_primitive().presentation_data_value_list
    items = pdv_items(body)
    assert items is not None
    assert [(ctx, bytes(value)) for ctx, value in items] == expected == values
    # Items that do not fill the body exactly, or have no control header, are left to
    # pynetdicom's decoder (which refuses them).
    assert pdv_items(body[:-1]) is None
    assert pdv_items(body + b"\x00\x00") is None
    assert pdv_items(b"\x00\x00\x00\x01\x01") is None
    assert pdv_items(b"") is None


@pytest.mark.skipif(not prompt_reactors_supported(), reason="pynetdicom other than 3.0")
def test_data_pdus_skip_the_state_machine_unless_watched(  # type: ignore[no-untyped-def]
    listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []  # PDU types that went through pynetdicom's decoder
    decode = PromptDUL._decode_pdu

    def counted(self: PromptDUL, bytestream: bytearray) -> Any:
        decoded.append(bytestream[0])
        return decode(self, bytestream)

    monkeypatch.setattr(PromptDUL, "_decode_pdu", counted)
    converted: list[str] = []  # DIMSE messages converted by pynetdicom
    convert = DIMSEMessage.message_to_primitive

    def conversion(self: DIMSEMessage) -> Any:
        converted.append(type(self).__name__)
        return convert(self)

    monkeypatch.setattr(DIMSEMessage, "message_to_primitive", conversion)
    files = write_ct_files(tmp_path / "sent", 3)
    assert storescu(listener.port, files[:2]).returncode == 0
    # The association request and release went through pynetdicom, the data did not,
    # and the plain C-STORE requests became primitives without its conversion.
    assert 0x04 not in decoded and {0x01, 0x05} <= set(decoded)
    assert converted == []

    decoded.clear()
    assoc, served = _associate(listener)
    served.bind(evt.EVT_PDU_RECV, _watch)
    assert int(assoc.send_c_store(files[2]).Status) == 0x0000
    assoc.release()
    assert 0x04 in decoded  # watched: pynetdicom's PDU objects
    listener.receiver.index.flush(10)
    with listener.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 3
    # Reassembled from the views as pynetdicom would: the same pixels, UID by UID.
    sent = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, files)}
    stored = [pydicom.dcmread(p) for p in (listener.data_dir / "studies").rglob("*.dcm")]
    assert sorted(str(ds.SOPInstanceUID) for ds in stored) == sorted(sent)
    for ds in stored:
        assert ds.PixelData == sent[str(ds.SOPInstanceUID)].PixelData


def _received_store_request(request: C_STORE) -> C_STORE_RQ:
    """``request`` encoded by pynetdicom and decoded back into its DIMSE message."""
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    received = DIMSEMessage()
    complete = [received.decode_msg(pdata) for pdata in message.encode_msg(3, 16382)]
    assert complete[-1] and isinstance(received, C_STORE_RQ)
    return received


@pytest.mark.parametrize(
    ("message_id", "sop_instance", "priority"),
    [(1, "1.2.3.4", 2), (65535, "1.2.826.0.1.3680043.8.498.12345", 0), (7, "2.25." + "9" * 59, 1)],
)
def test_plain_store_request_is_the_primitive_pynetdicom_makes(
    message_id: int, sop_instance: str, priority: int
) -> None:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = priority
    request.DataSet = BytesIO(b"\x08\x00\x16\x00UI\x04\x001.2\x00")
    received = _received_store_request(request)
    ours = plain_store_request(received.command_set, received.data_set, 3)
    theirs = received.message_to_primitive()
    for name in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority"):
        assert getattr(ours, name) == getattr(theirs, name)
        assert type(getattr(ours, name)) is type(getattr(theirs, name))
    assert ours.MoveOriginatorApplicationEntityTitle is None
    assert ours.DataSet is theirs.DataSet and ours._context_id == theirs._context_id == 3
    assert ours._dataset_path is theirs._dataset_path is None


def test_a_store_for_a_move_is_left_to_pynetdicom() -> None:
    request = C_STORE()
    request.MessageID = 5
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.3"
    request.MoveOriginatorApplicationEntityTitle = "MOVER"
    request.MoveOriginatorMessageID = 4
    request.DataSet = BytesIO(b"\x08\x00\x16\x00UI\x04\x001.2\x00")
    received = _received_store_request(request)
    with pytest.raises(ValueError, match="not a plain"):
        plain_store_request(received.command_set, received.data_set, 3)
    # The provider falls back to pynetdicom's conversion, Move Originator included.
    made = QuickStoreResponses._message_primitive(received, 3)
    assert isinstance(made, C_STORE) and made.MoveOriginatorMessageID == 4
