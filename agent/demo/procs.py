"""Child processes of ``make run`` and ``make demo``: ports, a local mosquitto, and a
supervisor that starts each child in its own session and stops them all by pid.

Why own sessions: Ctrl-C at the terminal then reaches only the parent, which stops the
children in order (the line simulators, then the agent so it can say "stopped" on MQTT,
then the broker). Why PR_SET_PDEATHSIG: a parent killed with SIGKILL cannot clean up, so
the kernel sends each child SIGTERM instead and nothing is left running.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

Say = Callable[[str], None]
PR_SET_PDEATHSIG = 1
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


# -- ports -------------------------------------------------------------------------------


def port_free(host: str, port: int) -> bool:
    """True when ``host:port`` can be bound (what uvicorn and mosquitto will try)."""
    with socket.socket() as sock:
        # Like the servers: a port that only has TIME_WAIT leftovers counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_or_free(host: str, preferred: int) -> int:
    """``preferred`` when it can be bound, else any free port."""
    return preferred if port_free(host, preferred) else free_port(host)


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# -- children ------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[Any]
    stop_signal: int  # what asks it to stop cleanly
    grace_s: float  # how long it may take before SIGKILL
    cleanup: Callable[[], None] | None = None  # after it is gone (its temp files)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Supervisor:
    say: Say
    children: list[Child] = field(default_factory=list)
    hurry: bool = False  # a second Ctrl-C: no more grace

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        stop_signal: int = signal.SIGINT,
        grace_s: float = 30.0,
        stdout: int | IO[Any] | None = None,
    ) -> Child:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        child = Child(name, proc, stop_signal, grace_s)
        self.children.append(child)
        self.say(f"started {name} (pid {proc.pid})")
        return child

    def exited(self) -> Child | None:
        """The first child that is no longer running, if any."""
        return next((c for c in self.children if not c.running()), None)

    def stop_all(self) -> None:
        """Stop every child, newest first, each by its pid; SIGKILL after its grace."""
        for child in reversed(self.children):
            self._stop(child)
        self.children.clear()

    def _stop(self, child: Child) -> None:
        if child.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, child.stop_signal)
            deadline = time.monotonic() + child.grace_s
            while child.running() and time.monotonic() < deadline and not self.hurry:
                time.sleep(0.05)
            if child.running():
                self.say(f"{child.name} (pid {child.pid}) did not stop in time: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
        child.proc.wait()  # reaped: the pid is gone, not a zombie
        if child.cleanup is not None:
            child.cleanup()
        self.say(f"stopped {child.name} (pid {child.pid}, exit {child.proc.returncode})")


def stop_like_ctrl_c() -> None:
    """SIGTERM (systemd, timeout(1), a test) raises KeyboardInterrupt, like Ctrl-C."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def hurry_on_signal(supervisor: Supervisor) -> None:
    """While stopping: another Ctrl-C or SIGTERM means "no more grace", not a traceback."""

    def hurry(signum: int, frame: FrameType | None) -> None:
        supervisor.hurry = True

    signal.signal(signal.SIGINT, hurry)
    signal.signal(signal.SIGTERM, hurry)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when its parent dies. libc is
    loaded here, before the fork, so the child only makes one C call."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)

    def hook() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


# -- a local mosquitto ---------------------------------------------------------------------


def mosquitto_binary() -> str | None:
    """Debian puts mosquitto in /usr/sbin, which is not on a normal user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def start_local_broker(supervisor: Supervisor, binary: str, port: int) -> Child:
    """mosquitto on 127.0.0.1:``port``, anonymous, its config and log in a temp folder
    (it only lives as long as this run). Raises RuntimeError when it does not come up."""
    workdir = Path(tempfile.mkdtemp(prefix="bdi-mosquitto-"))
    conf = workdir / "mosquitto.conf"
    log_file = workdir / "mosquitto.log"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        # The demo's fit over MQTT carries many images; real limits are in configs/.
        "max_packet_size 67108864\n"
        f"log_dest file {log_file}\n" + ("user root\n" if os.geteuid() == 0 else ""),
        # As root, mosquitto drops to its own user and could not write the log here.
        encoding="utf-8",
    )
    # Its own output (a warning when run as root) goes to the log, not the terminal.
    with log_file.open("ab") as output:
        child = supervisor.spawn(
            "mosquitto",
            [binary, "-c", str(conf)],
            stop_signal=signal.SIGTERM,
            grace_s=10,
            stdout=output,
        )
    child.cleanup = lambda: shutil.rmtree(workdir, ignore_errors=True)
    wait_until(lambda: answers("127.0.0.1", port) or not child.running(), 10)
    if not child.running() or not answers("127.0.0.1", port):
        tail = log_file.read_text(errors="replace")[-600:] if log_file.exists() else ""
        raise RuntimeError(f"mosquitto did not start on 127.0.0.1:{port}. {tail.strip()}")
    return child
