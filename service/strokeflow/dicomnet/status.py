"""C-STORE status codes (PS3.4 B.2.3), the one table the listener and the senders use.

The codes are pynetdicom's storage service class statuses; the names say what we answer or
how we read an answer.
"""

from __future__ import annotations

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

SUCCESS = 0x0000
#: Refused: out of resources (disk or database trouble; the sender may try again).
OUT_OF_RESOURCES = 0xA700
#: Error: data set does not match SOP class (a refused, quarantined instance).
DATASET_DOES_NOT_MATCH = 0xA900
#: Error: cannot understand (the instance cannot be parsed).
CANNOT_UNDERSTAND = 0xC000

#: Statuses that mean "stored": success and the warnings of PS3.4 B.2.3 (coercion,
#: data set does not match SOP class, elements discarded).
STORED = frozenset({SUCCESS, 0xB000, 0xB006, 0xB007})


def describe_status(code: int | None) -> str:
    """``"status 0xA700 (Refused: Out of Resources)"``, or ``"no answer"`` for ``None``."""
    if code is None:
        return "no answer"
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code)
    return f"status 0x{code:04X}" + (f" ({meaning[1]})" if meaning and meaning[1] else "")
