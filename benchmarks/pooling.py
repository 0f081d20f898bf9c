"""200 clients through PgBouncer (transaction pooling, pool 50) vs 50 clients straight to the server.

On a fresh local cluster with the dataset loaded, the same mix through the pgbench driver
(``-M extended``: PgBouncer 1.18 carries no prepared statements), three arms per round in an order
that rotates round by round (so drift hits every arm): ``direct`` (50 clients to the server),
``pooler`` (200 clients through PgBouncer) and ``hop`` (50 clients through PgBouncer). Printed:
the TPS ratio pooler/direct (goal >= 0.75x) and the pooler's p95 overhead, split in two: the hop
itself (hop - direct, the same 50 clients) and the queue (pooler - hop: 200 clients take turns on
50 server connections, so each waits its turn whatever the pooler costs).

Two views of every run: the whole run (as ``LoadRun`` measures it) and its steady window, from
half a second after the first transaction started to half a second before the last one ended.
The window leaves out the pool's refill: after each run the traffic runner's session sweep
terminates the server sessions still tagged with the run's application_name, and through a
pooler those are PgBouncer's idle server connections, so every run through it starts by opening
them again (direct runs connect before pgbench's clock starts).

Where the CPU goes: in the steady window the CPU seconds of the server's processes (postmaster, backends, reaped backends
included), of PgBouncer and of pgbench, per transaction (µs/tx), and the machine's busy time per
transaction (other jobs on the machine included). On a machine whose cores the three share, the
TPS ratio can be no better than the ratio of the CPU each transaction costs.

``--pin`` gives the server the last core and PgBouncer and pgbench the others (affinity, inherited
by backends forked later): the server is the bottleneck in every arm, as when the pooler and the
clients run on other machines. ``--pooler-nice -10`` runs PgBouncer ahead of the other runnable
threads (its one thread is otherwise one of ~55 runnable threads sharing the cores, and while it
waits for its turn every client waits). ``--server-tcp`` has PgBouncer reach the server over
loopback TCP (before: its unix socket, the managed pooler's setting).

    python benchmarks/pooling.py [--scale 0.05] [--mix point] [--duration 6] [--rounds 4] [--pin] [--pooler-nice N] [--server-tcp]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from _scratch import scratch_cluster

from workbook.cluster import LocalCluster, _pooler
from workbook.dataset import load
from workbook.traffic import LoadRun, prepare, run_load

PARTS = ("postgres", "pgbouncer", "pgbench")
NAN = float("nan")
SKIP_S, TAIL_S, PERIOD_S = 0.5, 0.5, 0.25  # the steady window inside a run; the sampling period


def postmaster(home: Path) -> psutil.Process:
    """The postmaster of ``home`` (the postgres process there whose parent is not one)."""
    procs = [p for p in psutil.process_iter(["name", "cwd", "ppid"])
             if p.info["name"] == "postgres" and str(p.info["cwd"] or "").startswith(str(home))]  # fmt: skip
    pids = {p.pid for p in procs}
    top = next((p for p in procs if p.info["ppid"] not in pids), None)
    if top is None:
        raise SystemExit(f"no postmaster found under {home}")
    return top


def _cpu(p: psutil.Process, children: bool = False) -> float:
    try:
        t = p.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def cpu_snapshot(top: psutil.Process, bouncers: list[psutil.Process]) -> dict[str, float]:
    """CPU seconds so far: the server (postmaster with its reaped children + live backends), PgBouncer,
    pgbench (our children), and the machine's busy time."""
    benches = [p for p in psutil.Process().children(recursive=True) if _name(p) == "pgbench"]
    bench = sum(_cpu(p) for p in benches)
    at = time.time()
    m = psutil.cpu_times()
    busy = sum(m) - m.idle - getattr(m, "iowait", 0.0)
    bouncer = sum(_cpu(p) for p in bouncers)
    server = _cpu(top, children=True) + sum(_cpu(k) for k in top.children())
    return {"postgres": server, "pgbouncer": bouncer, "pgbench": bench, "machine": busy, "at": at,
            "benches": len(benches)}  # fmt: skip


class CpuWindow:
    """CPU snapshots every PERIOD_S during a run (a thread); :meth:`measure` picks the steady window
    from the run's own transactions: SKIP_S after the first one started to TAIL_S before the last
    one ended (pgbench connects its clients first, and through the pooler those 200 SCRAM
    handshakes take PgBouncer's one thread a while)."""

    def __init__(self, home: Path) -> None:
        self.top, self.bouncers = postmaster(home), _pooler.processes(home)
        self.snaps: list[dict[str, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._take, daemon=True)
        self.thread.start()

    def _take(self) -> None:
        while not self.stop.is_set():
            self.snaps.append(cpu_snapshot(self.top, self.bouncers))
            self.stop.wait(PERIOD_S)

    def measure(self, run: LoadRun) -> dict[str, float]:
        """Inside the window: TPS, p95 and µs of CPU per transaction completed, per part (empty: no window)."""
        self.stop.set()
        self.thread.join(timeout=30)
        ok = run.ok
        start = run.started_at + ok["start"].to_numpy(dtype=float)
        end = start + ok["latency_ms"].to_numpy(dtype=float) / 1000
        if not len(end):
            return {}
        lo, hi = start.min() + SKIP_S, end.max() - TAIL_S
        inside = [x for x in self.snaps if lo <= x["at"] <= hi and x["benches"]]
        if len(inside) < 2 or inside[-1]["at"] - inside[0]["at"] < 0.5 or inside[0]["benches"] != inside[-1]["benches"]:
            return {}
        a, b = inside[0], inside[-1]
        done = (end >= a["at"]) & (end < b["at"])
        n = int(done.sum())
        if n == 0:
            return {}
        out = {k: 1e6 * (b[k] - a[k]) / n for k in (*PARTS, "machine")}
        out["tps"] = n / (b["at"] - a["at"])
        out["p95_ms"] = float(np.percentile(ok["latency_ms"].to_numpy(dtype=float)[done], 95))
        return out


def pin(cluster: LocalCluster, server_cores: set[int], other_cores: set[int]) -> str:
    """The server (postmaster and children; later backends inherit it) on ``server_cores``; PgBouncer
    and this process (pgbench inherits it) on ``other_cores``."""
    top = postmaster(cluster.home)
    for p in (top, *top.children()):
        os.sched_setaffinity(p.pid, server_cores)
    for p in _pooler.processes(cluster.home):
        os.sched_setaffinity(p.pid, other_cores)
    os.sched_setaffinity(0, other_cores)
    return f"server on cores {sorted(server_cores)}, PgBouncer and pgbench on {sorted(other_cores)}"


def server_hop(cluster: LocalCluster) -> str:
    """How PgBouncer's server connections reach the server, as the server sees them."""
    with cluster.target().connect() as conn:
        rows = conn.execute("SELECT client_addr IS NULL, count(*) FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1").fetchall()  # fmt: skip
    got = {bool(r[0]): int(r[1]) for r in rows}
    return f"{got.get(True, 0)} over the unix socket, {got.get(False, 0)} over TCP"


def summarize(rows: list[dict[str, dict[str, Any]]], view: str, *, hop: bool) -> None:
    """The TPS ratio and the p95 overhead over the rounds, for ``view`` ("steady": the window inside
    every run; "run": the whole run as LoadRun measures it)."""

    def fig(arm: str, key: str) -> np.ndarray:
        return np.array([g[arm][view].get(key, NAN) for g in rows], dtype=float)

    ratios = fig("pooler", "tps") / fig("direct", "tps")
    over = fig("pooler", "p95_ms") - fig("direct", "p95_ms")
    label = {"steady": "steady window", "run": "whole run"}[view]
    print(f"{label}: TPS ratio pooler/direct per round {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {np.nanmedian(ratios):.2f}x (goal >= 0.75x; range {np.nanmin(ratios):.2f}-{np.nanmax(ratios):.2f}); "
          f"median p95 overhead {np.nanmedian(over):+.2f} ms")  # fmt: skip
    if hop:
        print(f"  of which the hop (50 clients through the pooler vs direct): "
              f"{np.nanmedian(fig('hop', 'p95_ms') - fig('direct', 'p95_ms')):+.2f} ms at a TPS ratio of "
              f"{np.nanmedian(fig('hop', 'tps') / fig('direct', 'tps')):.2f}x; the queue (200 vs 50 clients through "
              f"it): {np.nanmedian(fig('pooler', 'p95_ms') - fig('hop', 'p95_ms')):+.2f} ms")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--mix", default="point")
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--pool-size", type=int, default=50)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--pin", action="store_true", help="server on the last core, PgBouncer and pgbench on the others")
    ap.add_argument("--server-tcp", action="store_true", help="PgBouncer reaches the server over loopback TCP")
    ap.add_argument("--pooler-nice", type=int, default=None, metavar="N",
                    help="run PgBouncer at this nice value (negative: ahead of the other runnable threads; root)")
    ap.add_argument("--no-hop", action="store_true", help="skip the 50-clients-through-the-pooler arm")
    a = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if a.pin and len(cores) < 2:
        raise SystemExit(f"--pin needs at least 2 cores, this process has {len(cores)}")
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; cores {cores}")
    with scratch_cluster("wb-bench-pool-") as cluster:
        load(cluster.target(), a.scale, 42, progress=False)
        _pooler.add(cluster, a.pool_size, server_tcp=a.server_tcp)
        if a.pin:
            print(pin(cluster, {cores[-1]}, set(cores[:-1])))
        if a.pooler_nice is not None:
            for p in _pooler.processes(cluster.home):
                os.setpriority(os.PRIO_PROCESS, p.pid, a.pooler_nice)
            print(f"PgBouncer runs at nice {a.pooler_nice}")
        target = cluster.target()
        pooled = target.through_pooler()
        pm = prepare(target, a.mix, seed=0)
        common = dict(duration_s=a.duration, driver="pgbench", protocol="extended", allow_overload=True,
                      monitor=False, protect_dataset=False, prepared=pm)  # fmt: skip
        arms = [("direct", target, a.pool_size), ("pooler", pooled, a.clients)]
        if not a.no_hop:
            arms.append(("hop", pooled, a.pool_size))
        run_load(pooled, a.mix, clients=a.clients, **{**common, "duration_s": 2})  # the pool's 50 server connections
        print(f"PgBouncer's server connections: {server_hop(cluster)}")
        print("| round | arm | clients | TPS run | p95 ms run | TPS steady | p95 ms steady | errors "
              "| µs/tx postgres | pgbouncer | pgbench | sum | machine |")  # fmt: skip
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        rows: list[dict[str, dict[str, Any]]] = []
        for r in range(a.rounds):
            got: dict[str, dict[str, Any]] = {}
            for name, t, clients in arms[r % len(arms) :] + arms[: r % len(arms)]:
                win = CpuWindow(cluster.home)
                run = run_load(t, a.mix, clients=clients, **common)
                m = win.measure(run)
                g = got[name] = {"run": {"tps": run.tps, "p95_ms": run.latency()["p95_ms"]}, "steady": m,
                                 "errors": sum(run.errors().values())}  # fmt: skip
                c = [m.get(k, NAN) for k in (*PARTS, "machine")]
                print(f"| {r + 1} | {name} | {clients} | {run.tps:,.0f} | {g['run']['p95_ms']:.2f} | {m.get('tps', NAN):,.0f} "
                      f"| {m.get('p95_ms', NAN):.2f} | {g['errors']} | {c[0]:.0f} | {c[1]:.0f} | {c[2]:.0f} "
                      f"| {sum(c[:3]):.0f} | {c[3]:.0f} |", flush=True)  # fmt: skip
            rows.append(got)
        print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        for view in ("steady", "run"):
            summarize(rows, view, hop=not a.no_hop)
        for name in [n for n, _, _ in arms]:
            med = {k: float(np.nanmedian([g[name]["steady"].get(k, NAN) for g in rows])) for k in (*PARTS, "machine")}
            print(f"  median µs/tx {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in med.items())
                  + f" (postgres + pgbouncer + pgbench = {sum(med[k] for k in PARTS):.0f})")  # fmt: skip
        cost = [sum(g["direct"]["steady"].get(k, NAN) for k in PARTS) / sum(g["pooler"]["steady"].get(k, NAN) for k in PARTS)
                for g in rows]  # fmt: skip
        print(f"CPU per transaction, direct/pooler (the TPS ratio's ceiling where they share the cores): "
              f"{np.nanmedian(cost):.2f}x")  # fmt: skip
        cluster.remove_pooler()


if __name__ == "__main__":
    main()
