"""The inbox: which files are complete, and what is in flight.

Every method runs on the adapter's scheduler thread (``Inbox`` keeps no locks); replies
come back through ``post`` and disk work leaves through ``run_io``.

A file's life: *pending* (size+mtime must stay put for ``settle_ms``) -> *ready* (waits for
a slot: at most ``capacity`` commands of ours are queued on the bus) -> *running* ->
*confirming* (the file must still be the bytes that were sent) -> *finishing* (the I/O
thread writes the result and moves the file) -> gone. A ``busy`` reply sends it back to
pending with a back-off; it never fails a file.

An ``infer`` file announced by a close or a rename is sent to the engine at once and only
*confirmed* after the settle time: the wait overlaps the engine work instead of adding to
it, and a file that changed meanwhile is simply sent again.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import structlog

from adapters.folders.finish import Job, orphan_sidecars, walk_inbox, write_outcome
from adapters.folders.hooks import Post, RunIo, Submit
from adapters.folders.layout import (
    FileChanged,
    FileSig,
    InboxFile,
    Refused,
    Sidecar,
    SidecarPending,
    ascii_name,
    classify,
    error_body,
    failure_ids,
    irregular,
    prepare_command,
    read_stable,
    stat_sig,
)
from adapters.folders.output import Output
from adapters.folders.refits import Refits, refit_key
from agent.commands import FitOk
from agent.config import FolderSettings
from agent.errors import bad_request
from agent.replies import Reply
from agent.services import Services

log = structlog.get_logger("adapters.folders")


WRITE_QUIET_S = 2.0  # native observer: writes seen and no close yet means the file is open
EMPTY_SETTLE_S = 2.0  # an empty file is more likely a writer that has not started yet
SIDECAR_GRACE_MIN_S = 1.0  # no sidecar and no default scale: wait this long for a sidecar
BUSY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
ORPHAN_SIDECAR_S = 600.0  # a sidecar whose image never came goes to failed/ after this


@dataclass
class Entry:
    file: InboxFile
    sig: FileSig | None
    stable_since: float
    check_at: float
    state: str = "pending"  # pending | ready | running | confirming | finishing
    strong: bool = False  # announced by a close or a rename
    writing_until: float = 0.0
    speculated: bool = False
    grace_since: float | None = None
    attempts: int = 0
    job: Job | None = None


class Inbox:
    def __init__(
        self,
        root: Path,
        settings: FolderSettings,
        services: Services,
        submit: Submit,
        output: Output,
        post: Post,
        run_io: RunIo,
        native: bool,
        capacity: int,
    ) -> None:
        self.root = root
        self.settle_s = settings.settle_ms / 1000
        self.grace_s = max(SIDECAR_GRACE_MIN_S, 2 * self.settle_s)
        self.services = services
        self.submit = submit
        self.output = output
        self.post = post
        self.run_io = run_io
        self.native = native  # inotify: close events exist; polling: they do not
        self.capacity = capacity
        self.entries: dict[Path, Entry] = {}
        self.ready: deque[Entry] = deque()
        self.in_flight = 0
        self.refits = Refits(
            root,
            settings.fit_debounce_s,
            services,
            submit,
            output,
            post,
            run_io,
            self._ok_on_its_way,
        )
        self.stuck: dict[Path, FileSig | None] = {}  # could not be moved: not retried as is
        self.warned: set[Path] = set()
        self.stopping = False

    # -- events ---------------------------------------------------------------------

    def on_fs(self, path: Path, signal: str, now: float) -> None:
        """``signal``: closed | moved (the file is complete), created | modified | scan."""
        found = classify(self.root, path)
        if found is None:
            return
        if found == "sidecar":
            self._wake_stem(path, now)
            return
        assert isinstance(found, InboxFile)
        entry = self.entries.get(path)
        if entry is None and (kind := irregular(path)) is not None:
            self._fail_irregular(found, kind)
            return
        if entry is None:
            sig = stat_sig(path)
            if sig is None or not path.is_file() or self.stuck.get(path, ()) == sig:
                return
            entry = Entry(found, sig, now, now + self._window(sig))
            self.entries[path] = entry
        if signal in ("closed", "moved"):
            entry.strong, entry.writing_until = True, 0.0
        elif self.native and not entry.strong:
            entry.writing_until = max(entry.writing_until, self._open_until(signal, entry, now))
        if entry.state == "pending":
            entry.check_at = now

    def _open_until(self, signal: str, entry: Entry, now: float) -> float:
        """With inotify, a created or written file is open until its close event (events
        can lag by hundreds of ms under load, and repeated writes merge into one event, so
        a quiet period alone is no proof). A lost close costs ``WRITE_QUIET_S``. A file
        only found by a scan counts as open while its mtime is that recent."""
        if signal in ("created", "modified"):
            return now + WRITE_QUIET_S
        age = time.time() - (entry.sig[1] / 1e9 if entry.sig else 0.0)
        return now + max(0.0, WRITE_QUIET_S - age)

    def on_gone(self, path: Path) -> None:
        entry = self.entries.get(path)
        if entry is not None and entry.state in ("pending", "ready"):
            entry.state = "gone"
            del self.entries[path]

    def _wake_stem(self, sidecar: Path, now: float) -> None:
        stem = sidecar.stem
        for entry in self.entries.values():
            path = entry.file.path
            if path.parent == sidecar.parent and path.stem == stem and entry.state == "pending":
                entry.check_at = now

    def _window(self, sig: FileSig | None) -> float:
        return self.settle_s if sig and sig[0] > 0 else max(self.settle_s, EMPTY_SETTLE_S)

    # -- time -----------------------------------------------------------------------

    def tick(self, now: float) -> float:
        """Advance every file and refit that is due; returns when to call again."""
        for entry in list(self.entries.values()):
            if entry.check_at <= now:
                if entry.state == "pending":
                    self._check(entry, now)
                elif entry.state == "confirming":
                    self._confirm(entry, now)
        while self.ready and self.in_flight < self.capacity and not self.stopping:
            entry = self.ready.popleft()
            if entry.state == "ready":
                self._start(entry, now, speculative=False)
        wake = [e.check_at for e in self.entries.values() if e.state in ("pending", "confirming")]
        wake.append(self.refits.tick(now, self.stopping))
        return min(wake)

    def _check(self, entry: Entry, now: float) -> None:
        sig = stat_sig(entry.file.path)
        if sig is None:
            del self.entries[entry.file.path]
            return
        kind = irregular(entry.file.path)
        if kind is not None:  # replaced by a link (or a FIFO) since it was first seen
            del self.entries[entry.file.path]
            self._fail_irregular(entry.file, kind)
            return
        if sig != entry.sig:
            entry.sig, entry.stable_since = sig, now
        if now < entry.writing_until:
            entry.check_at = entry.writing_until
            return
        settled_at = entry.stable_since + self._window(sig)
        if now >= settled_at:
            entry.state = "ready"
            self.ready.append(entry)
            return
        entry.check_at = settled_at
        if (
            entry.file.kind == "infer"
            and entry.strong
            and not entry.speculated
            and sig[0] > 0
            and self.in_flight < self.capacity
            and not self.stopping
        ):
            self._start(entry, now, speculative=True)

    def _start(self, entry: Entry, now: float, speculative: bool) -> None:
        file = entry.file
        entry.speculated |= speculative  # one early try per file; then the plain path
        try:
            data, sig = read_stable(file.path)
        except FileNotFoundError:
            self.entries.pop(file.path, None)
            return
        except (FileChanged, OSError):
            self._back_to_pending(entry, now, None)
            return
        if sig != entry.sig:
            self._back_to_pending(entry, now, sig)
            return
        final = entry.grace_since is not None and now - entry.grace_since >= self.grace_s
        try:
            command, sidecar = prepare_command(
                file, self.root, data, sig, self.services.defaults_for, self.settle_s, final
            )
        except SidecarPending:
            # mm_per_px may still come with a late sidecar: wait a little, then refuse.
            entry.grace_since = entry.grace_since if entry.grace_since is not None else now
            entry.state = "pending"
            entry.check_at = now + min(0.25, self.grace_s)
            return
        except Refused as refused:
            entry.job = Job(None, sig, refused.sidecar, False, body=refused.body)
            self._finish(entry)
            return
        entry.job = Job(command, sig, sidecar, speculative)
        entry.state = "running"
        self.in_flight += 1
        future = self.submit(command)
        future.add_done_callback(
            lambda f: self.post(lambda t: self._on_reply(entry, f.result(), t))
        )

    def _back_to_pending(self, entry: Entry, now: float, sig: FileSig | None) -> None:
        entry.state, entry.job = "pending", None
        entry.sig, entry.stable_since = sig, now
        entry.check_at = now + self._window(sig)

    def _on_reply(self, entry: Entry, reply: Reply, now: float) -> None:
        self.in_flight -= 1
        if entry.state != "running" or entry.job is None:
            return
        if reply.error is not None and reply.error.kind == "busy":
            # Queue full, model loading, or shutting down: the file waits in the inbox.
            entry.state, entry.job = "pending", None
            entry.attempts += 1
            backoff = BUSY_BACKOFF_S[min(entry.attempts, len(BUSY_BACKOFF_S)) - 1]
            entry.check_at = now + backoff
            if self.stopping:
                del self.entries[entry.file.path]
            return
        entry.job.reply = reply
        entry.state = "confirming"
        self._confirm(entry, now)

    def _confirm(self, entry: Entry, now: float) -> None:
        """The reply is only kept if the file (and its sidecar) did not change meanwhile."""
        job = entry.job
        assert job is not None
        sig = stat_sig(entry.file.path)
        sidecar_now = stat_sig(entry.file.sidecar)
        sidecar_changed = sidecar_now != job.sidecar.sig and (
            job.speculative or job.sidecar.sig is not None
        )
        if sig != job.sig or sidecar_changed:
            if sig is None:
                del self.entries[entry.file.path]
                return
            log.info("folder file changed while handled; again", path=str(entry.file.path))
            self._back_to_pending(entry, now, sig)
            entry.state = "pending"
            return
        due = max(entry.stable_since + self._window(sig), entry.writing_until)
        if now < due:
            entry.check_at = due
            return
        self._finish(entry)

    # -- finishing (on the I/O thread) ------------------------------------------------

    def _finish(self, entry: Entry) -> None:
        entry.state = "finishing"
        self.run_io(lambda: self._write(entry))

    def _write(self, entry: Entry) -> None:
        assert entry.job is not None
        outcome = "done"
        try:
            write_outcome(entry.file, entry.job, self.services, self.output)
        except Exception:
            log.exception("folder file could not be finished", path=str(entry.file.path))
            outcome = "stuck"
        self.post(lambda t: self._on_finished(entry, outcome, t))

    def _on_finished(self, entry: Entry, outcome: str, now: float) -> None:
        path = entry.file.path
        if self.entries.get(path) is entry:
            del self.entries[path]
        job = entry.job
        if outcome == "stuck" and job is not None:
            self.stuck[path] = job.sig
            return
        if job is not None and isinstance(job.command, FitOk) and job.reply and job.reply.ok:
            self.refits.schedule(refit_key(job.command), now)

    def _ok_on_its_way(self, role_id: str, roi_id: str) -> bool:
        """An ok/ file of this ROI is still settling or in flight: its refit waits."""
        return any(
            e.file.kind == "ok" and e.file.role_id == role_id and e.file.roi_id == roi_id
            for e in self.entries.values()
        )

    # -- rescans ---------------------------------------------------------------------

    def scan(self, now: float) -> None:
        """Every waiting file, in name order: nothing dropped while we were down, or whose
        event was lost, stays behind."""
        for found in walk_inbox(self.root, self.warned):
            for path in found:
                if path not in self.entries:
                    self.on_fs(path, "scan", now)
            for sidecar in orphan_sidecars(found, ORPHAN_SIDECAR_S):
                self._fail_orphan(sidecar)

    def _fail_irregular(self, file: InboxFile, kind: str) -> None:
        """A link, FIFO, socket or device in the inbox goes to failed/ with its error, like
        any file that can never succeed; it is never read."""
        path = file.path
        sig = stat_sig(path, follow=False)
        if sig is None or path in self.stuck or path in self.entries:
            return
        message = f"{ascii_name(path)} is {kind}, not a regular file: only image files are taken"
        body = error_body(bad_request(message), failure_ids({}, str(uuid.uuid4())))
        entry = Entry(file, sig, 0.0, 0.0)
        entry.job = Job(None, sig, Sidecar({}, None), False, body=body)
        self.entries[path] = entry
        self._finish(entry)

    def _fail_orphan(self, path: Path) -> None:
        """A sidecar whose image never came goes to failed/ instead of waiting forever."""
        sig = stat_sig(path)
        if sig is None or path in self.stuck or path in self.entries:
            return
        role_id, roi_id, kind = path.relative_to(self.root).parts[:3]
        message = f"sidecar {path.name} has had no image {path.stem}.* for a while"
        body = error_body(bad_request(message), failure_ids({}, str(uuid.uuid4())))
        entry = Entry(InboxFile(path, role_id, roi_id, kind), sig, 0.0, 0.0)
        entry.job = Job(None, sig, Sidecar({}, None), False, body=body)
        self.entries[path] = entry
        self._finish(entry)
