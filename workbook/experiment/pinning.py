"""Arms that share a CPU: the server processes of an interleaved comparison pinned to one core.

An interleaved comparison gives each arm a connection of its own, so each arm is served by its
own server process, and Linux keeps a process on the CPU it last ran on. On a shared machine
CPUs are not alike from one second to the next (a neighbour's job, a hypervisor stealing the
core): whichever arm's process sits on the busier CPU runs slower, for as long as it stays there.
Interleaving cannot cancel that, because the slowdown follows the connection, not the clock.
Measured here (2 cores, ``benchmarks/same_cpu.py``: 100 A/A comparisons of 20 turns, the same
query and parameters on two fresh connections, verdicts at 99 %): unpinned, 15 of 100 called the
two identical arms different; pinned, 0 of 100, and the arms' medians drifted 4.3x less apart.
In CI the workbook itself had called an index the query cannot use "1.34x faster, 99 % CI
1.13x-1.79x" (benchmarks/README.md, "Arms on one CPU").

:func:`same_cpu` moves the arms' server processes onto one CPU for the measurement, and back
afterwards, so every arm meets the same core in the same state. It only touches a process it can
prove is the far end of one of these connections: the connection's TCP socket, seen from this
machine's network namespace (``/proc/net/tcp``), has a server end whose inode is an open file of
that ``postgres:`` process. A server in a container, in another namespace, on another host or
behind a pooler fails that proof and is left alone. When it cannot pin, it says why, and the
measurement goes on as before; the reason is recorded with the run. Parallel workers are started
by the postmaster, not by the pinned process, and run wherever Linux puts them.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


@contextmanager
def same_cpu(conns: Sequence[Any]) -> Iterator[str]:
    """Pin the server processes behind ``conns`` (psycopg connections) to one CPU while inside.

    Yields what was done, for the run's record: ``"server processes on CPU 1"`` or
    ``"not pinned: <reason>"``. The processes' former CPU sets are restored on the way out
    (those whose connection is still open; a closed one's process is gone).
    """
    pids, reason = _backend_pids(conns)
    if reason:
        yield f"not pinned: {reason}"
        return
    before: dict[int, set[int]] = {}
    moved: list[int] = []
    try:
        for pid in pids:
            before[pid] = os.sched_getaffinity(pid)
        cpu = _last_cpu(pids[0])
        if cpu not in before[pids[0]]:
            cpu = min(before[pids[0]])
        for pid in pids:
            os.sched_setaffinity(pid, {cpu})
            moved.append(pid)
    except OSError as exc:  # PermissionError, ProcessLookupError, EINVAL (a CPU outside a cpuset) ...
        _restore({pid: before[pid] for pid in moved})  # a half-done pin is undone
        yield f"not pinned: the server processes could not be moved ({exc.strerror or exc})"
        return
    try:
        yield f"server processes on CPU {cpu}"
    finally:
        _restore(before)


def _restore(cpu_sets: dict[int, set[int]]) -> None:
    for pid, cpus in cpu_sets.items():
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:  # the connection closed and its process exited: nothing to restore
            pass


def _backend_pids(conns: Sequence[Any]) -> tuple[list[int], str]:
    """The local pids of the server processes behind ``conns``, or why they cannot be known."""
    if len(conns) < 2:
        return [], "a single connection has nothing to share a CPU with"
    if not hasattr(os, "sched_setaffinity"):
        return [], "this operating system cannot pin processes to CPUs"
    if len(os.sched_getaffinity(0)) < 2:
        return [], "this process may use only one CPU"
    pids = []
    for conn in conns:
        ends = _socket_ends(conn)
        if ends is None:
            return [], "not a TCP connection, so its server process cannot be identified"
        pid = int(conn.info.backend_pid)
        inode = _server_inode(*ends)
        if inode is None or not _is_postgres(pid) or not _holds_socket(pid, inode):
            return [], "the server's processes are not this machine's (another host, namespace or container, or a pooler)"
        pids.append(pid)
    return pids, ""


def _socket_ends(conn: Any) -> tuple[int, tuple[str, int], tuple[str, int]] | None:
    """(address family, local end, server end) of ``conn``'s socket, or None when it is not TCP."""
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except OSError:
        return None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        local, peer = sock.getsockname(), sock.getpeername()
        return sock.family, (local[0], int(local[1])), (peer[0], int(peer[1]))
    finally:
        sock.close()


def _proc_addr(family: int, host: str, port: int) -> str:
    """An address as /proc/net/tcp{,6} writes it: the address's 32-bit words in host order, then the port."""
    raw = socket.inet_pton(family, host)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def _server_inode(family: int, local: tuple[str, int], peer: tuple[str, int]) -> int | None:
    """The inode of the server's end of this connection: the socket whose local end is our peer and
    whose remote end is us, in this network namespace's table."""
    table = "/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6"
    theirs, ours = _proc_addr(family, *peer), _proc_addr(family, *local)
    try:
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) > 9 and fields[1] == theirs and fields[2] == ours:
                    return int(fields[9]) or None
    except (OSError, StopIteration):
        return None
    return None


def _is_postgres(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"postgres:")
    except OSError:
        return False


def _holds_socket(pid: int, inode: int) -> bool:
    """Whether ``pid`` has the socket ``inode`` open (``/proc/PID/fd``: needs the same user, or root)."""
    want = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                return True
        except OSError:
            continue
    return False


def _last_cpu(pid: int) -> int:
    """The CPU ``pid`` last ran on (field 39 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])
