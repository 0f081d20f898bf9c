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
prove is the far end of one of these connections: a ``postgres:`` process on this machine whose
process title names this connection's client port (a server in a container, on another host or
behind a pooler has pids that mean nothing here, and is left alone). When it cannot pin, it says
why, and the measurement goes on as before; the reason is recorded with the run.
"""

from __future__ import annotations

import os
import socket
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
    try:
        before = {pid: os.sched_getaffinity(pid) for pid in pids}
        cpu = _last_cpu(pids[0])
        if cpu not in before[pids[0]]:
            cpu = min(before[pids[0]])
        for pid in pids:
            os.sched_setaffinity(pid, {cpu})
    except (PermissionError, ProcessLookupError, OSError) as exc:
        yield f"not pinned: the server processes could not be moved ({exc.strerror or exc})"
        return
    try:
        yield f"server processes on CPU {cpu}"
    finally:
        for pid, cpus in before.items():
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
        port = _client_port(conn)
        if port is None:
            return [], "not a TCP connection, so its server process cannot be identified"
        pid = int(conn.info.backend_pid)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return [], "the server's processes are not on this machine"
        if not title.startswith("postgres:") or f"({port})" not in title:
            return [], "the server's processes are not on this machine (or behind a pooler)"
        pids.append(pid)
    return pids, ""


def _client_port(conn: Any) -> int | None:
    """The local port of ``conn``'s socket (what the server's process title shows), or None."""
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except OSError:
        return None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def _last_cpu(pid: int) -> int:
    """The CPU ``pid`` last ran on (field 39 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])
