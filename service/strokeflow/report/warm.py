"""The result objects' fixed start-up costs, paid in a background thread while the
analysis runs.

Building the first DICOM object of a process costs about 0.6 s of CPU before any pixel
is touched: importing highdicom and parsing its tables of the standard (a 22 MB JSON
file, read on the first object of any class), then importing matplotlib (about 0.5 s)
for the summary page. None of it depends on the study, so :func:`start_warming` starts
it in a daemon thread as soon as it is known that objects will be built (the
analysis's numpy work leaves the GIL free most of the time), and
:func:`wait_until_warm` is called before the objects are built: the page helper process
is forked from this one and inherits matplotlib already imported. In a long-lived
worker it runs once per process.

Warming only imports and loads caches: if any step fails, it is logged and the same
step simply happens (and raises its real error) where the objects are built.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["start_warming", "wait_until_warm"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _load_highdicom() -> None:
    import highdicom as hd
    import numpy as np
    from pydicom.uid import generate_uid

    # A throw-away 1-pixel Secondary Capture: the public way to make highdicom load the
    # tables every object constructor consults (IOD modules, module attributes).
    hd.sc.SCImage(
        pixel_array=np.zeros((1, 1, 3), np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="StrokeFlow",
        patient_orientation=("L", "P"),
    )
    # The modules that build and write the objects (they import highdicom's SEG and SR).
    import strokeflow.report.dicom_outputs  # noqa: F401


def _load_page_drawing() -> None:
    # What the page helper imports first; a fork made after this inherits it.
    import matplotlib.backends.backend_agg
    import matplotlib.figure
    import matplotlib.font_manager
    import matplotlib.patches  # noqa: F401

    import strokeflow.report.panels  # noqa: F401


def _warm() -> None:
    for step in (_load_highdicom, _load_page_drawing):
        try:
            step()
        except Exception as exc:  # the step is redone, and its error raised, when used
            log.debug("result objects: warming %s failed: %s", step.__name__, exc)


def start_warming() -> None:
    """Start loading the result objects' imports and tables in a background thread.

    Idempotent: the thread is started once per process.
    """
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_warm, name="strokeflow-report-warm", daemon=True)
            _thread.start()


#: Longest wait for the warming thread (it takes about a second; one that takes longer
#: is stuck, and no helper is forked while it may hold an import lock).
WARM_TIMEOUT_S = 60.0


def wait_until_warm(timeout_s: float | None = None) -> bool:
    """Wait for :func:`start_warming`'s thread, if one was started.

    Called before a helper process is forked from this process: no other thread may be
    importing while it forks.

    Parameters
    ----------
    timeout_s : float, optional
        Longest wait; :data:`WARM_TIMEOUT_S` by default.

    Returns
    -------
    bool
        True when no warming thread is running any more (or none was started); False
        when it is still running after ``timeout_s`` (then fork no helper).
    """
    with _lock:
        thread = _thread
    if thread is None:
        return True
    limit_s = WARM_TIMEOUT_S if timeout_s is None else timeout_s
    thread.join(limit_s)
    if thread.is_alive():
        log.warning("result objects: warming still running after %.1f s", limit_s)
        return False
    return True
