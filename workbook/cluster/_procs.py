"""Finding the processes that belong to a data directory.

Every PostgreSQL process (postmaster and all its children) runs with its working directory set
to the data directory. That is how we find a server's processes even after its postmaster was
killed and the children were re-parented, and how we prove that ``down`` left nothing behind.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from . import _ipc
from ._ipc import SHM_PREFIX


def processes_in(datadir: Path) -> list[psutil.Process]:
    """Live processes whose working directory is ``datadir``."""
    want = os.path.realpath(datadir)
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.cwd() == want and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def postmaster_pid(datadir: Path) -> int | None:
    """The pid in ``postmaster.pid`` if that process is alive and serves ``datadir``."""
    try:
        first = (datadir / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first)
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if proc.cwd() != os.path.realpath(datadir):  # a recycled pid
            return None
        return pid
    except (OSError, IndexError, ValueError, psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return None


def send(pid: int, sig: int) -> bool:
    """Send ``sig`` to ``pid``; False when that process is gone already."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_all(datadir: Path, timeout: float = 10.0) -> None:
    """SIGKILL every process serving ``datadir``, wait until they are gone, and release the shared
    memory a postmaster that died without shutting down left behind (:func:`workbook.cluster._ipc.release`:
    its System V header and every ``/dev/shm`` segment it listed, as its next start would)."""
    deadline = time.monotonic() + timeout
    while True:
        procs = processes_in(datadir)
        if not procs:
            _ipc.release(datadir)
            return
        for p in procs:
            send(p.pid, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=max(0.1, deadline - time.monotonic()))
        if time.monotonic() > deadline:
            left = [p.pid for p in processes_in(datadir)]
            if left:
                raise RuntimeError(f"processes {left} of {str(datadir)!r} survived SIGKILL")
            _ipc.release(datadir)
            return


def shm_segments(pids: Iterable[int]) -> set[Path]:
    """The ``/dev/shm/PostgreSQL.<handle>`` files these processes have mapped (``/proc/PID/maps``):
    what a server holds there, to check that it is freed after the server is gone."""
    found: set[Path] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(SHM_PREFIX):
                found.add(Path(fields[5].removesuffix(" (deleted)")))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie counts as exited (and is reaped if it is our child)."""
    try:  # reap it if it is our own child (started by this process)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True
