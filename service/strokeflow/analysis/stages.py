"""Pipeline stages: their failures in words, and the CPUs they may use.

A numerical failure deep in array code (a ``ValueError`` from the deconvolution, an
``IndexError`` on an empty mask) becomes an :class:`AnalysisError` naming the stage, so
the service records what could not be done instead of printing a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


class AnalysisError(Exception):
    """The series cannot be analysed; the message says why in clinical terms.

    Attributes
    ----------
    stage : str or None
        Pipeline stage that failed (e.g. ``"deconvolution"``), when known.
    """

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


#: What each stage does, in the words of the error message when it fails.
STAGE_TASKS = {
    "input": "checking the acquisition",
    "slabs": "combining thin slices into analysis slabs",
    "binning": "in-plane binning",
    "motion": "motion correction",
    "resample": "resampling to a uniform time grid",
    "masks": "finding the brain and the bolus arrival",
    "smoothing": "noise filtering",
    "aif_vof": "finding the arterial input and venous output",
    "deconvolution": "computing the perfusion maps (deconvolution)",
    "lesions": "measuring the lesion volumes",
}

#: Numerical failures of array code that a stage turns into an AnalysisError.
_NUMERICAL_ERRORS = (ValueError, ArithmeticError, IndexError, np.linalg.LinAlgError)


@contextmanager
def analysis_stage(name: str) -> Iterator[None]:
    """Run one pipeline stage; its numerical failures become an ``AnalysisError``.

    The error names the stage and keeps the original reason, so results.json can say
    what could not be done instead of a traceback.
    """
    try:
        yield
    except AnalysisError as exc:
        if exc.stage is None:
            exc.stage = name
        raise
    except _NUMERICAL_ERRORS as exc:
        task = STAGE_TASKS.get(name, name)
        raise AnalysisError(f"{task} failed: {exc}", stage=name) from exc


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity set, not the machine's count).

    Returns
    -------
    int
        At least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without affinity sets
        return max(1, os.cpu_count() or 1)
