"""The one thread that owns the engine (and the GPU).

Infers (``infer`` and ``infer_batch``) are served before anything else: a fit calls
``checkpoint`` between backbone chunks and during the coreset loop, and the worker answers
waiting infers there, so an infer waits at most one chunk. Infers waiting together are
micro-batched through the backbone. The queue is bounded: when full, a command is answered
``busy`` at once.

While the model loads, commands that need it wait in the queue (within their deadline)
and are served once it is ready; the others (manifest, dataset listings, storing samples)
run meanwhile. The worker only computes: every reply is handed to the delivery thread,
which resolves the caller's future and tells the reply observers (events, adapters).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError

import structlog

from agent.commands import CalibrateNg, Command, FitImages, FitOk, Infer, InferBatch, Refit
from agent.delivery import Delivery
from agent.errors import AgentError, bad_request, busy
from agent.handlers import HANDLERS, RESULTS, infer_many
from agent.metrics import Metrics
from agent.replies import Reply
from agent.request_digest import request_digest
from agent.results import FitResult, InferResult, Result, verdicts_of
from agent.services import Services
from agent.stats import Stats

log = structlog.get_logger("agent.worker")

Job = tuple[Command, "Future[Reply]", float]
# Commands that build a memory or a calibration: what "training" means to the GUI.
TRAINING = (FitOk, Refit, FitImages, CalibrateNg)
TRAINING_NAMES = frozenset(cls.name for cls in TRAINING)


def _resolve(future: Future[Reply], reply: Reply) -> None:
    """Hand the reply over. A caller that gave up (its future cancelled: an HTTP server
    shutting down cancels the requests it still holds) no longer wants it, and that must
    never raise in the worker, whose death would leave every later command unanswered."""
    with contextlib.suppress(InvalidStateError):
        future.set_result(reply)


def _wanted(job: Job) -> bool:
    """False when the caller cancelled before the job started: it is dropped, not run.
    Once running, the job can no longer be cancelled."""
    return job[1].set_running_or_notify_cancel()


def _needs_model(cmd: Command) -> bool:
    if isinstance(cmd, FitOk):
        return cmd.memory_fit
    return isinstance(cmd, Infer | InferBatch | CalibrateNg | Refit | FitImages)


def reused_request_id(cmd: Command) -> AgentError:
    return bad_request(
        f"request_id {cmd.request_id!r} was already used for another {cmd.name} request "
        "(other ROI, images or fields) within the last hour; a repeat must be identical, "
        "a new request needs a new request_id"
    )


class Worker:
    def __init__(
        self, services: Services, stats: Stats, metrics: Metrics, delivery: Delivery
    ) -> None:
        self.services = services
        self.stats = stats
        self.metrics = metrics
        self.delivery = delivery
        self.capacity = services.settings.queue_size
        self.max_batch = services.settings.max_batch
        self._infers: deque[Job] = deque()  # infer and infer_batch: the fast lane
        self._others: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._refusing = False
        self._thread: threading.Thread | None = None
        self.backbone_passes = 0  # infer batches run (tests count micro-batching)
        self.current: str | None = None  # the command in flight, for /train/status
        self._in_batch = False  # an infer_batch is running (its checkpoints nest no deeper)

    @property
    def queue_size(self) -> int:
        with self._cond:
            return len(self._infers) + len(self._others)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._thread.start()

    def refuse_new(self) -> None:
        """Answer every later command busy; the one in flight and those queued still run.

        Safe from a signal handler: it takes no lock.
        """
        self._refusing = True

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking commands; finish the one in flight; answer the waiting ones busy."""
        with self._cond:
            self._stopping = True
            waiting = list(self._infers) + list(self._others)
            self._infers.clear()
            self._others.clear()
            self._cond.notify_all()
        for cmd, future, _ in waiting:
            self._hand_over(future, Reply(cmd, error=busy("the agent is shutting down")))
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, cmd: Command) -> Future[Reply]:
        future: Future[Reply] = Future()
        with self._cond:
            if self._stopping or self._refusing:
                reason = "the agent is shutting down"
            elif len(self._infers) + len(self._others) >= self.capacity:
                reason = f"queue full ({self.capacity} commands waiting); retry later"
            else:
                queue = self._infers if isinstance(cmd, Infer | InferBatch) else self._others
                queue.append((cmd, future, time.perf_counter()))
                self._cond.notify()
                return future
        # Refused on the caller's own thread, at once: no engine work was involved.
        self._hand_over(future, self._finish(cmd, busy(reason), 0.0), at_once=True)
        return future

    def training(self) -> tuple[str | None, int]:
        """The training command running now (if any) and how many wait in the queue."""
        with self._cond:
            queued = sum(isinstance(job[0], TRAINING) for job in self._others)
        current = self.current if self.current in TRAINING_NAMES else None
        return current, queued

    def model_changed(self) -> None:
        """The model finished loading (or failed to): wake the commands waiting for it."""
        with self._cond:
            self._cond.notify_all()

    def _hand_over(
        self,
        future: Future[Reply],
        reply: Reply,
        unless_done: bool = False,
        at_once: bool = False,
    ) -> None:
        """Resolve the caller's future and tell the observers, on the delivery thread
        (``at_once``: resolve here, only the observers there)."""
        if at_once:
            _resolve(future, reply)

        def deliver() -> None:
            if unless_done and future.done():
                return
            if not at_once:
                _resolve(future, reply)
            for observe in list(self.services.reply_observers):
                try:
                    observe(reply)
                except Exception:  # an observer's bug must not lose the next reply
                    log.exception("reply observer failed", command=reply.command.name)

        self.delivery.post(deliver)

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                step = self._next_step()
                while step is None:
                    if self._stopping and not (self._infers or self._others):
                        return
                    # Nothing runnable: empty, or everything waits for the model. Wake at
                    # least twice a second to answer those whose deadline passed.
                    self._cond.wait(0.5 if self._infers or self._others else None)
                    self._expire_waiting()
                    step = self._next_step()
            jobs = [job for job in step if _wanted(job)]
            try:
                self._run_jobs(jobs)
            except Exception as exc:  # the thread must outlive any bug: nothing else runs
                log.exception("worker step failed")
                for cmd, future, queued in jobs:
                    error = AgentError.from_exception(exc)
                    # Delivered after what this step already handed over: only the jobs
                    # still unanswered get the error.
                    self._hand_over(future, self._finish(cmd, error, queued), unless_done=True)

    def _next_step(self) -> list[Job] | None:
        """The jobs to run next (under the lock): infers first, micro-batched, or one
        ``infer_batch``; else the oldest other command. While the model loads, only the
        commands that do not need it; None when nothing may run now."""
        loading = self.services.model_state == "loading"
        if self._infers and not loading:
            return self._take_fast(allow_batch=True)
        for i, job in enumerate(self._others):
            if not (loading and _needs_model(job[0])):
                del self._others[i]
                return [job]
        return None

    def _expire_waiting(self) -> None:
        """Answer busy the waiting commands whose deadline passed (under the lock)."""
        now = time.monotonic()
        for queue in (self._infers, self._others):
            for job in [j for j in queue if j[0].deadline is not None and now > j[0].deadline]:
                queue.remove(job)
                error = busy("the command's deadline passed while it waited in the queue")
                self._hand_over(job[1], self._finish(job[0], error, job[2]))

    def _take_fast(self, allow_batch: bool) -> list[Job]:
        """Up to ``max_batch`` single infers from the head of the fast lane, or one
        ``infer_batch`` when it is at the head (and ``allow_batch``)."""
        batch: list[Job] = []
        while self._infers and len(batch) < self.max_batch:
            if isinstance(self._infers[0][0], InferBatch):
                if not batch and allow_batch:
                    batch.append(self._infers.popleft())
                break
            batch.append(self._infers.popleft())
        return batch

    def _serve_waiting_infers(self) -> None:
        """A long command's checkpoint: answer the infers that arrived meanwhile. A fit
        serves waiting ``infer_batch`` commands too; an ``infer_batch`` (already at a
        checkpoint) serves only single infers, so checkpoints never nest deeper."""
        allow_batch = not self._in_batch
        while True:
            with self._cond:
                taken = self._take_fast(allow_batch)
            if not taken:
                return
            self._run_jobs([job for job in taken if _wanted(job)])

    def _run_jobs(self, jobs: list[Job]) -> None:
        """Single infers micro-batched through the backbone; any other command alone."""
        if len(jobs) == 1 and not isinstance(jobs[0][0], Infer):
            self._run_one(*jobs[0])
        elif jobs:
            self._run_infers(jobs)

    def _refusal(self, cmd: Command) -> AgentError | None:
        if cmd.deadline is not None and time.monotonic() > cmd.deadline:
            return busy("the command's deadline passed while it waited in the queue")
        if _needs_model(cmd):
            reason = self.services.model_unavailable()
            if reason is not None:
                return busy(reason)
        return None

    def _run_infers(self, batch: list[Job]) -> None:
        runnable = []
        for cmd, future, queued in batch:
            refusal = self._refusal(cmd)
            if refusal is not None:
                self._hand_over(future, self._finish(cmd, refusal, queued))
            else:
                runnable.append((cmd, future, queued))
        if not runnable:
            return
        self.backbone_passes += 1
        try:
            results = infer_many([job[0] for job in runnable], self.services)  # type: ignore[misc]
        except Exception as exc:  # the engine failed as a whole (e.g. out of memory)
            log.exception("infer batch failed")
            results = [AgentError.from_exception(exc)] * len(runnable)
        for (cmd, future, queued), result in zip(runnable, results, strict=True):
            self._hand_over(future, self._finish(cmd, result, queued))

    def _run_one(self, cmd: Command, future: Future[Reply], queued: float) -> None:
        refusal = self._refusal(cmd)
        if refusal is not None:
            self._hand_over(future, self._finish(cmd, refusal, queued))
            return
        journal = self.services.journal
        outer, self.current = self.current, cmd.name
        outer_batch, self._in_batch = self._in_batch, self._in_batch or isinstance(cmd, InferBatch)
        digest = request_digest(cmd) if cmd.mutating else ""
        try:
            if cmd.mutating:
                first = journal.get(cmd.name, cmd.request_id)
                if first is not None:
                    if not first.same_request(digest):
                        raise reused_request_id(cmd)
                    replayed = RESULTS[type(cmd)].from_fields(first.body)
                    self._hand_over(future, self._finish(cmd, replayed, queued, replayed=True))
                    return
            result = HANDLERS[type(cmd)](cmd, self.services, self._serve_waiting_infers)
        except Exception as exc:
            error = AgentError.from_exception(exc)
            if error.kind == "internal":
                log.exception("command failed", command=cmd.name, request_id=cmd.request_id)
            self._hand_over(future, self._finish(cmd, error, queued))
            return
        finally:
            self.current, self._in_batch = outer, outer_batch
        if cmd.mutating:
            try:
                journal.put(cmd.name, cmd.request_id, result.fields(), digest)
            except Exception:
                # Applied and on disk: the reply stays a success. A repeat of this request
                # id is then applied again; stored samples are reused, not stored twice.
                log.exception("journal write failed", command=cmd.name, request_id=cmd.request_id)
        self._hand_over(future, self._finish(cmd, result, queued))

    def _finish(
        self,
        cmd: Command,
        outcome: Result | AgentError,
        queued: float,
        replayed: bool = False,
    ) -> Reply:
        elapsed = (time.perf_counter() - queued) * 1000 if queued else 0.0
        if isinstance(outcome, AgentError):
            reply = Reply(cmd, error=outcome, elapsed_ms=elapsed)
        else:
            reply = Reply(cmd, result=outcome, elapsed_ms=elapsed, replayed=replayed)
        self._log(reply)
        return reply

    def _count(self, reply: Reply, outcome: str) -> None:
        cmd, metrics = reply.command, self.metrics
        metrics.commands.labels(cmd.name, cmd.source, outcome).inc()
        metrics.queue_size.set(self.queue_size)
        if outcome != "ok":
            return
        if cmd.name in ("infer", "infer_batch"):
            metrics.infer_ms.observe(reply.elapsed_ms)
        elif cmd.name in ("fit_ok", "refit", "fit_images"):
            metrics.fit_ms.observe(reply.elapsed_ms)
        for verdict in verdicts_of(reply.result):
            if verdict.is_anomaly:
                metrics.anomalies.labels(cmd.recipe_id, verdict.role_id, verdict.roi_id).inc()

    def _log(self, reply: Reply) -> None:
        cmd = reply.command
        outcome = "ok" if reply.ok else reply.error.kind  # type: ignore[union-attr]
        self.stats.record(cmd.name, cmd.source, outcome, reply.elapsed_ms)
        self._count(reply, outcome)
        fields: dict = {
            "request_id": cmd.request_id,
            "recipe_id": cmd.recipe_id,
            "source": cmd.source,
            "command": cmd.name,
            "outcome": outcome,
            "elapsed_ms": round(reply.elapsed_ms, 1),
        }
        for name in ("role_id", "roi_id"):
            if hasattr(cmd, name):
                fields[name] = getattr(cmd, name)
        values = reply.result.fields() if isinstance(reply.result, InferResult | FitResult) else {}
        for name in ("score", "threshold", "is_anomaly", "model_version"):
            if name in values:
                fields[name] = values[name]
        if reply.replayed:
            fields["replayed"] = True
        if reply.error is not None:
            fields["error"] = reply.error.message
            log.warning("command", **fields)
        else:
            log.info("command", **fields)
