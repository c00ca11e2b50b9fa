"""Log set-up of the service processes: our own messages at INFO, the libraries' at WARNING.

At INFO a study through the service is a handful of lines (the association's summary,
completion, the job, the delivery); what happens per image (pynetdicom's "Received Store
Request", highdicom's attribute copies, each stored instance) is at DEBUG, shown with
``--verbose``.
"""

from __future__ import annotations

import logging

#: Libraries that narrate every DIMSE message, attribute or task at INFO.
CHATTY_LOGGERS = ("pynetdicom", "highdicom", "alembic", "huey")

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr: INFO and up (DEBUG with ``verbose``, the libraries' too).

    Parameters
    ----------
    verbose : bool
        Everything at DEBUG, including each image and each DIMSE message.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
