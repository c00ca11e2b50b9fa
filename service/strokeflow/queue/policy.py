"""Leases and retry back-off of jobs and dispatches."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How long a worker holds a job without a heartbeat, and how failures are retried.

    Attributes
    ----------
    lease_s : float
        A running job whose worker has not renewed its lease for this long is re-queued.
        The worker renews it every ``lease_s / 3``.
    max_attempts : int
        Analysis attempts (worker deaths included) before a job is marked failed.
    backoff_s, backoff_max_s : float
        Delay before retry n is ``backoff_s * 2 ** (n - 1)``, at most ``backoff_max_s``.
    dispatch_max_attempts : int
        C-STORE attempts per object and destination before it is marked failed.
    dispatch_backoff_s, dispatch_backoff_max_s : float
        Back-off of dispatch retries while a destination is down, as above.
    requeue_after_s : float
        A queued job whose message has waited this long is enqueued again (lost message).
    """

    lease_s: float = 60.0
    max_attempts: int = 3
    backoff_s: float = 30.0
    backoff_max_s: float = 600.0
    dispatch_max_attempts: int = 20
    dispatch_backoff_s: float = 10.0
    dispatch_backoff_max_s: float = 600.0
    requeue_after_s: float = 600.0

    def __post_init__(self) -> None:
        if self.lease_s <= 0 or self.backoff_s < 0 or self.dispatch_backoff_s < 0:
            raise ValueError("lease and back-off times must be positive")
        if self.max_attempts < 1 or self.dispatch_max_attempts < 1:
            raise ValueError("at least one attempt is needed")

    def job_delay_s(self, attempts: int) -> float:
        """Back-off before the next analysis attempt after ``attempts`` failed ones."""
        return min(self.backoff_s * 2 ** max(attempts - 1, 0), self.backoff_max_s)

    def dispatch_delay_s(self, attempts: int) -> float:
        """Back-off before the next C-STORE attempt after ``attempts`` failed ones."""
        return min(self.dispatch_backoff_s * 2 ** max(attempts - 1, 0), self.dispatch_backoff_max_s)
