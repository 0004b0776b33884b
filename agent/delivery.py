"""The delivery thread: everything the engine's worker produced is handed over here.

The worker only computes. Resolving a caller's future (which runs its done-callbacks),
emitting the core's events, and whatever an adapter does with them (encoding, a broker
publish, a spool write, a recent verdict's thumbnail) run on this thread, so a slow
broker, disk or adapter never delays the next inference. Work runs in the order it was
posted.

Bounded: past ``max_pending`` waiting items the oldest *event* work is dropped and
counted; a reply to a caller is never dropped (the caller waits for it).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import structlog

log = structlog.get_logger("agent.delivery")

Work = Callable[[], None]


class Delivery:
    def __init__(self, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self.dropped = 0  # event work dropped because the queue was full
        self._queue: deque[tuple[Work, bool]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
            self._thread.start()

    def post(self, work: Work, droppable: bool = False) -> None:
        """Run ``work`` on the delivery thread. Before ``start`` and after ``stop`` it runs
        at once on the caller's thread: nothing posted is ever silently lost."""
        with self._cond:
            if self._thread is not None and not self._stopping:
                if len(self._queue) >= self.max_pending and self._drop_oldest_event():
                    self.dropped += 1
                self._queue.append((work, droppable))
                self._cond.notify()
                return
        _run_guarded(work)

    def _drop_oldest_event(self) -> bool:
        for i, (_, droppable) in enumerate(self._queue):
            if droppable:
                del self._queue[i]
                if self.dropped % 1000 == 0:
                    log.warning("delivery queue full: event dropped", dropped=self.dropped + 1)
                return True
        return False

    def stop(self, timeout: float | None = 10.0) -> None:
        """Deliver what is waiting, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._thread = None
        for work, _ in left:  # the thread did not finish in time: deliver here
            _run_guarded(work)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything posted so far was delivered (tests, orderly shutdown).
        On the delivery thread itself there is nothing to wait for: it would wait on itself."""
        if self._thread is threading.current_thread():
            return True
        done = threading.Event()
        self.post(done.set)
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                work, _ = self._queue.popleft()
            _run_guarded(work)


def _run_guarded(work: Work) -> None:
    try:
        work()
    except Exception:  # one listener's bug must not stop every later delivery
        log.exception("delivery failed")
