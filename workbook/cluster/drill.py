"""The failover drill: what a crash of the primary costs, in acknowledged writes and in seconds.

Writers insert rows with ids chosen client-side and record every id whose ``INSERT`` returned
(the commit was acknowledged). Then the primary's postmaster is killed with SIGKILL (``kill -9``,
no shutdown: nothing more is shipped), the replica that received the most WAL is promoted, and the
drill counts the acknowledged ids the new primary does not have: the recovery point in
transactions (RPO). The recovery time (RTO) is from the kill to the first ``INSERT`` the new
primary accepts (a prober tries every few milliseconds). Detection costs nothing here, since the
drill knows when it killed the primary; a real failover manager adds its detection timeout.

On loopback a replica receives WAL within microseconds, so async replication would rarely lose
anything, and the lesson would teach that it never does. WAL already in the replica's socket
buffer survives a frozen receiver, so the drill freezes the *primary's* WAL senders (SIGSTOP)
for the last moments before the kill, as a stalled network would: commits acknowledged in that
window reached no replica. The frozen senders are killed with the primary, never resumed (a
resumed sender would ship the WAL the drill means to lose); if the drill fails before the kill,
they are resumed (SIGCONT). With ``remote_apply`` every commit waits until a replica has applied
it, so in that window the writers block, nothing is acknowledged, and nothing acknowledged is
lost; the commits cut off by the kill are counted as in doubt.

The writes go to a table of their own, ``workbook_drill.writes`` in the workbook database (made
anew by each drill, left afterwards for inspection): the dataset's schema is not touched, so its
checksum and pristine state stay as they were (a ``reset`` drops the drill table with the rest of
the working database).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import ClusterError
from . import _procs
from ._probe import parse_lsn
from ._wait import wait_until

if TYPE_CHECKING:
    from ._local import LocalCluster

SYNC_CHOICES = ("async", "remote_apply")
SCHEMA = "workbook_drill"
TABLE = "writes"
#: writer threads the drill accepts (each holds one connection; max_connections is 100)
WRITERS_RANGE = (1, 64)
#: seconds of writing the drill accepts
DURATION_RANGE = (0.5, 600.0)
#: the longest stretch the WAL senders stay frozen before the kill
BEHIND_S = 0.5
#: how many of the lost ids a result lists
LOST_IDS_SHOWN = 50
#: the prober's id: negative, so it never mixes with the writers' ids (1, 2, ...)
PROBE_ID = -1
#: how long the new primary may take to accept its first write
RTO_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class FailoverDrill:
    """What one drill measured.

    ``acknowledged``: inserts whose commit returned to the client (``acknowledged_while_frozen`` of
    them after the WAL senders were frozen; a few acknowledged just before can be lost too, their
    WAL not sent yet); ``lost``: those the new primary does not have (``lost_ids`` lists up to 50
    of them, lowest first); ``in_doubt``: inserts cut off by the kill (sent, never answered: they
    may or may not exist), ``in_doubt_kept`` of them exist on the new primary. ``rto_s``: seconds from the kill to the first accepted write on the
    new primary. ``behind_bytes``: WAL on the old primary's disk that the promoted replica had not
    received (from ``pg_waldump``; None: unknown). ``how_behind`` says how the replicas were made
    to fall behind.
    """

    sync: str
    writers: int
    duration_s: float
    acknowledged: int
    acknowledged_while_frozen: int
    lost: int
    lost_ids: list[int]
    in_doubt: int
    in_doubt_kept: int
    rto_s: float
    behind_bytes: int | None
    how_behind: str
    old_primary: str
    promoted: str
    clean_shutdown: bool | None
    healed: bool
    replicas_after: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line: what was acknowledged, lost, and how long the failover took."""
        behind = "unknown" if self.behind_bytes is None else f"{self.behind_bytes:,} bytes"
        return (
            f"{self.sync}: {self.acknowledged:,} writes acknowledged, {self.lost:,} lost after the kill -9 of "
            f"{self.old_primary!r} ({self.in_doubt} in doubt: sent, cut off by the kill before an answer, "
            f"{self.in_doubt_kept} of them kept); {self.promoted!r} took writes after "
            f"{self.rto_s:.2f} s; it was {behind} behind"
        )


def check_drill_args(sync: object, writers: object, duration_s: object) -> None:
    """One-line errors for arguments the drill cannot run with (before anything changes)."""
    if sync not in SYNC_CHOICES:
        raise ClusterError(f"unknown synchronous-commit mode {sync!r} for the drill; choose {' or '.join(SYNC_CHOICES)}")
    low, high = WRITERS_RANGE
    if isinstance(writers, bool) or not isinstance(writers, int) or not low <= writers <= high:
        raise ClusterError(f"writers must be a whole number from {low} to {high}, not {writers!r}")
    dlow, dhigh = DURATION_RANGE
    if (isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not math.isfinite(duration_s)
            or not dlow <= duration_s <= dhigh):  # fmt: skip
        raise ClusterError(f"duration must be from {dlow:g} to {dhigh:g} seconds, not {duration_s!r}")


def failover_drill(
    cluster: LocalCluster,
    *,
    sync: str = "async",
    writers: int = 4,
    duration_s: float = 3.0,
    heal: bool = True,
    on_acknowledged: Callable[[int], None] | None = None,
) -> FailoverDrill:
    """Write, freeze the WAL senders, kill -9 the primary, promote, and count what was lost.

    ``sync``: ``async`` or ``remote_apply`` (commits wait until one replica has applied them) while
    the writers run. ``writers`` threads insert for ``duration_s`` seconds; the WAL senders are
    frozen for the last ``min(0.5, duration_s / 3)`` of them. ``heal``: afterwards, build new
    replicas from the new primary until the cluster has as many as before (synchronous commit is
    async again either way). ``on_acknowledged`` is called with each acknowledged id (from the
    writer threads), for a caller who keeps a ledger of its own.

    Needs the local cluster with at least one streaming replica. The old primary and its data are
    gone afterwards (as with :meth:`LocalCluster.promote`); every one of its processes is checked
    to be gone.
    """
    import psycopg

    check_drill_args(sync, writers, duration_s)
    with cluster._locked():
        before = cluster.status()
        primary = before[0]
        if primary.state != "running":
            raise ClusterError(f"the primary {primary.name!r} is {primary.state}; start the cluster with 'workbook up'")
        replicas = [n for n in before if n.role == "replica"]
        with psycopg.connect(cluster.dsn(), autocommit=True, connect_timeout=5) as conn:
            direct = {r[0] for r in conn.execute(
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'").fetchall()}  # fmt: skip
        candidates = [n.name for n in replicas if n.name in direct]
        if not candidates:
            raise ClusterError(
                "the failover drill needs a replica streaming from the primary, and the cluster has none; "
                "start two with 'workbook up --replicas 2'"
            )
        sync_before = cluster.sync_commit()
        _make_table(cluster, candidates)
        run = _Writers(cluster.dsn(), writers, on_acknowledged)
        frozen: list[int] = []
        killed = False
        behind = min(BEHIND_S, duration_s / 3)
        try:
            if sync == "remote_apply":
                cluster.set_sync_commit("remote_apply", standbys=1)
            run.start()
            run.wait_started(timeout=30)
            time.sleep(duration_s - behind)
            old_root = cluster._bare_node(primary.name).root
            old_pids = [p.pid for p in _procs.processes_in(old_root / "data")]  # the writers' backends too
            _freeze_wal_senders(cluster, frozen)
            acked_at_freeze = run.acknowledged_count()
            time.sleep(behind)
            t_kill = _kill_primary(cluster, primary.name, frozen)
            killed = True
            run.stop()
            promoted = _most_advanced(cluster, candidates)
            prober = _FirstWrite(cluster.dsn(promoted))
            prober.start()
            cluster.promote(promoted, timeout=60)
            t_first = prober.result(timeout=RTO_TIMEOUT_S)
            run.join(timeout=30)
        finally:
            run.stop()
            if not killed:  # nothing may stay stopped, and the sync mode goes back (releasing blocked commits)
                for pid in frozen:
                    _procs.send(pid, signal.SIGCONT)
                if cluster.sync_commit() != sync_before:
                    cluster.set_sync_commit(sync_before["mode"], max(1, sync_before.get("standbys") or 1))
                with contextlib.suppress(ClusterError):  # the error that got us here is the one to report
                    run.join(timeout=30)
        failover = cluster.last_failover
        acknowledged = run.acknowledged()  # also those answered after the kill: the client saw COMMIT succeed
        with psycopg.connect(cluster.dsn(promoted), autocommit=True, connect_timeout=5) as conn:
            present = _present(conn, acknowledged)
            kept = _present(conn, run.in_doubt())
        lost_ids = sorted(set(acknowledged) - present)
        left = _left_behind(old_root, old_pids)  # before heal: a new replica may get the old primary's name
        if left:
            raise ClusterError(f"processes {left} of the killed primary {primary.name!r} are still running")
        if heal:
            cluster.up(replicas=len(replicas))
        if cluster.sync_commit()["mode"] != "async":
            cluster.set_sync_commit("async")
        replicas_after = len([n for n in cluster.status() if n.role == "replica"])
    return FailoverDrill(
        sync=sync, writers=writers, duration_s=float(duration_s), acknowledged=len(acknowledged),
        acknowledged_while_frozen=len(acknowledged) - acked_at_freeze, lost=len(lost_ids),
        lost_ids=lost_ids[:LOST_IDS_SHOWN], in_doubt=len(run.in_doubt()), in_doubt_kept=len(kept),
        rto_s=round(t_first - t_kill, 3), behind_bytes=failover.lost_bytes if failover else None,
        how_behind=_how_behind(sync, len(frozen), behind, len(acknowledged) - acked_at_freeze), old_primary=primary.name,
        promoted=promoted,
        clean_shutdown=failover.clean_shutdown if failover else None, healed=heal, replicas_after=replicas_after,
    )  # fmt: skip


def _how_behind(sync: str, senders: int, behind: float, acked_frozen: int) -> str:
    what = (
        "commits acknowledged in that window reached no replica"
        if sync == "async"
        else "commits in that window waited for a replica to apply them: only those whose WAL had reached it "
             f"before the freeze returned ({acked_frozen:,} here), the others were still waiting when the primary died"
    )
    return (
        f"the primary's {senders} WAL sender(s) were frozen (SIGSTOP) for the last {behind:.2f} s before the "
        f"kill -9, as a stalled network would: {what}; the frozen senders died with the primary, never resumed"
    )


def _make_table(cluster: LocalCluster, replicas: list[str]) -> None:
    """The drill table, new; returns once ``replicas`` have received it (replay may be paused)."""
    import psycopg

    schema = sql.Identifier(SCHEMA)
    with psycopg.connect(cluster.dsn(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        conn.execute(sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, writer int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ).format(sql.Identifier(SCHEMA, TABLE)))  # fmt: skip
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    made = parse_lsn(row[0] if row else None) or 0
    for name in replicas:

        def received(name: str = name) -> bool:
            with psycopg.connect(cluster.dsn(name), autocommit=True, connect_timeout=2) as c:
                got = c.execute("SELECT pg_last_wal_receive_lsn()::text").fetchone()
            return (parse_lsn(got[0] if got else None) or 0) >= made

        wait_until(received, timeout=30, what=f"replica {name!r} to receive the drill table")


def _insert() -> sql.Composed:
    return sql.SQL("INSERT INTO {} (id, writer) VALUES (%s, %s)").format(sql.Identifier(SCHEMA, TABLE))


def _present(conn: Any, ids: list[int]) -> set[int]:
    if not ids:
        return set()
    q = sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(sql.Identifier(SCHEMA, TABLE))
    return {r[0] for r in conn.execute(q, (ids,)).fetchall()}


def _freeze_wal_senders(cluster: LocalCluster, frozen: list[int]) -> None:
    """SIGSTOP every WAL sender of the primary, each pid added to ``frozen`` as it stops."""
    import psycopg

    with psycopg.connect(cluster.dsn(), autocommit=True, connect_timeout=5) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_replication").fetchall()]
    for pid in pids:
        if _procs.send(pid, signal.SIGSTOP):
            frozen.append(pid)


def _kill_primary(cluster: LocalCluster, name: str, frozen: list[int]) -> float:
    """SIGKILL the primary's postmaster, then the frozen WAL senders; the time of the kill."""
    pid = cluster._bare_node(name).pid
    if pid is None:
        raise ClusterError(f"the primary {name!r} stopped during the drill; 'workbook up' to start it again")
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    for p in frozen:  # killed while stopped: they never send what they hold
        _procs.send(p, signal.SIGKILL)
    return t_kill


def _left_behind(root: Path, known: list[int]) -> list[int]:
    """Processes of a killed node still alive: those known before the kill, and any whose working
    directory is (or was, before it was deleted) under the node's folder."""
    import psutil

    left = {p for p in known if _procs.alive(p)}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.cwd().startswith(str(root) + os.sep) and proc.status() != psutil.STATUS_ZOMBIE:
                left.add(proc.pid)
    return sorted(left)


def _most_advanced(cluster: LocalCluster, names: list[str]) -> str:
    """The replica that received the most WAL (the one a failover manager would promote)."""
    import psycopg

    best: tuple[int, str] | None = None
    for name in names:
        try:
            with psycopg.connect(cluster.dsn(name), autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT pg_last_wal_receive_lsn()::text").fetchone()
            lsn = parse_lsn(row[0]) if row else None
        except psycopg.OperationalError:
            continue
        if lsn is not None and (best is None or lsn > best[0]):
            best = (lsn, name)
    if best is None:
        raise ClusterError(f"no replica ({', '.join(names)}) could be reached to promote after the kill")
    return best[1]


class _Writers:
    """Threads that insert with client-chosen ids and keep the ledger of acknowledged ones."""

    def __init__(self, dsn: str, n: int, on_ack: Callable[[int], None] | None) -> None:
        self._dsn, self._n, self._on_ack = dsn, n, on_ack
        self._ids = itertools.count(1)
        self._acked: list[int] = []
        self._doubt: list[int] = []
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Semaphore(0)
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True, name=f"drill-writer-{k}")
                         for k in range(n)]  # fmt: skip

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(self._n):
            if not self._ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise ClusterError(f"the drill's writers did not connect within {timeout:.0f}s")
        if self._errors:
            raise ClusterError(f"a drill writer failed: {self._errors[0]}")

    def _run(self, k: int) -> None:
        import psycopg

        insert = _insert()
        try:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5, application_name="workbook-drill")
        except psycopg.Error as exc:
            self._errors.append(" ".join(str(exc).split())[:200])
            self._ready.release()
            return
        self._ready.release()
        try:
            while not self._stop.is_set():
                i = next(self._ids)
                try:
                    conn.execute(insert, (i, k))
                except psycopg.Error:
                    with self._lock:
                        self._doubt.append(i)
                    return
                with self._lock:
                    self._acked.append(i)
                if self._on_ack is not None:
                    self._on_ack(i)
        finally:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.ident is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            raise ClusterError(f"drill writers {stuck} did not end within {timeout:.0f}s of the kill")

    def acknowledged_count(self) -> int:
        with self._lock:
            return len(self._acked)

    def acknowledged(self) -> list[int]:
        with self._lock:
            return list(self._acked)

    def in_doubt(self) -> list[int]:
        with self._lock:
            return list(self._doubt)


class _FirstWrite:
    """Tries to insert on the promotion candidate until it is accepted; the time it was."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._at: float | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="drill-first-write")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import psycopg

        insert = _insert()
        deadline = time.monotonic() + RTO_TIMEOUT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=2,
                                     application_name="workbook-drill-probe") as conn:  # fmt: skip
                    while not self._stop.is_set() and time.monotonic() < deadline:
                        try:
                            conn.execute(insert, (PROBE_ID, -1))
                            self._at = time.monotonic()
                            return
                        except psycopg.errors.ReadOnlySqlTransaction:
                            time.sleep(0.005)
            except psycopg.Error as exc:
                self._error = " ".join(str(exc).split())[:200]
                time.sleep(0.01)

    def result(self, timeout: float) -> float:
        self._thread.join(timeout)
        self._stop.set()
        if self._at is None:
            why = f" (last error: {self._error})" if self._error else ""
            raise ClusterError(f"the promoted replica accepted no write within {timeout:.0f}s{why}")
        return self._at
