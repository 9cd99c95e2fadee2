"""Working memory: the limit a computation is checked against before it allocates, and its measured peak.

:func:`check_budget` refuses an estimated allocation over the limit with a
:class:`~lipcert.errors.MemoryBudgetError` that names the CLI flag ``--max-dense-gb`` (Python:
``max_bytes=``); the default limit is 80 % of the memory available when the check runs.
:class:`PeakMemory` measures the peak resident memory of a block of code above its start, sampled
from ``/proc/self/statm`` every 2 ms (Linux; elsewhere the process's peak, from ``getrusage``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType

from .errors import MemoryBudgetError

FALLBACK_LIMIT = 4 * 10**9
"""Limit in bytes when the available memory cannot be read."""


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_limit() -> int:
    """80 % of the available memory, or :data:`FALLBACK_LIMIT` when it is unknown."""
    free = available_bytes()
    return FALLBACK_LIMIT if free is None else int(0.8 * free)


def check_budget(what: str, needed: float, limit: float | None = None) -> None:
    """Raise MemoryBudgetError if ``needed`` bytes (an estimate) exceed ``limit`` (default :func:`default_limit`)."""
    cap = default_limit() if limit is None else limit
    if needed > cap:
        source = "80% of the memory available" if limit is None else "the given limit"
        raise MemoryBudgetError(
            f"{what} needs about {needed / 1e9:.3g} GB of working memory, over {source} ({cap / 1e9:.3g} GB); "
            "raise the limit with --max-dense-gb (Python: max_bytes=) on a machine that has the memory, or use a "
            "cheaper method (naive, eclipse-fast)")


def _resident() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)


class PeakMemory:
    """Context manager: ``peak_bytes`` is the peak resident memory inside the block minus that at its start.

    Memory the allocator kept from earlier work is reused without showing, so the value is the growth
    the block caused (a lower estimate of its working memory when earlier blocks were larger).
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._base = self._top = 0
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._top = max(self._top, _resident())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._base = self._top = _resident()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self._top, _resident()) - self._base


__all__ = ["FALLBACK_LIMIT", "PeakMemory", "available_bytes", "check_budget", "default_limit"]
