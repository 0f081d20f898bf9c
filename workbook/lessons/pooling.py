"""Connections and pooling: 200 users on a server that takes 100 sessions work only through a pool —
in the app (psycopg_pool, SQLAlchemy) or in front of the server (PgBouncer) — and a pool's queue
wait is what Little's law predicts.

Seed problem: the founder's app meets 200 concurrent users with a pool of 50 and sees timeouts
everywhere. Each strategy is measured under the same 200 clients of the ``read`` mix (the read
side of chat plus the usage dashboard: the chat mix's writes would make every arm reset the
dataset afterwards, and what is measured here is the connections, not the writes):

* **direct**: one connection per client; the server has ``max_connections`` (100, PostgreSQL's
  default, which the local cluster keeps: the lesson reads it and says so if it differs) and
  refuses the rest with "sorry, too many clients already", counted;
* **psycopg_pool** ``max_size=50`` and a **SQLAlchemy** engine (``pool_size=50, max_overflow=0,
  pool_timeout``): 200 threads share 50 connections, queueing in the app;
* **PgBouncer** (transaction pooling, pool 50) in front of the primary, driven by pgbench;
* **queue**: 200 threads on a pool of 50 with requests of a known 50 ms (``pg_sleep``): the wait
  for a connection against Little's law, then ``PoolTimeout``\\ s with a short timeout;
* **connection per request** (pgbench ``-C``): what opening a connection (fork + SCRAM) costs;
* **idle in transaction**: clients that open a transaction and go away hold PgBouncer's server
  connections and starve everyone else; ``idle_in_transaction_session_timeout`` frees them;
* **prepared statements through a transaction pooler**: the error PgBouncer < 1.21 gives and the
  fix (psycopg ``prepare_threshold=None``).

Arms that need PgBouncer are marked not run (with how to install it) when it is missing. The
lesson starts the pooler on the local cluster when it has none and stops it again at the end.

Figures: ``clients``, ``max_connections``, ``setups`` (``direct``, ``psycopg_pool``,
``sqlalchemy``, ``pgbouncer``: ``tps``, ``p95_ms``, ``errors`` by class, ``driver``),
``pool_wait_p50_ms``/``pool_wait_p95_ms`` and ``littles_law_wait_ms``, ``pool_timeouts``,
``connect_per_request_tps`` (and ``persistent_connection_tps``), ``idle_in_transaction``,
``prepared_statements``, ``not_run``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError
from ._lesson import Lesson, Step

if TYPE_CHECKING:
    from ..cluster import LocalCluster, Target
    from ..lab import Lab
    from ..traffic import LoadRun

CLIENTS = 200
POOL_SIZE = 50
MIX = "read"
DURATION_S = 2.5
DIRECT_DURATION_S = 4.0  # 200 SCRAM logins take a second or two on 2 busy cores: the refusals come after them
# pgbench's -T clock runs while it logs its clients in, and 200 SCRAM logins through PgBouncer took
# 0.9-2.0 s on 2 busy cores (at -T 2, 3 runs in 12 made no transaction at all): -T 4 for both pgbench arms
PGBENCH_DURATION_S = 4.0
POOL_TIMEOUT_S = 5.0  # the load arms' pool timeout: long enough that the queue, not timeouts, shows
SERVICE_MS = 50.0  # the queue step's request: SELECT pg_sleep(0.05)
SHORT_TIMEOUT_S = 0.1  # the queue step's second round: shorter than the wait Little's law predicts
HOLD_S = 3.0  # how long an idle-in-transaction client keeps its transaction open
IDLE_TIMEOUT = "300ms"
INSTALL = "pgbouncer is not installed: 'sudo apt-get install pgbouncer' (Debian/Ubuntu; binder/apt.txt has it), then run this again"
APP = "workbook-pooling"

# the pooler the lesson started (per cluster home), stopped by its last step
_started: set[str] = set()


def _p(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    import numpy as np

    return round(float(np.percentile(np.asarray(xs), q)), 2)


def _cluster(lab: Lab) -> LocalCluster | None:
    from ..cluster import LocalCluster

    if lab.target.kind != "local":
        return None
    c = LocalCluster(lab.home)
    return c if c.initialized else None


def pooler_target(lab: Lab) -> Target | None:
    """``lab.target`` with its pooler endpoint (None: no PgBouncer running for it)."""
    from ..cluster import Endpoint, _pooler

    if lab.target.pooler is not None:
        return lab.target
    c = _cluster(lab)
    e = _pooler.entry(c) if c is not None else None
    if c is None or not e or not _pooler.processes(c.home):
        return None
    return replace(lab.target, pooler=Endpoint("pooler", _pooler.dsn(c, int(e["port"]))))


def _run_summary(run: LoadRun, driver: str) -> dict[str, Any]:
    d = run.as_dict()
    return {"tps": round(run.tps, 1), "p95_ms": d["p95_ms"], "errors": dict(run.errors()), "driver": driver,
            "transactions": d.get("transactions"), "notes": list(run.notes)}  # fmt: skip


def _not_run(why: str) -> dict[str, Any]:
    return {"tps": None, "p95_ms": None, "errors": {}, "driver": None, "not_run": why}


# ---- steps -------------------------------------------------------------------------------------
def setup(lab: Lab, *, pool_size: int = POOL_SIZE) -> dict[str, Any]:
    """The server's max_connections, the mix's parameters, and PgBouncer (started when missing)."""
    from ..cluster import _pooler

    with lab.target.connect() as conn:
        row = conn.execute("SELECT current_setting('max_connections')::int, "
                           "current_setting('superuser_reserved_connections')::int").fetchone()  # fmt: skip
    assert row is not None
    out: dict[str, Any] = {"max_connections": int(row[0]), "reserved": int(row[1]), "clients": CLIENTS,
                           "pool_size": pool_size, "mix": MIX, "pgbouncer": None, "not_run": None}  # fmt: skip
    exe = _pooler.find_pgbouncer()
    c = _cluster(lab)
    if exe is None:
        out["not_run"] = INSTALL
    elif c is None:
        out["not_run"] = "the pooler arms run on the local cluster (workbook up --pooler); this target is not local"
    else:
        out["pgbouncer"] = _pooler.version(exe)
        e = _pooler.entry(c)
        if not e or not _pooler.processes(c.home) or int(e["pool_size"]) != pool_size:
            if not e:
                _started.add(str(c.home))
            _pooler.add(c, pool_size)
    return out


def _prepared(lab: Lab) -> Any:
    from ..traffic.mix import get_mix, prepare

    return prepare(lab.target, get_mix(MIX), pool_size=16, seed=0)


def connect_storm(target: Target, *, clients: int = CLIENTS, hold_s: float = 1.0) -> dict[str, Any]:
    """``clients`` threads each open one connection to the primary at once and hold it until every
    one has tried: how many the server refused, by error class (the first message kept)."""
    import psycopg

    from ..traffic.classify import classify_exception

    ready = threading.Barrier(clients, timeout=60)
    opened: list[int] = [0]
    refused: dict[str, int] = {}
    first: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        conn = None
        try:
            conn = psycopg.connect(target.primary.dsn, autocommit=True, connect_timeout=30,
                                   application_name=APP + "-storm")  # fmt: skip
            with lock:
                opened[0] += 1
        except psycopg.Error as exc:
            k = classify_exception(exc)
            with lock:
                refused[k] = refused.get(k, 0) + 1
                if not first:
                    first.append(" ".join(str(exc).split())[:160])
        try:
            ready.wait()
            time.sleep(hold_s)
        except threading.BrokenBarrierError:
            pass
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return {"clients": clients, "opened": opened[0], "refused": dict(refused), "first_error": first[0] if first else None}


def direct(lab: Lab, *, clients: int = CLIENTS, duration_s: float = DIRECT_DURATION_S) -> dict[str, Any]:
    """One connection per client, straight to the primary: past max_connections, refused. First all
    200 connect at once (a deploy, a restart); then the mix runs on them for a few seconds."""
    from ..traffic import run_load

    storm = connect_storm(lab.target, clients=clients)
    run = run_load(lab.target, MIX, clients=clients, duration_s=duration_s, driver="python", allow_overload=True,
                   monitor=False, protect_dataset=False, prepared=_prepared(lab))  # fmt: skip
    return {"connect_storm": storm, "load": run}


def psycopg_pool(lab: Lab, *, clients: int = CLIENTS, pool_size: int = POOL_SIZE, duration_s: float = DURATION_S,
                 pool_timeout_s: float = POOL_TIMEOUT_S) -> LoadRun:  # fmt: skip
    """200 threads sharing a psycopg_pool.ConnectionPool of 50."""
    from ..traffic import run_load

    return run_load(lab.target, MIX, clients=clients, duration_s=duration_s, driver="python", pool_size=pool_size,
                    pool_timeout_s=pool_timeout_s, allow_overload=True, monitor=False, protect_dataset=False,
                    prepared=_prepared(lab))  # fmt: skip


def _run_clients(client: Any, clients: int, duration_s: float, stop: threading.Event, *,
                 join_timeout_s: float) -> float:  # fmt: skip
    """Run ``client(i)`` in ``clients`` threads for ``duration_s``, then set ``stop`` and join them;
    the seconds they ran (stop is set and threads are joined even when interrupted). The clock
    starts when every thread runs (:class:`~workbook.traffic.pydriver.StartLine`)."""
    from ..traffic.pydriver import StartLine

    ready = StartLine(clients)

    def run(i: int) -> None:
        if ready.arrive():
            client(i)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    t0 = time.perf_counter()
    try:
        for t in threads:
            t.start()
        ready.go()
        t0 = time.perf_counter()
        time.sleep(duration_s)
    finally:
        stop.set()
        ready.call_off()
        elapsed = time.perf_counter() - t0
        for t in threads:
            t.join(timeout=join_timeout_s)
    return elapsed


def sqlalchemy_engine(target: Target, *, mix: str = MIX, clients: int = CLIENTS, pool_size: int = POOL_SIZE, max_overflow: int = 0,
                      pool_timeout_s: float = POOL_TIMEOUT_S, duration_s: float = DURATION_S,
                      node: str = "primary") -> dict[str, Any]:  # fmt: skip
    """``clients`` threads running ``mix`` through one SQLAlchemy engine (``pool_size``,
    ``max_overflow``, ``pool_timeout``): TPS, p95 (pool wait included) and errors by class. A mix
    with writes takes the dataset's pristine copy first, as :func:`~workbook.traffic.run_load` does."""
    import numpy as np
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc

    from ..cluster.target import dsn_params
    from ..traffic.classify import classify_exception
    from ..traffic.mix import get_mix, prepare
    from ..traffic.runner import _mark_written, _protect

    if isinstance(clients, bool) or not isinstance(clients, int) or clients <= 0:
        raise WorkbookError(f"clients must be a positive whole number, got {clients!r}")
    m = get_mix(mix)
    pm = prepare(target, m, pool_size=16, seed=0)
    reqs = [r for r in pm.requests if len(r.statements) == 1]
    if not reqs:
        raise WorkbookError(f"mix {m.name!r} has only per-row loops; the SQLAlchemy driver runs one statement per request")
    notes: list[str] = []
    if any(r.is_write for r in reqs):
        target.require_writes(f"mix {m.name!r}")
        notes += _protect(target)
    weights = np.asarray([r.weight for r in reqs], dtype=float)
    weights /= weights.sum()
    p = dsn_params(target.endpoint(node).dsn)
    url = sa.engine.URL.create("postgresql+psycopg", username=p.get("user"), password=p.get("password"),
                               host=p.get("host"), port=int(p.get("port") or 5432), database=p.get("dbname"))  # fmt: skip
    connect_args: dict[str, Any] = {"application_name": APP + "-sqlalchemy", "connect_timeout": 5}
    if node == "pooler":
        connect_args["prepare_threshold"] = None
    engine = sa.create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout_s,
                              isolation_level="AUTOCOMMIT", connect_args=connect_args)  # fmt: skip
    lat: list[list[float]] = [[] for _ in range(clients)]
    errs: list[dict[str, int]] = [{} for _ in range(clients)]
    stop = threading.Event()

    def client(i: int) -> None:
        rng = np.random.default_rng(i)
        picks, sets, j = rng.choice(len(reqs), size=1024, p=weights), rng.random(1024), 0
        while not stop.is_set():
            if j == len(picks):
                picks, sets, j = rng.choice(len(reqs), size=1024, p=weights), rng.random(1024), 0
            r = reqs[int(picks[j])]
            params = r.params[int(sets[j] * len(r.params))]
            j += 1
            t = time.perf_counter()
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql(r.statements[0], params).fetchall()
            except sa_exc.TimeoutError:
                errs[i]["pool_timeout"] = errs[i].get("pool_timeout", 0) + 1
                continue
            except sa_exc.DBAPIError as exc:
                k = classify_exception(exc.orig or exc)
                errs[i][k] = errs[i].get(k, 0) + 1
                stop.wait(0.05)
                continue
            if not stop.is_set():
                lat[i].append((time.perf_counter() - t) * 1000)

    try:
        elapsed = _run_clients(client, clients, duration_s, stop, join_timeout_s=pool_timeout_s + 10)
    finally:
        engine.dispose()
    all_ms = [x for xs in lat for x in xs]
    if any(r.is_write for r in reqs) and all_ms:
        notes += _mark_written(target, f"SQLAlchemy load run {m.name!r}")
    errors: dict[str, int] = {}
    for e in errs:
        for k, v in e.items():
            errors[k] = errors.get(k, 0) + v
    return {"tps": round(len(all_ms) / elapsed, 1), "p95_ms": _p(all_ms, 95), "errors": errors, "driver": "sqlalchemy",
            "transactions": len(all_ms), "pool_size": pool_size, "max_overflow": max_overflow,
            "pool_timeout_s": pool_timeout_s, "mix": m.name, "notes": notes}  # fmt: skip


def sqlalchemy(lab: Lab) -> dict[str, Any]:
    """The same 200 clients through a SQLAlchemy engine: pool_size=50, max_overflow=0."""
    return sqlalchemy_engine(lab.target)


def pgbouncer(lab: Lab, *, clients: int = CLIENTS, duration_s: float = PGBENCH_DURATION_S) -> dict[str, Any]:
    """200 pgbench clients through PgBouncer (transaction pooling, pool 50), and 50 straight to the
    primary for comparison (the same mix, the same driver)."""
    from ..traffic import run_load

    pt = pooler_target(lab)
    if pt is None:
        return {"not_run": INSTALL if _pgbouncer_missing() else "no pooler is running (workbook up --pooler)"}
    pm = _prepared(lab)
    through = run_load(pt.through_pooler(), MIX, clients=clients, duration_s=duration_s, driver="pgbench",
                       protocol="extended", allow_overload=True, monitor=False, protect_dataset=False, prepared=pm)  # fmt: skip
    direct50 = run_load(lab.target, MIX, clients=POOL_SIZE, duration_s=duration_s, driver="pgbench", protocol="extended",
                        allow_overload=True, monitor=False, protect_dataset=False, prepared=pm)  # fmt: skip
    return {"through_pooler": through, "direct_pool_size": direct50}


def _pgbouncer_missing() -> bool:
    from ..cluster import _pooler

    return _pooler.find_pgbouncer() is None


def _pgbench_tps(target: Target, node: str, *, connect: bool, clients: int = 8, duration_s: float = 2.0) -> dict[str, Any]:
    """pgbench with a one-statement script (``SELECT 1``), each transaction on a new connection
    (``-C``) or on the client's own."""
    from ..traffic.pgbench import find_pgbench, libpq_env

    exe = find_pgbench(None)
    with tempfile.TemporaryDirectory() as work:
        script = Path(work) / "one.sql"
        script.write_text("SELECT 1;\n")
        os.chmod(work, 0o755)
        os.chmod(script, 0o644)
        cmd = [exe, "-n", "-M", "simple", "-f", str(script), "-c", str(clients), "-j", "2", "-T",
               str(max(1, round(duration_s)))] + (["-C"] if connect else [])  # fmt: skip
        res = subprocess.run(cmd, env=libpq_env(target, node, APP + "-pgbench"), capture_output=True, text=True,
                             timeout=duration_s + 60, check=False, cwd=work)  # fmt: skip
    tps = None
    for line in res.stdout.splitlines():
        if line.startswith("tps = "):
            tps = round(float(line.split()[2]), 1)
    failed = [line for line in (res.stderr or "").splitlines() if "error" in line.lower() or "fatal" in line.lower()]
    return {"tps": tps, "clients": clients, "connect_per_transaction": connect, "errors": failed[:3]}


def connect_per_request(lab: Lab) -> dict[str, Any]:
    """``SELECT 1`` with a new connection per transaction (pgbench -C) against one kept open;
    through PgBouncer too, where a new client connection forks nothing."""
    out = {"direct_connect": _pgbench_tps(lab.target, "primary", connect=True),
           "direct_persistent": _pgbench_tps(lab.target, "primary", connect=False)}
    pt = pooler_target(lab)
    out["pooler_connect"] = _pgbench_tps(pt, "pooler", connect=True) if pt is not None else _not_run(INSTALL)
    return out


def queue_wait(target: Target, *, clients: int = CLIENTS, pool_size: int = POOL_SIZE, service_ms: float = SERVICE_MS,
               timeout_s: float = POOL_TIMEOUT_S, duration_s: float = DURATION_S) -> dict[str, Any]:  # fmt: skip
    """``clients`` threads on a psycopg_pool of ``pool_size``, each request ``pg_sleep`` of
    ``service_ms``: the wait for a connection (p50/p95), throughput, PoolTimeouts, and Little's law's
    prediction of the wait (a closed loop: clients − pool_size requests queue, served at X/s)."""
    from psycopg_pool import ConnectionPool, PoolTimeout

    pool = ConnectionPool(target.primary.dsn, min_size=pool_size, max_size=pool_size, timeout=timeout_s, open=True,
                          kwargs={"autocommit": True, "application_name": APP + "-queue"}, name="workbook-queue")  # fmt: skip
    pool.wait(timeout=30)
    waits: list[list[float]] = [[] for _ in range(clients)]
    done = [0] * clients
    timeouts = [0] * clients
    stop = threading.Event()
    sleep_s = service_ms / 1000

    def client(i: int) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                with pool.connection(timeout=timeout_s) as conn:
                    got = time.perf_counter()
                    conn.execute("SELECT pg_sleep(%s)", (sleep_s,))
            except PoolTimeout:
                timeouts[i] += 1
                continue
            if not stop.is_set():
                waits[i].append((got - t) * 1000)
                done[i] += 1

    try:
        elapsed = _run_clients(client, clients, duration_s, stop, join_timeout_s=timeout_s + 10)
    finally:
        pool.close(timeout=2)
    w = [x for xs in waits for x in xs]
    x = sum(done) / elapsed
    return {
        "clients": clients, "pool_size": pool_size, "service_ms": service_ms, "timeout_s": timeout_s,
        "requests_per_s": round(x, 1), "wait_p50_ms": _p(w, 50), "wait_p95_ms": _p(w, 95),
        "pool_timeouts": sum(timeouts),
        # Little's law on the queue: L = X·W, L = clients − pool_size waiting (every client is always in the loop)
        "littles_law_wait_ms": round(max(0, clients - pool_size) / x * 1000, 1) if x else None,
        # the same law before running anything: X = pool_size / service time
        "predicted_wait_ms": round(max(0, clients - pool_size) / pool_size * service_ms, 1),
    }  # fmt: skip


def queue(lab: Lab) -> dict[str, Any]:
    """200 threads, a pool of 50, 50 ms requests: the queue, then a 0.1 s pool timeout."""
    return {"wait": queue_wait(lab.target), "short_timeout": queue_wait(lab.target, timeout_s=SHORT_TIMEOUT_S)}


def _starve(target: Target, *, holders: int, workers: int = 20, hold_s: float = HOLD_S,
            window_s: float = 2.0) -> dict[str, Any]:  # fmt: skip
    """``holders`` clients open a transaction through the pooler and sit in it for ``hold_s``;
    ``workers`` clients run ``SELECT 1`` meanwhile. How many of the workers' requests finished in
    ``window_s``, their p95, and what happened to the holders."""
    import psycopg

    dsn = target.endpoint("pooler").dsn
    ready = threading.Barrier(holders + 1, timeout=30)
    holder_errors = [0]
    lock = threading.Lock()

    def holder() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, prepare_threshold=None, connect_timeout=10,
                                 application_name=APP + "-idle") as conn:  # fmt: skip
                conn.execute("BEGIN")
                conn.execute("SELECT 1")
                ready.wait()
                time.sleep(hold_s)  # the app waits for a model's answer with the transaction open
                conn.execute("COMMIT")
        except (psycopg.Error, threading.BrokenBarrierError):
            with lock:
                holder_errors[0] += 1

    lat: list[float] = []
    stop = threading.Event()
    t_start = [0.0]

    def worker() -> None:
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None, connect_timeout=10,
                             application_name=APP + "-worker") as conn:  # fmt: skip
            while not stop.is_set():
                t = time.perf_counter()
                conn.execute("SELECT 1")
                end = time.perf_counter()
                if end - t_start[0] <= window_s:
                    with lock:
                        lat.append((end - t) * 1000)

    hs = [threading.Thread(target=holder, daemon=True) for _ in range(holders)]
    for h in hs:
        h.start()
    ready.wait()
    t_start[0] = time.perf_counter()
    ws = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for w in ws:
        w.start()
    time.sleep(window_s)
    stop.set()
    for t in [*hs, *ws]:
        t.join(timeout=hold_s + 30)
    return {"holders": holders, "workers": workers, "hold_s": hold_s, "window_s": window_s,
            "worker_requests_done": len(lat), "worker_p95_ms": _p(lat, 95),
            "holders_terminated": holder_errors[0]}  # fmt: skip


def idle_in_transaction(lab: Lab) -> dict[str, Any]:
    """As many clients as the pooler has server connections open a transaction and wait: everyone
    else queues. Then ``idle_in_transaction_session_timeout`` ends those sessions and frees the pool."""
    from ..cluster import _pooler

    pt = pooler_target(lab)
    if pt is None:
        return _not_run(INSTALL if _pgbouncer_missing() else "no pooler is running (workbook up --pooler)")
    c = _cluster(lab)
    e = _pooler.entry(c) if c is not None else None
    size = int(e["pool_size"]) if e else POOL_SIZE
    without = _starve(pt, holders=size)
    with lab.target.connect() as conn:
        conn.execute(f"ALTER SYSTEM SET idle_in_transaction_session_timeout = '{IDLE_TIMEOUT}'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.2)  # every session reads the new setting at its next command
        with_timeout = _starve(pt, holders=size)
    finally:
        with lab.target.connect() as conn:
            conn.execute("ALTER SYSTEM RESET idle_in_transaction_session_timeout")
            conn.execute("SELECT pg_reload_conf()")
    return {"pool_size": size, "without_timeout": without, "with_timeout": with_timeout, "timeout": IDLE_TIMEOUT}


def _prepared_round(dsn: str, threshold: int | None, *, clients: int = 4, rounds: int = 10) -> dict[str, Any]:
    import psycopg

    conns = [psycopg.connect(dsn, autocommit=True, prepare_threshold=threshold, application_name=APP + "-prepared")
             for _ in range(clients)]  # fmt: skip
    errors, first = 0, None
    try:
        for r in range(rounds):
            for conn in conns:
                try:
                    conn.execute("SELECT %s::int + 1", (r,)).fetchone()
                    conn.execute("SELECT count(*) FROM pg_class WHERE relpages > %s", (r,)).fetchone()
                except psycopg.Error as exc:
                    errors += 1
                    first = first or " ".join(str(exc).split())[:160]
    finally:
        for conn in conns:
            conn.close()
    return {"prepare_threshold": threshold, "requests": clients * rounds * 2, "errors": errors, "first_error": first}


def prepared_statements(lab: Lab) -> dict[str, Any]:
    """Through the transaction pooler: psycopg preparing every statement (``prepare_threshold=0``)
    against not preparing at all (``prepare_threshold=None``)."""
    pt = pooler_target(lab)
    if pt is None:
        return _not_run(INSTALL if _pgbouncer_missing() else "no pooler is running (workbook up --pooler)")
    dsn = pt.endpoint("pooler").dsn
    return {"prepared": _prepared_round(dsn, 0), "unprepared": _prepared_round(dsn, None)}


def put_back(lab: Lab) -> dict[str, Any]:
    """Stop the pooler if this lesson started it; the setting it changed is already reset."""
    from ..cluster import _pooler

    c = _cluster(lab)
    stopped = False
    if c is not None and str(c.home) in _started:
        _pooler.remove(c)
        _started.discard(str(c.home))
        stopped = True
    with lab.target.connect() as conn:
        row = conn.execute("SELECT current_setting('idle_in_transaction_session_timeout')").fetchone()
    return {"pooler_stopped": stopped, "idle_in_transaction_session_timeout": row[0] if row else None}


# ---- figures ------------------------------------------------------------------------------------
def figures(outputs: dict[str, Any]) -> dict[str, Any]:
    s = outputs["setup"]
    pgb = outputs["pgbouncer"]
    if "through_pooler" in pgb:
        pgb_fig = _run_summary(pgb["through_pooler"], "pgbench")
        direct50 = _run_summary(pgb["direct_pool_size"], "pgbench")
    else:
        pgb_fig, direct50 = _not_run(pgb.get("not_run") or INSTALL), None
    q = outputs["queue"]
    cpr = outputs["connect_per_request"]
    idle = outputs["idle_in_transaction"]
    prep = outputs["prepared_statements"]
    not_run = {k: v["not_run"] for k, v in (("pgbouncer", pgb_fig), ("idle_in_transaction", idle),
                                             ("prepared_statements", prep)) if v.get("not_run")}  # fmt: skip
    return {
        "clients": int(s["clients"]),
        "max_connections": int(s["max_connections"]),
        "pool_size": int(s["pool_size"]),
        "mix": s["mix"],
        "pgbouncer_version": s["pgbouncer"],
        "setups": {
            "direct": _run_summary(outputs["direct"]["load"], "python"),
            "psycopg_pool": _run_summary(outputs["psycopg_pool"], "python"),
            "sqlalchemy": {k: outputs["sqlalchemy"][k] for k in ("tps", "p95_ms", "errors", "driver", "transactions")},
            "pgbouncer": {k: v for k, v in pgb_fig.items() if k != "notes"},
        },
        "direct_connections_opened": outputs["direct"]["connect_storm"]["opened"],
        "direct_connections_refused": sum(outputs["direct"]["connect_storm"]["refused"].values()),
        "direct_refusal": outputs["direct"]["connect_storm"]["first_error"],
        "direct_pool_size_pgbench": None if direct50 is None else {k: v for k, v in direct50.items() if k != "notes"},
        "pool_wait_p50_ms": q["wait"]["wait_p50_ms"],
        "pool_wait_p95_ms": q["wait"]["wait_p95_ms"],
        "littles_law_wait_ms": q["wait"]["littles_law_wait_ms"],
        "predicted_wait_ms": q["wait"]["predicted_wait_ms"],
        "queue_requests_per_s": q["wait"]["requests_per_s"],
        "pool_timeouts": {"timeout_s": q["short_timeout"]["timeout_s"], "count": q["short_timeout"]["pool_timeouts"]},
        "connect_per_request_tps": cpr["direct_connect"]["tps"],
        "persistent_connection_tps": cpr["direct_persistent"]["tps"],
        "pooler_connect_per_request_tps": cpr["pooler_connect"].get("tps"),
        "idle_in_transaction": idle if idle.get("not_run") else {
            "pool_size": idle["pool_size"], "timeout": idle["timeout"],
            "worker_requests_without_timeout": idle["without_timeout"]["worker_requests_done"],
            "worker_requests_with_timeout": idle["with_timeout"]["worker_requests_done"],
            "holders_terminated_with_timeout": idle["with_timeout"]["holders_terminated"]},
        "prepared_statements": prep if prep.get("not_run") else {
            "errors_prepare_threshold_0": prep["prepared"]["errors"], "first_error": prep["prepared"]["first_error"],
            "errors_prepare_threshold_none": prep["unprepared"]["errors"], "requests": prep["prepared"]["requests"]},
        "not_run": not_run,
    }  # fmt: skip


LESSON = Lesson(
    name="pooling",
    title="Connections and pooling: 200 users, 100 server sessions, a pool of 50",
    claim="Past max_connections a server refuses clients; a pool of 50 — in the app or in PgBouncer — serves 200 "
          "clients with no error, its queue wait is what Little's law predicts, and a new connection per request "
          "costs far more than the request.",
    notebook="06_connections_and_pooling",
    steps=(
        Step("setup", "The server and the pooler",
             "max_connections is what the server accepts; PgBouncer (transaction pooling) is started on the local "
             "cluster when it is installed.", setup),
        Step("direct", "200 clients, one connection each",
             "All 200 connect at once: count the refused; then the mix on the connections that got in, and "
             "too_many_clients for the clients that retry.", direct),
        Step("psycopg_pool", "200 threads on a psycopg_pool of 50",
             "No refusals: the 150 threads without a connection wait in the pool's queue.", psycopg_pool),
        Step("sqlalchemy", "The same through a SQLAlchemy engine",
             "pool_size=50, max_overflow=0, pool_timeout: what most Python apps configure.", sqlalchemy),
        Step("pgbouncer", "200 clients through PgBouncer, pool 50",
             "200 client connections, 50 server connections: compare with 50 clients straight to the server.",
             pgbouncer),
        Step("queue", "The queue: Little's law and PoolTimeout",
             "Requests of 50 ms: the wait for a connection against (clients − pool) / throughput; then a 0.1 s "
             "timeout.", queue),
        Step("connect_per_request", "A new connection per request",
             "pgbench -C: every transaction forks a backend and authenticates with SCRAM.", connect_per_request),
        Step("idle_in_transaction", "Idle in transaction starves the pool",
             "Clients holding a transaction open hold a server connection each; the timeout frees them.",
             idle_in_transaction),
        Step("prepared_statements", "Prepared statements through a transaction pooler",
             "psycopg prepares a statement after 5 executions; through PgBouncer < 1.21 that breaks.",
             prepared_statements),
        Step("put_back", "Put things back", "The pooler the lesson started is stopped.", put_back),
    ),
    figures=figures,
    references=(
        ("Connections and authentication (max_connections)", "https://www.postgresql.org/docs/current/runtime-config-connection.html"),
        ("Client connection defaults (idle_in_transaction_session_timeout)", "https://www.postgresql.org/docs/current/runtime-config-client.html"),
        ("pgbench", "https://www.postgresql.org/docs/current/pgbench.html"),
        ("PgBouncer configuration", "https://www.pgbouncer.org/config.html"),
        ("psycopg: connection pools", "https://www.psycopg.org/psycopg3/docs/advanced/pool.html"),
        ("psycopg: prepared statements", "https://www.psycopg.org/psycopg3/docs/advanced/prepare.html"),
    ),
)  # fmt: skip
