"""Read replicas: with a CPU budget per node, two replicas multiply read throughput; the price is
lag, stale reads unless the app waits for its own write, commit latency for every synchronous
level, and — in async mode — acknowledged writes a failover loses.

Seed problem: one writer and many read replicas (OpenAI runs one primary with ~50), replication
lag, and failover. Every figure is measured on real streaming replicas of the local cluster
(pg_basebackup, their own slots):

* **read scaling**: the ``read`` mix from the same clients routed to the primary alone, then to
  primary + 1 and + 2 replicas (pgbench, interleaved rounds), each node in its own CPU budget
  (:data:`CPUS_PER_NODE` cores, a cgroup quota) so that the nodes behave like separate machines.
  Where the budget cannot be enforced (a normal user without cgroups, Binder) the nodes share the
  CPUs and the lesson says that the scaling could not be shown;
* **lag**: a write burst (messages rows bulk-inserted into a scratch copy of ``messages``, so the
  dataset stays as loaded) while reads run on the replicas; every replica's lag in bytes
  (primary's WAL position − the replica's replay position) and seconds (``replay_lag`` of the
  node it streams from) sampled every 50 ms;
* **stale reads**: write a row on the primary, read it at once from a replica: per 1,000, in async
  mode, with ``synchronous_commit = remote_apply`` on every replica, and with LSN-wait routing (the
  writer reads its commit's LSN, the reader waits until ``pg_last_wal_replay_lsn() >= lsn``); with
  what each costs the writer (commit latency) and the reader (wait);
* **synchronous commit levels**: commit latency p50/p95 of a one-row insert for ``off``,
  ``local``, ``on``, ``remote_write``, ``remote_apply`` (session-level, with every replica a
  synchronous standby), interleaved;
* **failover drill** (:mod:`workbook.cluster.drill`) on a scratch cluster of its own: writers
  count every acknowledged id, the primary is killed (``kill -9``) and a replica promoted; the
  acknowledged ids missing after promotion (RPO) and the time to the first successful write (RTO),
  for async and ``remote_apply``;
* **cascading replica**: a replica streaming from ``replica1`` and its lag beside a direct one.

The lesson puts back what it changes (replica count, synchronous commit, paused replay, the CPU
budget): each step restores what it changed when it fails, and the last step restores the rest.
What the cluster looked like before the first change is kept in the home
(``replicas-lesson.json``) until then, so a notebook abandoned half-way is put back by the next
run. On an external target (``WORKBOOK_DSN`` with ``WORKBOOK_REPLICA_DSNS``) read scaling, lag and
stale reads run on its replicas as they are (writes need ``WORKBOOK_ALLOW_WRITES``); the drill and
the cascade need the local cluster and are marked not run.

Figures: ``read_tps``, ``read_p95_ms`` (``{"0", "1", "2"}`` replicas, with ``read_tps_ci``,
``read_p95_ms_ci``, ``read_speedup_2``, ``read_tps_per_node``, ``read_cpu_throttled_share``,
``read_scaling_note``), ``cpus_per_node``, ``cpu_budget``;
``max_lag_bytes_during_burst`` (and ``max_lag_seconds_during_burst``, ``burst``);
``stale_reads_per_1000`` (``async``, ``remote_apply``, ``lsn_wait``), ``stale_commit_p50_ms``,
``lsn_wait_p50_ms``; ``commit_p50_ms`` and ``commit_p95_ms`` per level; ``failover`` (``async``,
``remote_apply``: ``acknowledged``, ``lost``, ``rto_s`` ...); ``cascade``; ``not_run``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import WorkbookError
from ._lesson import Lesson, Step

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

    from ..cluster import LocalCluster, Target
    from ..lab import Lab
    from ..traffic import LoadRun, PreparedMix

CPUS_PER_NODE = 0.5  # each node's budget: two replicas + the primary fit in 1.5 of 2 cores, pgbench in the rest
REPLICAS = 2
MIX = "read"
CLIENTS = 9  # three per node with two replicas: at two per node (6) a node's half core sat idle between requests
DURATION_S = 2.0
ROUNDS = 2
BURST_ROWS = 100_000  # messages rows in the write burst (fewer when the dataset has fewer)
BURST_AT_S = 1.0
LAG_DURATION_S = 4.0
SAMPLE_S = 0.05
STALE_WRITES = 300
#: the indexes the read mix needs (from datasets/ai_app/indexes.toml), built for the read steps
READ_INDEXES = ("messages_conversation_created", "conversations_user_activity", "usage_events_org_time", "chunks_org")
LEVELS = ("off", "local", "on", "remote_write", "remote_apply")
COMMITS_PER_TURN = 40
LEVEL_ROUNDS = 5
DRILL_SECONDS = 2.0
DRILL_REPLICAS = 1  # the scratch cluster's: one replica to promote (the drill builds it again afterwards)
SCRATCH = "replicas_scratch"
STATE_FILE = "replicas-lesson.json"
APP = "workbook-replicas"
LOCAL_ONLY = "needs the local cluster (it kills, promotes and adds nodes); this target is {kind}"


# ---- the cluster the lesson changes, and putting it back --------------------------------------
def _cluster(lab: Lab) -> LocalCluster | None:
    from ..cluster import LocalCluster

    if lab.target.kind != "local":
        return None
    c = LocalCluster(lab.home)
    return c if c.initialized else None


def _state_path(lab: Lab) -> Path:
    return Path(lab.home) / STATE_FILE


def _record_original(lab: Lab, cluster: LocalCluster) -> dict[str, Any]:
    """What the cluster was before the lesson's first change (kept until put_back)."""
    path = _state_path(lab)
    if path.exists():
        return dict(json.loads(path.read_text()))
    original = {"replicas": [s.name for s in cluster.status() if s.role == "replica"],
                "sync": cluster.sync_commit(), "cpus_per_node": cluster.cpus_per_node}  # fmt: skip
    path.write_text(json.dumps(original) + "\n")
    return original


def _scene(lab: Lab, *, replicas: int = REPLICAS) -> Target:
    """The local cluster with ``replicas`` replicas replaying and each node in its CPU budget (the
    original recorded first); an external target as it is."""
    c = _cluster(lab)
    if c is None:
        return lab.target
    _record_original(lab, c)
    if c.cpus_per_node != CPUS_PER_NODE:
        c.up(cpus_per_node=CPUS_PER_NODE)
    have = [s.name for s in c.status() if s.role == "replica"]
    for _ in range(replicas - len(have)):
        c.add_replica()
    c.resume_replay()
    if c.sync_commit().get("mode") != "async":  # the steps start from async replication
        c.set_sync_commit("async")
    lab.target = c.target()
    return lab.target


def restore(lab: Lab) -> dict[str, Any]:
    """Put the local cluster back as the lesson found it: replay resumed, synchronous commit, the
    replicas it had (added ones removed, missing ones rebuilt), the CPU budget. Idempotent."""
    c = _cluster(lab)
    path = _state_path(lab)
    if c is None or not path.exists():
        return {"restored": False, "why": "nothing to put back"}
    original = json.loads(path.read_text())
    with contextlib.suppress(Exception):
        c.resume_replay()
    c.set_sync_commit("async")
    keep = set(original["replicas"])
    for name in reversed([s.name for s in c.status() if s.role == "replica" and s.name not in keep]):
        c.remove_replica(name)
    for name in original["replicas"]:
        c.add_replica(name)  # heals one that is down; a no-op for a healthy one
    sync = original.get("sync") or {"mode": "async", "standbys": 0}
    c.set_sync_commit(sync["mode"], max(1, int(sync.get("standbys") or 0)))
    if c.cpus_per_node != original.get("cpus_per_node"):
        c.up(cpus_per_node=original.get("cpus_per_node") or 0)
    path.unlink()
    lab.target = c.target()
    return {"restored": True, "replicas": original["replicas"], "sync": c.sync_commit(),
            "cpus_per_node": c.cpus_per_node}  # fmt: skip


@contextlib.contextmanager
def _or_put_back(lab: Lab) -> Iterator[None]:
    """A step's body: when it fails, the cluster is put back before the error goes on."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            restore(lab)
        raise


@contextlib.contextmanager
def _scratch(target: Target) -> Iterator[None]:
    """The scratch schema the steps write to (the dataset stays as loaded), dropped afterwards."""
    target.require_writes("the replicas lesson's writes")
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCRATCH))
    with target.connect() as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCRATCH)))
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                             "note text NOT NULL)").format(sql.Identifier(SCRATCH, "writes")))  # fmt: skip
    try:
        wait_replayed(target)
        yield
    finally:
        with target.connect() as conn:
            conn.execute(drop)


def _lsn(conn: psycopg.Connection[Any], query: str = "SELECT pg_current_wal_insert_lsn()::text") -> str:
    row = conn.execute(query).fetchone()
    return str(row[0]) if row and row[0] is not None else "0/0"


def wait_replayed(target: Target, timeout_s: float = 60.0) -> None:
    """Wait until every replica of ``target`` has replayed the primary's current WAL position."""
    with target.connect(application_name=APP) as conn:
        lsn = _lsn(conn)
    for ep in target.replicas:
        with target.connect(ep.name, application_name=APP) as conn:
            deadline = time.monotonic() + timeout_s
            while not conn.execute("SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, true)", (lsn,)).fetchone()[0]:  # type: ignore[index]
                if time.monotonic() > deadline:
                    raise WorkbookError(f"replica {ep.name!r} did not replay {lsn} within {timeout_s:.0f} s; "
                                        "is its replay paused? (workbook status)")  # fmt: skip
                time.sleep(0.01)


def _ms(xs: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(np.asarray(xs), q)), 3) if xs else None


# ---- 0. setup --------------------------------------------------------------------------------
def setup(lab: Lab) -> dict[str, Any]:
    """The target, its replicas, and whether each node gets its own CPU budget here."""
    from ..cluster import _cpu

    c = _cluster(lab)
    if c is None:
        reps = [e.name for e in lab.target.replicas]
        return {"local": False, "replicas": reps, "cpus_per_node": None, "cpu_budget": "unknown (not the local cluster)",
                "not_shown": None if reps else "the target has no replicas (WORKBOOK_REPLICA_DSNS): read scaling, lag "
                                               "and stale reads need at least one"}  # fmt: skip
    with _or_put_back(lab):
        before = _record_original(lab, c)
        _scene(lab)
        nodes = c.status()
    hows = {n.name: (n.cpu_budget or {}).get("how") for n in nodes}
    plan = _cpu.plan(CPUS_PER_NODE, [n.name for n in nodes])
    shown = all(h in ("cgroup", "affinity") for h in hows.values())
    return {"local": True, "before": before, "replicas": [n.name for n in nodes if n.role == "replica"],
            "cpus_per_node": CPUS_PER_NODE, "cpu_budget": next(iter(hows.values())) if shown else "shared",
            "budgets": hows,
            "not_shown": None if shown else (
                f"each node could not get its own {CPUS_PER_NODE:g} CPU here ({plan.why or 'no cgroup quota'}): the nodes "
                "share this machine's CPUs, so adding replicas cannot raise throughput; read scaling is measured but "
                "does not show what separate machines would (as root, or with a delegated cgroup v1 cpu controller, it does)")}  # fmt: skip


# ---- 1. read scaling -----------------------------------------------------------------------------
@contextlib.contextmanager
def app_indexes(target: Target) -> Iterator[list[str]]:
    """The indexes the read mix's queries need (lesson 01's: :data:`READ_INDEXES`) for the block: the
    missing ones built on the primary (and replayed by the replicas), dropped again afterwards; the
    names built. Without them the mix is sequential scans, and at SF 1 a single request takes seconds.
    A read-only target is used as it is."""
    from ..dataset import load_indexes

    if not target.allow_writes:
        yield []
        return
    specs = [load_indexes()[n] for n in READ_INDEXES]
    built: list[str] = []
    try:
        with target.connect(application_name=APP) as conn:
            for spec in specs:
                if conn.execute("SELECT to_regclass(%s)", (f"{spec.schema}.{spec.name}",)).fetchone()[0] is None:  # type: ignore[index]
                    conn.execute(spec.create())
                    built.append(spec.name)
        wait_replayed(target, timeout_s=300)
        yield built
    finally:
        with target.connect(application_name=APP) as conn:
            for spec in specs:
                if spec.name in built:
                    conn.execute(spec.drop())


def _with_replicas(target: Target, k: int) -> Target:
    return dataclasses.replace(target, replicas=target.replicas[:k])


def _tps_ci(runs: list[LoadRun], bucket_s: float = 0.5, draws: int = 2000) -> tuple[float | None, float | None]:
    """95% bootstrap interval of the mean throughput over ``bucket_s`` intervals of every run."""
    import numpy as np

    rates: list[float] = []
    for run in runs:
        ok = run.ok
        if ok.empty:
            continue
        end = (ok["start"] + ok["latency_ms"] / 1000).to_numpy(dtype=float)
        n = max(1, int(run.elapsed_s // bucket_s))
        counts = np.bincount(np.clip((end // bucket_s).astype(int), 0, None), minlength=n)[:n]
        rates += list(counts / bucket_s)
    if len(rates) < 2:
        return None, None
    arr = np.asarray(rates)
    rng = np.random.default_rng(0)
    means = arr[rng.integers(0, len(arr), (draws, len(arr)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return round(float(lo), 1), round(float(hi), 1)


def prepare_mix(target: Target, mix: str = MIX) -> tuple[PreparedMix, str | None]:
    """The mix's parameter pools as the traffic engine samples them (80% hot tenants); when the
    small tenants cannot be sampled (at SF 1 some have fewer conversations than the sampler's
    offsets reach), hot tenants only, and a note that says so."""
    from ..traffic import prepare
    from ..traffic.mix import get_mix

    try:
        return prepare(target, get_mix(mix), pool_size=16, seed=0), None
    except WorkbookError as exc:
        if "to sample" not in str(exc):
            raise
        note = f"the small tenants could not be sampled ({exc}): the mix reads the large tenants only"
        return prepare(target, get_mix(mix), pool_size=16, hot_share=1.0, seed=0), note


def read_scaling_runs(target: Target, *, clients: int = CLIENTS, duration_s: float = DURATION_S, rounds: int = ROUNDS,
                      mix: str = MIX, replicas: tuple[int, ...] = (0, 1, 2), prepared: PreparedMix | None = None,
                      cluster_home: Path | None = None) -> dict[int, list[LoadRun]]:  # fmt: skip
    """The mix from ``clients`` pgbench clients on the primary alone and on primary + k replicas,
    ``rounds`` times in rotating order (so drift hits every arm). With ``cluster_home`` (the local
    cluster, its nodes in cgroup CPU budgets), each run's ``settings["cpu_throttled_share"]``: per
    node, the share of the quota periods it was runnable in where it used its whole budget."""
    from ..cluster._cpu import throttle_counts
    from ..traffic import run_load

    ks = [k for k in replicas if k <= len(target.replicas)]
    pm = prepared if prepared is not None else prepare_mix(target, mix)[0]
    runs: dict[int, list[LoadRun]] = {k: [] for k in ks}
    for r in range(rounds):
        for k in ks[r % len(ks):] + ks[: r % len(ks)]:
            scoped = _with_replicas(target, k)
            names = [scoped.primary.name, *(e.name for e in scoped.replicas)] if cluster_home else []
            before = {n: throttle_counts(cluster_home, n) for n in names if cluster_home}
            run = run_load(scoped, mix, clients=clients, duration_s=duration_s, route="primary" if k == 0 else "all",
                           prepared=pm)  # fmt: skip
            after = {n: throttle_counts(cluster_home, n) for n in names if cluster_home}
            share = {n: round((a[1] - b[1]) / (a[0] - b[0]), 3)
                     for n, b in before.items() if b and (a := after[n]) and a[0] > b[0]}  # fmt: skip
            if share:
                run.settings["cpu_throttled_share"] = share
            runs[k].append(run)
    return runs


def summarise_runs(runs: list[LoadRun]) -> dict[str, Any]:
    """TPS (all rounds' transactions over all rounds' time) and p95 of the pooled latencies, each
    with its 95% CI; per node the same TPS, p95, and (with CPU budgets) the mean throttled share."""
    import numpy as np

    from ..traffic.result import percentile, percentile_ci

    lat = np.sort(np.concatenate([r.ok["latency_ms"].to_numpy(dtype=float) for r in runs]))
    elapsed = sum(r.elapsed_s for r in runs)
    lo, hi = percentile_ci(lat, 95)
    tps_lo, tps_hi = _tps_ci(runs)
    by_node: dict[str, dict[str, Any]] = {}
    for node in sorted({str(n) for r in runs for n in r.ok["node"].unique()}):
        node_lat = np.sort(np.concatenate([r.ok.loc[r.ok["node"] == node, "latency_ms"].to_numpy(dtype=float) for r in runs]))
        shares = [r.settings["cpu_throttled_share"][node] for r in runs
                  if node in r.settings.get("cpu_throttled_share", {})]  # fmt: skip
        by_node[node] = {"tps": round(len(node_lat) / elapsed, 1) if elapsed else None,
                         "p95_ms": round(percentile(node_lat, 95), 3) if len(node_lat) else None,
                         "cpu_throttled_share": round(sum(shares) / len(shares), 2) if shares else None}  # fmt: skip
    return {"tps": round(len(lat) / elapsed, 1) if elapsed else None, "tps_ci": [tps_lo, tps_hi],
            "p95_ms": round(percentile(lat, 95), 3) if len(lat) else None,
            "p95_ms_ci": [None if math.isnan(lo) else round(lo, 3), None if math.isnan(hi) else round(hi, 3)],
            "rounds_tps": [round(r.tps, 1) for r in runs], "errors": sum(sum(r.errors().values()) for r in runs),
            "by_node": by_node}  # fmt: skip


def scaling_note(arms: dict[str, dict[str, Any]], clients: int) -> str | None:
    """What the per-node figures say about the speed-up with the most replicas: beyond the nodes
    added (each node also serves fewer clients) or below them (something else was the limit)."""
    if "0" not in arms or len(arms) < 2:
        return None
    k = max(arms, key=int)
    nodes = int(k) + 1
    base, most = arms["0"].get("tps"), arms[k].get("tps")
    if not base or not most:
        return None
    speedup = most / base
    per_node = most / nodes
    shares = [v.get("cpu_throttled_share") for arm in (arms["0"], arms[k]) for v in arm["by_node"].values()]
    if any(s is None for s in shares):
        return None  # without a budget every node competes for the same CPUs: the setup step says so
    if min(shares) < 0.5:
        return (f"{speedup:.2f}x with {nodes} nodes, but the nodes used their whole CPU budget in only "
                f"{min(shares):.0%}-{max(shares):.0%} of its periods: the machine's CPUs, shared by every node, the "
                "load generator and other work, were the limit, not the budgets, so neither this figure nor which "
                f"side of {nodes}x it falls on is what {nodes} separate machines would show; "
                "run it again on a quieter machine")  # fmt: skip
    at = " (every node used its whole CPU budget in most quota periods in both arms)"
    if speedup > nodes * 1.05:
        return (f"{speedup:.2f}x with {nodes} nodes is more than the {nodes}x CPU added: one node served "
                f"{base:,.0f} TPS with {clients} clients and {per_node:,.0f} TPS per node with "
                f"{clients / nodes:g}{at}: a node's CPU budget does more work when fewer backends share it "
                "(measured on one node: benchmarks/README.md, 'Read scaling beyond the nodes added')")  # fmt: skip
    if speedup < nodes * 0.7:
        return (f"{speedup:.2f}x with {nodes} nodes is well below the {nodes}x CPU added: per node "
                f"{per_node:,.0f} TPS against {base:,.0f} alone; something outside the nodes' budgets (the "
                "load generator, the machine's other work) was the limit")  # fmt: skip
    return None


def read_scaling(lab: Lab) -> dict[str, Any]:
    """The read mix at fixed clients: primary alone, primary + 1, primary + 2 replicas."""
    with _or_put_back(lab):
        target = _scene(lab)
        if not target.replicas:
            return {"not_run": "the target has no replicas", "arms": {}}
        with app_indexes(target) as built:
            pm, note = prepare_mix(target)
            c = _cluster(lab)
            runs = read_scaling_runs(target, prepared=pm, cluster_home=Path(c.home) if c is not None else None)
        for rs in runs.values():
            for r in rs:
                r.save(lab.store)
    arms = {str(k): summarise_runs(rs) for k, rs in runs.items()}
    return {"mix": MIX, "clients": CLIENTS, "duration_s": DURATION_S, "rounds": ROUNDS, "note": note, "indexes_built": built,
            "arms": arms, "scaling_note": scaling_note(arms, CLIENTS), "runs": runs}  # fmt: skip


# ---- 2. lag during a write burst ---------------------------------------------------------------
class LagSampler:
    """Every ``interval_s``, each replica's lag: bytes (the primary's WAL position minus the
    replica's replay position, read on the replica: works for a cascaded replica and by DSN) and
    seconds (``replay_lag`` as the node it streams from reports it). ``frame()``: t, replica,
    lag_bytes, lag_seconds."""

    def __init__(self, target: Target, *, interval_s: float = SAMPLE_S) -> None:
        self.target, self.interval_s = target, interval_s
        self.rows: list[tuple[float, str, float, float | None]] = []
        self.error: str | None = None  # why sampling stopped early (a node went away, no privilege ...)
        self.t0 = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="workbook-lag-sampler", daemon=True)

    def __enter__(self) -> LagSampler:
        self.t0 = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        conns: dict[str, Any] = {}
        try:
            for ep in self.target.endpoints:
                conns[ep.name] = self.target.connect(ep.name, application_name=APP + "-lag", connect_timeout=3)
            while not self._stop.is_set():
                tick = time.time()
                self._sample(conns, tick - self.t0)
                self._stop.wait(max(0.0, self.interval_s - (time.time() - tick)))
        except Exception as exc:  # noqa: BLE001 - the step reports it beside what was sampled
            self.error = " ".join(str(exc).split())[:200]
        finally:
            for conn in conns.values():
                conn.close()

    def _sample(self, conns: dict[str, Any], t: float) -> None:
        seconds: dict[str, float] = {}
        for conn in conns.values():  # each node reports the replicas streaming from it
            for name, lag in conn.execute("SELECT application_name, extract(epoch FROM replay_lag)::float8"
                                          " FROM pg_stat_replication").fetchall():  # fmt: skip
                if lag is not None:
                    seconds[str(name)] = float(lag)
        primary = _lsn(conns[self.target.primary.name], "SELECT pg_current_wal_lsn()::text")
        for ep in self.target.replicas:
            row = conns[ep.name].execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())::float8",
                                         (primary,)).fetchone()  # fmt: skip
            behind = max(0.0, float(row[0] or 0)) if row else 0.0
            # a replica that has replayed all the primary's WAL is 0 s behind: replay_lag keeps showing the
            # last lag it measured while no new WAL comes (PostgreSQL docs, pg_stat_replication)
            self.rows.append((t, ep.name, behind, 0.0 if behind == 0 else seconds.get(ep.name)))

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["t", "replica", "lag_bytes", "lag_seconds"])


def _burst_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE ai_app.messages INCLUDING DEFAULTS INCLUDING INDEXES)").format(
        sql.Identifier(SCRATCH, "messages")))  # fmt: skip


def _burst(target: Target, rows: int, times: dict[str, float]) -> None:
    """Bulk-insert ``rows`` of the dataset's messages into the scratch copy, in one statement."""
    with target.connect(application_name=APP + "-burst") as conn:
        times["start"] = time.time()
        cur = conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM ai_app.messages ORDER BY id LIMIT %s").format(
            sql.Identifier(SCRATCH, "messages")), (rows,))  # fmt: skip
        times["rows"] = float(cur.rowcount)
        times["end"] = time.time()


def lag_under_burst(target: Target, *, rows: int = BURST_ROWS, duration_s: float = LAG_DURATION_S,
                    burst_at_s: float = BURST_AT_S, reads: bool = True) -> dict[str, Any]:  # fmt: skip
    """Reads on the replicas (the ``read`` mix, 4 clients) while ``rows`` messages are bulk-inserted
    on the primary ``burst_at_s`` into the run; every replica's lag sampled every 50 ms."""
    from ..traffic import run_load

    with _scratch(target):
        with target.connect() as conn:
            _burst_table(conn)
        wait_replayed(target)
        times: dict[str, float] = {}
        with LagSampler(target) as sampler:
            if reads:
                run: LoadRun | None = run_load(target, MIX, clients=4, duration_s=duration_s, route="replicas",
                                               prepared=prepare_mix(target)[0],
                                               actions=[(burst_at_s, "write burst", lambda: _burst(target, rows, times))])  # fmt: skip
            else:
                run = None
                time.sleep(burst_at_s)
                _burst(target, rows, times)
            if "end" not in times:
                failed = [label for _, label in (run.events if run is not None else []) if "failed" in label]
                raise WorkbookError(f"the write burst did not finish: {failed[0] if failed else 'unknown error'}")
            # until every replica has replayed the burst (the lag back at 0), at most 30 s more
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and sampler.error is None:
                time.sleep(SAMPLE_S * 2)
                if sampler.rows and all(r[2] == 0 for r in sampler.rows[-len(target.replicas):]) and "end" in times:
                    break
        frame = sampler.frame()
    start = times.get("start", sampler.t0) - sampler.t0
    end = times.get("end", sampler.t0) - sampler.t0
    during = frame[(frame["t"] >= start) & (frame["t"] <= end + 30)]
    per = {}
    for name, g in during.groupby("replica", sort=True):
        secs = g["lag_seconds"].dropna()
        per[str(name)] = {"max_lag_bytes": int(g["lag_bytes"].max()),
                          "max_lag_seconds": round(float(secs.max()), 4) if len(secs) else None}  # fmt: skip
    return {"rows": int(times.get("rows", 0)), "burst_start_s": round(start, 3), "burst_end_s": round(end, 3),
            "burst_seconds": round(end - start, 3), "per_replica": per, "frame": frame, "reads": run,
            "sampler_error": sampler.error}  # fmt: skip


def lag(lab: Lab) -> dict[str, Any]:
    """A bulk insert of messages on the primary while reads run on the replicas: lag over time."""
    with _or_put_back(lab):
        target = _scene(lab)
        if not target.replicas:
            return {"not_run": "the target has no replicas"}
        if not target.allow_writes:
            return {"not_run": "the target is read-only (WORKBOOK_ALLOW_WRITES=1 for a scratch database)"}
        with app_indexes(target):
            out = lag_under_burst(target)
        if out["reads"] is not None:
            out["reads"].save(lab.store)
    return out


# ---- 3. stale reads -------------------------------------------------------------------------------
def stale_reads(target: Target, mode: str, *, writes: int = STALE_WRITES, wait_timeout_s: float = 5.0) -> dict[str, Any]:
    """``writes`` times: insert a row on the primary (autocommit), then read it at once from a
    replica (round robin). ``mode``: ``async`` (as the server is set), ``remote_apply`` (the
    writer's session waits until the synchronous standbys applied its commit) or ``lsn_wait``
    (the writer reads its commit's LSN; the reader waits until the replica replayed it). Counts
    the reads that did not see the row; the writer's commit latency and the reader's wait."""
    if mode not in ("async", "remote_apply", "lsn_wait"):
        raise WorkbookError(f"mode must be async, remote_apply or lsn_wait, got {mode!r}")
    if not target.replicas:
        raise WorkbookError("stale reads need a replica; add one (workbook up --replicas 1)")
    insert = sql.SQL("INSERT INTO {} (note) VALUES (%s) RETURNING id").format(sql.Identifier(SCRATCH, "writes"))
    read = sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(sql.Identifier(SCRATCH, "writes"))
    commit_ms: list[float] = []
    wait_ms: list[float] = []
    stale = timeouts = 0
    w = target.connect(application_name=APP + "-writer")
    readers = [target.connect(e.name, application_name=APP + "-reader") for e in target.replicas]
    try:
        if mode == "remote_apply":
            w.execute("SET synchronous_commit = remote_apply")
        for i in range(writes):
            t = time.perf_counter()
            (rid,) = w.execute(insert, (f"{mode} {i}",)).fetchone()  # type: ignore[misc]
            lsn = _lsn(w) if mode == "lsn_wait" else None
            commit_ms.append((time.perf_counter() - t) * 1000)
            r = readers[i % len(readers)]
            if lsn is not None:
                t = time.perf_counter()
                while not r.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:  # type: ignore[index]
                    if time.perf_counter() - t > wait_timeout_s:
                        timeouts += 1
                        break
                wait_ms.append((time.perf_counter() - t) * 1000)
            if r.execute(read, (rid,)).fetchone() is None:
                stale += 1
    finally:
        for conn in (w, *readers):
            conn.close()
    return {"mode": mode, "writes": writes, "stale": stale, "per_1000": round(stale * 1000 / writes, 1),
            "commit_p50_ms": _ms(commit_ms, 50), "commit_p95_ms": _ms(commit_ms, 95),
            "wait_p50_ms": _ms(wait_ms, 50), "wait_p95_ms": _ms(wait_ms, 95), "wait_timeouts": timeouts}  # fmt: skip


@contextlib.contextmanager
def _synchronous(lab: Lab, target: Target, mode: str) -> Iterator[str | None]:
    """Every replica a synchronous standby (``mode`` the server's default) for the block, then the
    setting before it; on an external target, whether it has synchronous standbys (None: it has)."""
    c = _cluster(lab)
    if c is None:
        with target.connect() as conn:
            names = conn.execute("SELECT current_setting('synchronous_standby_names')").fetchone()[0]  # type: ignore[index]
        yield None if names else "the target has no synchronous standbys (synchronous_standby_names is empty)"
        return
    before = c.sync_commit()
    c.set_sync_commit(mode, len(target.replicas))
    try:
        yield None
    finally:
        c.set_sync_commit(before["mode"], max(1, int(before.get("standbys") or 0)))


def stale(lab: Lab) -> dict[str, Any]:
    """Write, then read the same row at once from a replica: async, remote_apply, LSN-wait."""
    with _or_put_back(lab):
        target = _scene(lab)
        if not target.replicas or not target.allow_writes:
            return {"not_run": "needs replicas and writes (a scratch database with WORKBOOK_ALLOW_WRITES=1)"}
        with _scratch(target):
            out: dict[str, Any] = {"async": stale_reads(target, "async"), "lsn_wait": stale_reads(target, "lsn_wait")}
            with _synchronous(lab, target, "remote_apply") as missing:
                out["remote_apply"] = {"not_run": missing} if missing else stale_reads(target, "remote_apply")
    return out


def paused_stale_reads(lab: Lab, *, writes: int = 200) -> dict[str, Any]:
    """The exercise: the first replica's replay paused, ``writes`` async writes each read at once
    from it; replay resumed afterwards, and the cluster put back as the lesson found it."""
    with _or_put_back(lab):
        target = _scene(lab, replicas=1)
        if not target.replicas or not target.allow_writes:
            raise WorkbookError("this needs a replica and writes (a scratch database with WORKBOOK_ALLOW_WRITES=1)")
        one = dataclasses.replace(target, replicas=target.replicas[:1])
        with _scratch(one):
            with one.connect(one.replicas[0].name) as conn:
                conn.execute("SELECT pg_wal_replay_pause()")
            try:
                out = stale_reads(one, "async", writes=writes)
            finally:
                with one.connect(one.replicas[0].name) as conn:
                    conn.execute("SELECT pg_wal_replay_resume()")
            wait_replayed(one)
    restore(lab)
    return {**out, "replica": one.replicas[0].name, "paused": True}


# ---- 4. synchronous commit levels -------------------------------------------------------------------
def commit_latencies(target: Target, *, levels: tuple[str, ...] = LEVELS, per_turn: int = COMMITS_PER_TURN,
                     rounds: int = LEVEL_ROUNDS) -> dict[str, list[float]]:  # fmt: skip
    """Commit latency (ms) of a one-row autocommit insert at each ``synchronous_commit`` level, set
    per session, ``per_turn`` commits per level per round, levels in rotating order."""
    insert = sql.SQL("INSERT INTO {} (note) VALUES (%s)").format(sql.Identifier(SCRATCH, "writes"))
    out: dict[str, list[float]] = {lv: [] for lv in levels}
    with target.connect(application_name=APP + "-commit") as conn:
        for r in range(rounds):
            for lv in levels[r % len(levels):] + levels[: r % len(levels)]:
                conn.execute(sql.SQL("SET synchronous_commit = {}").format(sql.Literal(lv)))
                for _ in range(per_turn):
                    t = time.perf_counter()
                    conn.execute(insert, (lv,))
                    out[lv].append((time.perf_counter() - t) * 1000)
        conn.execute("RESET synchronous_commit")
    return out


def sync_levels(lab: Lab) -> dict[str, Any]:
    """Commit latency for synchronous_commit off, local, on, remote_write, remote_apply."""
    with _or_put_back(lab):
        target = _scene(lab)
        if not target.allow_writes:
            return {"not_run": "the target is read-only (WORKBOOK_ALLOW_WRITES=1 for a scratch database)"}
        with _scratch(target), _synchronous(lab, target, "on") as missing:
            lat = commit_latencies(target)
    return {"standbys": len(target.replicas), "note": missing,
            "levels": {lv: {"p50_ms": _ms(xs, 50), "p95_ms": _ms(xs, 95), "commits": len(xs)} for lv, xs in lat.items()}}  # fmt: skip


# ---- 5. failover drill -------------------------------------------------------------------------------
@contextlib.contextmanager
def scratch_cluster(lab_cluster: LocalCluster, *, replicas: int = 1) -> Iterator[LocalCluster]:
    """A throw-away cluster beside the lab's (same binaries, a free port), destroyed afterwards: the
    drill kills its primary, which the lab's cluster should not go through."""
    from ..cluster import LocalCluster
    from ..cluster._local import DEFAULT_PORT
    from ..cluster._node import free_port

    parent = Path(tempfile.mkdtemp(prefix="wb-drill-", dir="/var/tmp" if os.geteuid() == 0 else None))
    parent.chmod(0o755)  # as root the server's own user must reach it
    taken = {s.port for s in lab_cluster.status()}
    home, pg_bin = parent / "home", lab_cluster.bins.bindir
    c = LocalCluster(home, pg_bin=pg_bin, port=free_port(DEFAULT_PORT + 200, taken))
    try:
        c.up(replicas=replicas)
        # attached afresh without a port: after a failover the primary listens elsewhere, and a port
        # given explicitly would make up() (the drill's heal) refuse the cluster
        yield LocalCluster(home, pg_bin=pg_bin)
    finally:
        c.destroy()
        shutil.rmtree(parent, ignore_errors=True)


def _not_run_drill(why: str) -> dict[str, Any]:
    return {mode: {"acknowledged": None, "lost": None, "rto_s": None, "not_run": why} for mode in ("async", "remote_apply")}


def failover(lab: Lab) -> dict[str, Any]:
    """Kill -9 the primary under acknowledged writers, promote a replica: writes lost, time to write again."""
    c = _cluster(lab)
    if c is None:
        return _not_run_drill(LOCAL_ONLY.format(kind=lab.target.kind))
    from ..cluster.drill import failover_drill

    out: dict[str, Any] = {}
    with _or_put_back(lab), scratch_cluster(c, replicas=DRILL_REPLICAS) as scratch:
        for mode in ("async", "remote_apply"):
            out[mode] = failover_drill(scratch, sync=mode, duration_s=DRILL_SECONDS, heal=True).as_dict()
    return out


# ---- 6. cascading replica ------------------------------------------------------------------------
def cascade(lab: Lab) -> dict[str, Any]:
    """A replica streaming from replica1, its lag beside a direct replica's under the same burst."""
    c = _cluster(lab)
    if c is None:
        return {"not_run": LOCAL_ONLY.format(kind=lab.target.kind)}
    with _or_put_back(lab):
        target = _scene(lab)
        upstream = target.replicas[0].name
        added = c.add_replica(upstream=upstream)
        try:
            t = c.target()
            out = lag_under_burst(t, reads=False, rows=BURST_ROWS // 2)
        finally:
            c.remove_replica(added.name)
            lab.target = c.target()
    direct = target.replicas[-1].name
    return {"upstream": upstream, "cascaded": added.name, "direct": direct, **out}


# ---- 7. put back --------------------------------------------------------------------------------
def put_back(lab: Lab) -> dict[str, Any]:
    """The replicas, synchronous commit and CPU budget the cluster had before the lesson."""
    return restore(lab)


# ---- figures and charts --------------------------------------------------------------------------
def _arm(arms: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: (arms[k][key] if k in arms else None) for k in ("0", "1", "2")}


def figures(outputs: dict[str, Any]) -> dict[str, Any]:
    s = outputs["setup"]
    rs = outputs["read_scaling"]
    arms = rs.get("arms", {})
    lg = outputs["lag"]
    st = outputs["stale"]
    sl = outputs["sync_levels"]
    fo = outputs["failover"]
    cs = outputs["cascade"]
    tps = _arm(arms, "tps")
    not_run = {k: v["not_run"] for k, v in (("read_scaling", rs), ("lag", lg), ("stale", st), ("sync_levels", sl),
                                            ("cascade", cs)) if v.get("not_run")}  # fmt: skip
    not_run.update({f"failover_{m}": v["not_run"] for m, v in fo.items() if isinstance(v, dict) and v.get("not_run")})
    if s.get("not_shown"):
        not_run["cpu_budget"] = s["not_shown"]

    def stale_of(mode: str) -> float | None:
        v = st.get(mode) or {}
        return v.get("per_1000")

    per = lg.get("per_replica", {})
    cascade_fig = {"not_run": cs["not_run"]} if cs.get("not_run") else {
        "upstream": cs["upstream"], "cascaded": cs["cascaded"], "direct": cs["direct"],
        "max_lag_bytes": {n: v["max_lag_bytes"] for n, v in cs["per_replica"].items()},
        "max_lag_seconds": {n: v["max_lag_seconds"] for n, v in cs["per_replica"].items()}}  # fmt: skip
    levels = sl.get("levels", {})
    return {
        "mix": MIX, "clients": CLIENTS,
        "read_tps": tps, "read_p95_ms": _arm(arms, "p95_ms"),
        "read_tps_ci": _arm(arms, "tps_ci"), "read_p95_ms_ci": _arm(arms, "p95_ms_ci"),
        "read_mix_note": rs.get("note"),
        "read_speedup_2": round(tps["2"] / tps["0"], 2) if tps["2"] and tps["0"] else None,
        "read_tps_per_node": {k: (round(v / (int(k) + 1), 1) if v else None) for k, v in tps.items()},
        "read_cpu_throttled_share": {k: ({n: v["cpu_throttled_share"] for n, v in arms[k]["by_node"].items()}
                                         if k in arms else None) for k in ("0", "1", "2")},
        "read_scaling_note": rs.get("scaling_note"),
        "cpus_per_node": s.get("cpus_per_node"), "cpu_budget": s.get("cpu_budget"),
        "max_lag_bytes_during_burst": max((v["max_lag_bytes"] for v in per.values()), default=None),
        "max_lag_seconds_during_burst": max((v["max_lag_seconds"] for v in per.values() if v["max_lag_seconds"] is not None),
                                            default=None),
        "burst": None if lg.get("not_run") else {"rows": lg["rows"], "seconds": lg["burst_seconds"]},
        "stale_reads_per_1000": {m: stale_of(m) for m in ("async", "remote_apply", "lsn_wait")},
        "stale_commit_p50_ms": {m: (st.get(m) or {}).get("commit_p50_ms") for m in ("async", "remote_apply", "lsn_wait")},
        "lsn_wait_p50_ms": (st.get("lsn_wait") or {}).get("wait_p50_ms"),
        "commit_p50_ms": {lv: (levels.get(lv) or {}).get("p50_ms") for lv in LEVELS},
        "commit_p95_ms": {lv: (levels.get(lv) or {}).get("p95_ms") for lv in LEVELS},
        "failover": {m: {k: v for k, v in (fo.get(m) or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}
                     for m in ("async", "remote_apply")},
        "cascade": cascade_fig,
        "not_run": not_run,
    }  # fmt: skip


def charts(outputs: dict[str, Any]) -> dict[str, Any]:
    from ..ui.replica_panel import lag_chart, scaling_chart

    out: dict[str, Any] = {}
    arms = outputs["read_scaling"].get("arms", {})
    if arms:
        rows = [{"label": f"primary + {k} replica{'s' if k != '1' else ''}", **v} for k, v in arms.items()]
        out["Read throughput and p95 by replica count"] = scaling_chart(rows)
    lg = outputs["lag"]
    if not lg.get("not_run"):
        out["Replica lag during a write burst"] = lag_chart(lg["frame"], (lg["burst_start_s"], lg["burst_end_s"]))
    cs = outputs["cascade"]
    if not cs.get("not_run"):
        out["Cascaded vs direct replica lag"] = lag_chart(cs["frame"], (cs["burst_start_s"], cs["burst_end_s"]))
    return out


LESSON = Lesson(
    name="replicas",
    title="Read replicas: read scaling, lag, stale reads, synchronous commit and failover",
    claim="Measured on real streaming replicas, each node in its own CPU budget where this machine allows it: read TPS and p95 on the primary "
          "alone against + 1 and + 2 replicas; how far a bulk insert of messages puts the replicas behind, in bytes "
          "and seconds; how many reads right after a write miss it with async replication, with remote_apply and "
          "with LSN-wait, and what each costs in commit latency; and how many acknowledged writes a kill -9 "
          "failover loses in async mode (remote_apply: none).",
    notebook="05_replicas_and_read_scaling",
    steps=(
        Step("setup", "Replicas and CPU budgets",
             "Two replicas, each node in its own CPU budget (a cgroup quota) where this machine allows it.", setup),
        Step("read_scaling", "Read scaling: primary, + 1, + 2 replicas",
             "The same clients of the read mix on more nodes: TPS and p95 with their intervals.", read_scaling),
        Step("lag", "Lag during a write burst",
             "A bulk insert of messages on the primary while reads run on the replicas.", lag),
        Step("stale", "Stale reads: async, remote_apply, LSN-wait",
             "Write, then read the same row at once from a replica: how often it is not there yet.", stale),
        Step("sync_levels", "What each synchronous-commit level costs",
             "Commit latency of a one-row insert for off, local, on, remote_write, remote_apply.", sync_levels),
        Step("failover", "Failover drill: kill -9 the primary",
             "Acknowledged writes missing after promotion (RPO) and the time to write again (RTO).", failover),
        Step("cascade", "A cascading replica",
             "A replica streaming from a replica, its lag beside a direct one.", cascade),
        Step("put_back", "Put things back", "Replica count, synchronous commit and CPU budget as before.", put_back),
    ),
    figures=figures,
    charts=charts,
    references=(
        ("High availability, load balancing, and replication", "https://www.postgresql.org/docs/current/high-availability.html"),
        ("Streaming replication and cascading replication", "https://www.postgresql.org/docs/current/warm-standby.html"),
        ("Write-ahead log settings (synchronous_commit)", "https://www.postgresql.org/docs/current/runtime-config-wal.html"),
        ("Replication settings (synchronous_standby_names)", "https://www.postgresql.org/docs/current/runtime-config-replication.html"),
        ("Monitoring: pg_stat_replication", "https://www.postgresql.org/docs/current/monitoring-stats.html#MONITORING-PG-STAT-REPLICATION-VIEW"),
        ("Recovery control functions (pg_last_wal_replay_lsn, pg_wal_replay_pause)", "https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-RECOVERY-CONTROL"),
        ("Failover", "https://www.postgresql.org/docs/current/warm-standby-failover.html"),
    ),
)  # fmt: skip
