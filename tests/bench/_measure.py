"""Timers, per-stage clocks and process memory readings (Linux /proc)."""

from __future__ import annotations

import functools
import resource
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])


def time_ms(fn: Callable[[], object], warmup: int, runs: int) -> list[float]:
    """Wall time of ``runs`` calls of ``fn`` in ms, after ``warmup`` discarded calls.

    The warm-up matters on CPU: oneDNN builds its kernels on the first calls of a shape,
    and those first calls are several times slower than the steady state.
    """
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


class StageClock:
    """Accumulates wall time per stage name, from ``with clock.stage(...)`` blocks or from
    functions temporarily wrapped in place with ``clock.patched(...)``."""

    def __init__(self) -> None:
        self.ms: defaultdict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.ms.clear()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] += (time.perf_counter() - start) * 1000

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return fn(*args, **kwargs)

        return timed

    @contextmanager
    def patched(self, owner: Any, attr: str, name: str) -> Iterator[None]:
        """Time every call of ``owner.attr`` (a module function or an instance's method)
        while the block runs. The engine looks such names up at call time, so this measures
        its real code path without duplicating any of its work."""
        own = attr in vars(owner)
        original = getattr(owner, attr)
        setattr(owner, attr, self.wrap(name, original))
        try:
            yield
        finally:
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)  # an instance falls back to its class's method


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    kb = _status_kb("VmRSS")
    return (kb or 0) / 1024


def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM, else ru_maxrss; both in kB here)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when unavailable, in which case
    ``peak_rss_mib`` keeps the process's lifetime peak."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True
