"""Folder adapter (contract section 6): a watched inbox, and GUI dataset roots.

Threads, and why: watchdog's own thread only hands each event over (it must never wait on
the engine); one *scheduler* thread owns every piece of state (what is settling, in flight,
due for a refit) and decides; one *I/O* thread writes results and moves files, so fsyncs
never delay the decisions. Engine work goes through ``agent.bus.submit``; its Future's
callback only posts back to the scheduler.

    create(settings, agent) -> FolderAdapter;  adapter.start();  adapter.stop()

Decisions where the contract is silent:

* Sidecars: with a per-ROI default ``mm_per_px`` a file without sidecar is taken at once
  (write the sidecar *before* the image); without one it waits max(1 s, 2 x settle) for a
  late sidecar, then fails with a ``bad_request`` naming both sources. A sidecar that is
  not JSON is refused once it has been still for ``settle_ms``, and moves with its image.
  A sidecar whose image never comes goes to failed/ after 10 minutes.
* request_id: the sidecar's, else a UUID derived from the file (path, size, mtime,
  content): a file handled again after a crash keeps its id (journal, consumers).
* A created file (inotify) is open until its close event, or 2 s without writes: events
  can lag and merge under load, so a quiet spell of ``settle_ms`` alone proves nothing.
* ``processed/`` and ``failed/`` dates are UTC. Only ``infer`` results (and refits) are
  published; ``ok``/``ng`` results are files only. Their day folders are deleted after
  ``retention_days`` when set (``folders_retention``).
* Files outside ``inbox/<role>/<roi>/<kind>/`` are logged once and left alone; files in
  an unknown ``<kind>`` folder, or not images, fail with an explanation.
* One agent per inbox: two agents watching the same inbox would both take a file.

See ``folders_inbox`` (what is complete, in flight), ``folders_refits`` (debounced
refits), ``folders_output`` (where files go, crash safety), ``folders_datasets`` (GUI
roots) and ``folders_layout`` (paths, sidecars, commands).
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from adapters.folders.datasets import DatasetRoots
from adapters.folders.inbox import Inbox
from adapters.folders.output import Output
from adapters.folders.retention import sweep
from agent.bus import Bus
from agent.config import Settings
from agent.services import Services
from engine.errors import storage_error

if TYPE_CHECKING:
    from agent.bootstrap import Agent

log = structlog.get_logger("adapters.folders")

# Opens and reads (ours included) raise no event: reading a GUI image must not look like a change.
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]
SIGNALS = {
    FileClosedEvent: "closed",
    FileCreatedEvent: "created",
    FileModifiedEvent: "modified",
}
STOP_GRACE_S = 10.0  # how long stop() waits for our commands already on the bus


def create(settings: Settings, agent: Agent) -> FolderAdapter:
    return FolderAdapter(settings, agent.services, agent.bus)


class FolderAdapter:
    def __init__(self, settings: Settings, services: Services, bus: Bus) -> None:
        self.settings = settings.folders
        data_root = settings.data_root.absolute()
        self.data_root = data_root
        self.inbox_root = data_root / "inbox"
        self.output = Output(data_root)
        self._calls: deque[Callable[[float], None]] = deque()
        self._cond = threading.Condition()
        self._io: queue.Queue[Callable[[], None] | None] = queue.Queue()
        capacity = max(1, min(32, settings.queue_size // 2))  # leave room for MQTT and HTTP
        self.inbox = Inbox(
            self.inbox_root,
            self.settings,
            services,
            bus.submit,
            self.output,
            self.post,
            self._io.put,
            native=False,  # set in start(), once the observer is known
            capacity=capacity,
        )
        self.datasets = DatasetRoots(
            list(self.settings.dataset_roots),
            self.settings,
            services,
            bus.submit,
            self.output,
            self.post,
            self._io.put,
        )
        self._observer: BaseObserver | None = None
        self._watched: set[Path] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        # watchdog re-adds a watch it already holds when nested folders appear quickly
        # (mkdir -p role/roi/infer) and warns; the watch is fine, the warning is noise.
        warnings.filterwarnings(
            "ignore", message="Callback with id .* already exists", category=RuntimeWarning
        )
        try:
            self.inbox_root.mkdir(parents=True, exist_ok=True)
            _keep_group(self.inbox_root)
            self.output.prepare()
            replayed, stuck = self.output.replay()  # before anything else touches the inbox
        except OSError as exc:
            # A read-only data root (an inspection-only node): files could be neither moved
            # nor answered, so the folders stay off; MQTT and HTTP still inspect.
            log.error("folder adapter off", reason=str(storage_error(exc, self.inbox_root)))
            return
        self.inbox.stuck.update(stuck)
        now = time.monotonic()
        for key in self.output.pending_refits():
            self.inbox.refits.schedule(key, now)
        observer = PollingObserver() if self.settings.polling else _native_observer()
        self._observer = observer
        # Close events (a file is complete) exist with inotify only; elsewhere: settle only.
        self.inbox.native = _is_inotify(observer)
        self._watch(self.inbox_root)
        self._watch_dataset_roots()
        observer.start()
        self._threads = [
            threading.Thread(target=self._schedule_loop, name="folders-scheduler", daemon=True),
            threading.Thread(target=self._io_loop, name="folders-io", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info(
            "folder adapter started",
            inbox=str(self.inbox_root),
            dataset_roots=[str(r) for r in self.datasets.roots],
            polling=self.settings.polling,
            settle_ms=self.settings.settle_ms,
            intents_replayed=replayed,
        )

    def stop(self) -> None:
        """Stop watching; wait (a little) for our commands on the bus so their files are
        finished; whatever is left stays in the inbox for the next start."""
        if self._stopping or self._observer is None:
            return
        self._stopping = True
        self._observer.stop()
        self.post(lambda now: None)  # wake the scheduler: it sees _stopping
        self._threads[0].join(STOP_GRACE_S + 5)
        self._io.put(None)
        self._threads[1].join(60)
        self._observer.join(5)
        log.info("folder adapter stopped")

    def post(self, call: Callable[[float], None]) -> None:
        """Run ``call(now)`` on the scheduler thread (from any thread; never blocks)."""
        with self._cond:
            self._calls.append(call)
            self._cond.notify()

    # -- watching -------------------------------------------------------------------------

    def _watch(self, path: Path) -> None:
        assert self._observer is not None
        handler = _Handler(self.post, self._route)
        self._observer.schedule(handler, str(path), recursive=True, event_filter=EVENTS)
        self._watched.add(path)

    def _watch_dataset_roots(self) -> None:
        for root in self.datasets.roots:
            if root in self._watched:
                continue
            if root.is_dir():
                self._watch(root)
            else:
                log.warning("dataset root missing; watched once it exists", root=str(root))

    def _route(self, event: FileSystemEvent, now: float) -> None:
        src = Path(os.fsdecode(event.src_path)) if event.src_path else None
        dest = Path(os.fsdecode(event.dest_path)) if event.dest_path else None
        for path in (src, dest):
            if path is not None and self.datasets.owns(path):
                self.datasets.on_fs(path, now)
        if event.is_directory:
            return  # watchdog reports the files of a folder that appears one by one
        if isinstance(event, FileMovedEvent):
            if src is not None:
                self.inbox.on_gone(src)
            if dest is not None:
                self.inbox.on_fs(dest, "moved", now)
        elif isinstance(event, FileDeletedEvent):
            if src is not None:
                self.inbox.on_gone(src)
        elif src is not None:
            self.inbox.on_fs(src, SIGNALS.get(type(event), "modified"), now)

    # -- threads ---------------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        next_scan = time.monotonic()  # the start-up scan
        wake = next_scan
        stop_deadline: float | None = None
        while True:
            with self._cond:
                if not self._calls:
                    self._cond.wait(max(0.0, wake - time.monotonic()))
                calls = list(self._calls)
                self._calls.clear()
            now = time.monotonic()
            for call in calls:
                _guard(call, now)
            if self._stopping:
                self.inbox.stopping = True
                stop_deadline = stop_deadline or now + STOP_GRACE_S
                if self.inbox.in_flight == 0 or now >= stop_deadline:
                    return
            elif now >= next_scan:
                _guard(self._rescan, now)
                next_scan = now + self.settings.rescan_s
            wake = min(
                _guard(self.inbox.tick, now) or now + 0.5,
                _guard(self.datasets.tick, now) or now + 0.5,
                next_scan if not self._stopping else now + 0.5,
            )

    def _rescan(self, now: float) -> None:
        self._watch_dataset_roots()
        self.inbox.scan(now)
        self.datasets.scan(now)
        if self.settings.retention_days:  # deletes are I/O: never on the scheduler
            self._io.put(self._sweep_retention)

    def _sweep_retention(self) -> None:
        sweep(self.data_root, self.settings.retention_days)

    def _io_loop(self) -> None:
        while True:
            job = self._io.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a bad file never kills the adapter
                log.exception("folder I/O step failed")


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: hands the event to the scheduler, nothing else."""

    def __init__(self, post: Callable[[Callable[[float], None]], None], route: Any) -> None:
        self._post = post
        self._route = route

    def dispatch(self, event: FileSystemEvent) -> None:
        self._post(partial(self._route, event))


def _keep_group(folder: Path) -> None:
    """The setgid bit on the inbox: folders a camera account makes there belong to the
    agent's group (not the camera's own), so the agent may move files out of them."""
    try:
        info = folder.stat()
        if info.st_uid == os.geteuid() and not info.st_mode & stat.S_ISGID:
            folder.chmod(stat.S_IMODE(info.st_mode) | stat.S_ISGID)
    except OSError:
        pass  # not ours to change (a share): its owner sets it up


def _native_observer() -> BaseObserver:
    """inotify with full events: a file moved in from outside the tree is a move (complete
    at once), not a creation (open until its close event)."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # not Linux
        return Observer()
    return InotifyObserver(generate_full_events=True)


def _is_inotify(observer: BaseObserver) -> bool:
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:
        return False
    return isinstance(observer, InotifyObserver)


def _guard(call: Callable[[float], Any], now: float) -> Any:
    try:
        return call(now)
    except Exception:  # one bad file or folder must not stop the adapter
        log.exception("folder adapter step failed")
        return None
