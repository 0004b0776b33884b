"""TCP options of the server side of live connections, read from the kernel, not timed.

A server that leaves Nagle's algorithm on makes each small reply wait out the client's
delayed ACK (40 ms). Rather than time replies, the tests read TCP_NODELAY off the very
sockets the server accepted: found by their inode in ``/proc/net/tcp*`` (local port =
the server's port, state established), then duplicated out of whichever process holds
them with ``pidfd_getfd`` (Linux 5.6+, root or the same user).
"""

from __future__ import annotations

import ctypes
import os
import socket
from pathlib import Path

SYS_PIDFD_GETFD = 438  # the same number on every architecture Linux numbers generically
ESTABLISHED = "01"


def server_connections_nodelay(port: int) -> list[bool]:
    """TCP_NODELAY of every established connection whose local port is ``port``."""
    inodes = _established_inodes(port)
    found = []
    for pid, fd in _holders(inodes):
        duplicate = _steal(pid, fd)
        try:
            sock = socket.socket(fileno=duplicate)
            try:
                found.append(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
            finally:
                sock.close()
        except OSError:
            os.close(duplicate)
    return found


def _established_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == ESTABLISHED:
                inodes.add(fields[9])
    return inodes


def _holders(inodes: set[str]) -> list[tuple[int, int]]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for entry in (proc / "fd").iterdir():
                target = os.readlink(entry)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    out.append((int(proc.name), int(entry.name)))
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return out


def _steal(pid: int, fd: int) -> int:
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        duplicate = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if duplicate < 0:
            raise OSError(ctypes.get_errno(), f"pidfd_getfd of fd {fd} in process {pid}")
        return int(duplicate)
    finally:
        os.close(pidfd)
