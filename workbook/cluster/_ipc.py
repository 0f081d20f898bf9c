"""The shared memory a postmaster leaves behind when it dies without shutting down.

A PostgreSQL server holds two kinds of shared memory outside its data directory: a small System V
segment (its header: ``ipcs -m`` shows it, its key and id are line 7 of ``postmaster.pid``) and
dynamic shared memory in ``/dev/shm/PostgreSQL.<handle>`` (parallel query, ...), listed in a
control segment whose handle the header holds. A clean shutdown removes both. After a SIGKILL
(the failover drill, a test, the OOM killer) they stay until the server starts again in the same
data directory, when it removes them itself (``dsm_cleanup_using_control_segment``). When the
workbook drops such a data directory instead (a replica rebuilt, a failed-over primary), nobody
ever would: they stay in RAM until reboot. Before this module, every full test run left about
three files in ``/dev/shm`` and a System V segment per killed server.

:func:`release` does what the server's next start would have done, and nothing it cannot prove:
the postmaster named in ``postmaster.pid`` is gone, the System V segment is the one it created
(creator pid, nobody attached, PostgreSQL's magic number in its header), and each file is a
segment that server listed and owned.
"""

from __future__ import annotations

import contextlib
import ctypes
import struct
from pathlib import Path

#: where PostgreSQL's dynamic shared memory lives (``dynamic_shared_memory_type = posix``, the default)
SHM_PREFIX = "/dev/shm/PostgreSQL."
_PG_SHMEM_MAGIC = 679834894  # PGShmemHeader.magic (src/include/storage/pg_shmem.h)
_DSM_CONTROL_MAGIC = 0x9A503D32  # dsm_control_header.magic (src/backend/storage/ipc/dsm.c)
_SHM_RDONLY = 0o10000
_IPC_RMID = 0


def release(datadir: Path) -> list[str]:
    """Remove the shared memory of ``datadir``'s dead postmaster; returns what was removed.

    Call it once no process of ``datadir`` is left. A data directory shut down cleanly (no
    ``postmaster.pid``), a postmaster still alive, or anything that does not check out: nothing
    is touched.
    """
    try:
        lines = (datadir / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        _key, shmid_text = lines[6].split()
        shmid = int(shmid_text)
        major = int((datadir / "PG_VERSION").read_text().split(".")[0])
    except (OSError, ValueError, IndexError):
        return []
    from ._procs import alive  # here: _procs imports this module

    if alive(pid):
        return []
    if ctypes.sizeof(ctypes.c_void_p) != 8:  # the header's offsets below are those of 64-bit builds
        return []
    seg = _sysv(shmid)
    if seg is None or seg["cpid"] != pid or seg["nattch"] != 0:
        return []
    header = _read_sysv(shmid, 56)
    if header is None:
        return []
    # PGShmemHeader (src/include/storage/pg_shmem.h): magic, creatorPID, totalsize, freeoffset,
    # dsm_control, index, device, inode; the server itself refuses a header of another data directory
    magic, creator = struct.unpack_from("=iI", header, 0)
    control = struct.unpack_from("=I", header, 24)[0]
    device, inode = struct.unpack_from("=QQ", header, 40)
    try:
        st = datadir.stat()
    except OSError:
        return []
    if magic != _PG_SHMEM_MAGIC or creator != pid or (device, inode) != (st.st_dev, st.st_ino):
        return []
    removed = []
    for handle in [*_listed(control, major, seg["uid"]), control]:
        path = Path(f"{SHM_PREFIX}{handle}")
        with contextlib.suppress(OSError):
            if path.stat().st_uid == seg["uid"]:
                path.unlink()
                removed.append(str(path))
    libc = _libc()
    if libc.shmctl(shmid, _IPC_RMID, None) == 0:
        removed.append(f"System V segment {shmid}")
    return removed


def _listed(control: int, major: int, uid: int) -> list[int]:
    """The dynamic segments a control segment lists as in use (its own layout, version by version)."""
    path = Path(f"{SHM_PREFIX}{control}")
    try:
        if path.stat().st_uid != uid:
            return []
        data = path.read_bytes()
    except OSError:
        return []
    if len(data) < 12:
        return []
    magic, nitems, maxitems = struct.unpack_from("=III", data, 0)
    # dsm_control_item: handle, refcnt, [first_page, npages since 14], impl_private_pm_handle, pinned
    size = 40 if major >= 14 else 24
    if magic != _DSM_CONTROL_MAGIC or nitems > maxitems or len(data) < 16 + maxitems * size:
        return []
    out = []
    for i in range(nitems):
        handle, refcnt = struct.unpack_from("=II", data, 16 + i * size)
        if refcnt == 0 or (major >= 14 and handle & 1):  # unused slot; odd: inside the main shared memory
            continue
        out.append(handle)
    return out


def _sysv(shmid: int) -> dict[str, int] | None:
    """A System V segment's creator pid, attach count and owner (``/proc/sysvipc/shm``)."""
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return None
    for row in rows:
        f = row.split()  # key shmid perms size cpid lpid nattch uid gid cuid cgid ...
        if len(f) >= 8 and int(f[1]) == shmid:
            return {"cpid": int(f[4]), "nattch": int(f[6]), "uid": int(f[7])}
    return None


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.shmdt.argtypes = [ctypes.c_void_p]
    libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return libc


def _read_sysv(shmid: int, n: int) -> bytes | None:
    libc = _libc()
    addr = libc.shmat(shmid, None, _SHM_RDONLY)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        return None
    try:
        return ctypes.string_at(addr, n)
    finally:
        libc.shmdt(addr)

