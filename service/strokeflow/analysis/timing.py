"""Wall-clock time per pipeline stage, for results.json and the benchmarks."""

from __future__ import annotations

import time


class StageClock:
    """Records the seconds spent since the previous lap under each stage name."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        """Close the stage ``name`` (time since the previous lap or the start)."""
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 3)
        self._last = now
