"""Dispatch: C-STORE a job's result objects to every configured destination."""

from strokeflow.dispatch.dispatcher import (
    DispatchSummary,
    dispatch_due,
    dispatch_job,
    plan_dispatch,
)
from strokeflow.dispatch.store_scu import ObjectOutcome, StoreItem, store_objects

__all__ = [
    "DispatchSummary",
    "ObjectOutcome",
    "StoreItem",
    "dispatch_due",
    "dispatch_job",
    "plan_dispatch",
    "store_objects",
]
