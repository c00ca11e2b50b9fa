"""The C-STORE response encoded directly, and the C-STORE request's primitive made
directly.

pynetdicom encodes every response through a DIMSE message object, a pydicom ``Dataset``
of the command set and pydicom's writer: ~1 ms per instance on a busy 2-core machine, a
tenth of what receiving a 512 KiB image costs. The answer to a C-STORE is seven fixed
elements (PS3.7 section 9.3.1.2, Implicit VR Little Endian as every command set), so
:func:`encode_store_response` writes them in microseconds;
``tests/service/test_service_reactor.py`` holds it to pynetdicom's bytes.

:class:`QuickStoreResponses` sends such answers that way and leaves every other message
(a response with an error comment or offending element, any request, or any message when
a handler watches ``EVT_DIMSE_SENT``) to pynetdicom. Where the association's DUL allows it
(:meth:`strokeflow.receive.reactor.PromptDUL.send_now`), the answer's PDU goes out from
the association's own thread, not through a hand-off to the DUL's. A plain C-STORE-RQ's
primitive is made from its raw command elements (:func:`plain_store_request`); any other
message is converted by pynetdicom.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Mapping
from io import BytesIO
from typing import Any, cast

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import (
    C_CANCEL,
    C_STORE,
    N_EVENT_REPORT,
    DimsePrimitiveType,
    DimseServiceType,
)
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target

LOG = logging.getLogger(__name__)

#: Command Field of a C-STORE-RSP (PS3.7 E.1).
_C_STORE_RSP = 0x8001
#: Command Data Set Type: no data set follows.
_NO_DATA_SET = 0x0101
#: A PDV item's bytes besides its data: item length (4), context ID (1), header (1).
_PDV_OVERHEAD = 6


def _ui(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _us(element: int, value: int) -> bytes:
    return struct.pack("<HHIH", 0x0000, element, 2, value)


def encode_store_response(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int
) -> bytes:
    """The command set of a C-STORE-RSP without optional elements.

    Parameters
    ----------
    message_id : int
        Message ID Being Responded To: the request's Message ID (0..65535).
    sop_class_uid, sop_instance_uid : str
        Affected SOP Class / Instance UID, as in the request.
    status : int
        The C-STORE status (0..65535).

    Returns
    -------
    bytes
        Implicit VR Little Endian, Command Group Length first; equal to what pynetdicom
        encodes for the same response.
    """
    body = b"".join(
        (
            _ui(0x0002, sop_class_uid),
            _us(0x0100, _C_STORE_RSP),
            _us(0x0120, message_id),
            _us(0x0800, _NO_DATA_SET),
            _us(0x0900, status),
            _ui(0x1000, sop_instance_uid),
        )
    )
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def encode_p_data_tf(context_id: int, pdv: bytes) -> bytes:
    """A P-DATA-TF PDU of one presentation data value (PS3.8 section 9.3.5).

    Parameters
    ----------
    context_id : int
        The presentation context ID (odd, 1..255).
    pdv : bytes
        The value: its message control header byte, then the fragment.

    Returns
    -------
    bytes
        The PDU as pynetdicom's ``P_DATA_TF`` encodes it.
    """
    item = struct.pack(">LB", 1 + len(pdv), context_id) + pdv
    return struct.pack(">BBL", 0x04, 0x00, len(item)) + item


#: The command elements of a plain C-STORE-RQ (PS3.7 9.3.1.1), without the Move
#: Originator pair of a store made for a C-MOVE.
_PLAIN_STORE_RQ_TAGS = frozenset(
    (0x00000000, 0x00000002, 0x00000100, 0x00000110, 0x00000700, 0x00000800, 0x00001000)
)


def _raw_value(elements: Mapping[Any, Any], tag: int) -> bytes:
    element = elements[tag]
    if not isinstance(element, RawDataElement) or not isinstance(element.value, bytes):
        raise ValueError(f"command element {tag:08X} is decoded already")
    return element.value


def _raw_us(elements: Mapping[Any, Any], tag: int) -> int:
    value = _raw_value(elements, tag)
    if len(value) != 2:
        raise ValueError(f"command element {tag:08X} is {len(value)} bytes, not 2")
    return int.from_bytes(value, "little")


def _raw_uid(elements: Mapping[Any, Any], tag: int) -> str:
    value = _raw_value(elements, tag)
    if b"\\" in value:
        raise ValueError(f"command element {tag:08X} has several values")
    return value.decode("ascii").rstrip("\0 ")


def plain_store_request(command_set: Dataset, data_set: BytesIO, context_id: int) -> C_STORE:
    """The C-STORE primitive of a plain C-STORE-RQ's command set, read from its raw
    elements.

    pynetdicom's ``message_to_primitive`` converts every command element through pydicom
    (its VR from the dictionary, its value, its keyword) before setting the primitive's
    attribute of that name: a tenth of a receiving process's Python time per instance.
    The seven elements of a plain request are read here directly and set through the
    same validating attributes.

    Raises
    ------
    ValueError
        Not a plain request (other elements, a value of the wrong size or with several
        values, an invalid UID or priority): leave it to pynetdicom.
    """
    elements = command_set._dict
    if elements.keys() != _PLAIN_STORE_RQ_TAGS:
        raise ValueError("not a plain C-STORE-RQ command set")
    primitive = C_STORE()
    primitive.MessageID = _raw_us(elements, 0x00000110)
    primitive.AffectedSOPClassUID = _raw_uid(elements, 0x00000002)
    primitive.AffectedSOPInstanceUID = _raw_uid(elements, 0x00001000)
    primitive.Priority = _raw_us(elements, 0x00000700)
    primitive.DataSet = data_set
    primitive._context_id = context_id
    return primitive


class QuickStoreResponses(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, sending plain C-STORE responses through
    :func:`encode_store_response` and making plain C-STORE requests' primitives with
    :func:`plain_store_request`."""

    def receive_primitive(self, primitive: P_DATA) -> None:
        """pynetdicom 3.0's ``receive_primitive`` (MIT licence, see
        :mod:`strokeflow.receive.reactor`), a plain C-STORE-RQ's primitive made by
        :func:`plain_store_request`."""
        if self.message is None:
            self.message = DIMSEMessage()
        message = self.message
        if not message.decode_msg(primitive, self.assoc):
            return
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        context_id = cast(int, message.context_id)
        try:
            d_primitive = self._message_primitive(message, context_id)
        except Exception as exc:
            LOG.error("received an invalid DIMSE message: %s", exc)
            self.dul.event_queue.put("Evt19")
            return
        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[cast(int, d_primitive.MessageIDBeingRespondedTo)] = d_primitive
        elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
            # As pynetdicom: served at once, in its own thread.
            threading.Thread(
                target=make_target(self.assoc._serve_request), args=(d_primitive, context_id)
            ).start()
        else:
            self.msg_queue.put((context_id, cast(DimseServiceType, d_primitive)))
        message.encoded_command_set = BytesIO()
        message.data_set = BytesIO()
        message._data_set_file = None
        message._data_set_path = None
        self.message = None

    @staticmethod
    def _message_primitive(message: DIMSEMessage, context_id: int) -> DimsePrimitiveType:
        if type(message) is C_STORE_RQ and message._data_set_file is None:
            try:
                return plain_store_request(
                    message.command_set, cast(BytesIO, message.data_set), context_id
                )
            except (ValueError, KeyError, UnicodeDecodeError, TypeError):
                pass  # pynetdicom's conversion decides (and says what is wrong)
        return message.message_to_primitive()

    def send_msg(self, primitive: DimsePrimitiveType, context_id: int) -> None:
        """Send a DIMSE message; a plain C-STORE response without pynetdicom's encoder."""
        encoded = self._quick_store_response(primitive)
        if encoded is None:
            super().send_msg(primitive, context_id)
            return
        # One PDV, the last (and only) command fragment: header bits 11.
        pdv = b"\x03" + encoded
        send_now = getattr(self.dul, "send_now", None)  # a PromptDUL's (reactor.py)
        if send_now is not None and send_now(encode_p_data_tf(context_id, pdv)):
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, pdv))
        self.dul.send_pdu(pdata)

    def _quick_store_response(self, primitive: DimsePrimitiveType) -> bytes | None:
        """The encoded command set, or ``None`` where pynetdicom must encode it."""
        if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
            return None
        status = getattr(primitive, "Status", None)
        sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
        if status is None or sop_class is None or sop_instance is None:
            return None
        if primitive.ErrorComment is not None or primitive.OffendingElement is not None:
            return None
        if self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            return None  # someone watches the message objects: let pynetdicom make them
        encoded = encode_store_response(
            int(primitive.MessageIDBeingRespondedTo), str(sop_class), str(sop_instance), status
        )
        limit = self.maximum_pdu_size
        if limit and len(encoded) + _PDV_OVERHEAD > limit:
            return None  # a peer with a tiny PDU: pynetdicom splits it into fragments
        return encoded


def use_quick_store_responses(assoc: Association) -> bool:
    """Give a new ``assoc`` a :class:`QuickStoreResponses` (class swap; same state).

    Returns
    -------
    bool
        ``False`` (unchanged) when its DIMSE provider is not pynetdicom's own.
    """
    if type(assoc.dimse) is not DIMSEServiceProvider:
        return False
    assoc.dimse.__class__ = QuickStoreResponses
    return True
