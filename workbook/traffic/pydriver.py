"""The Python driver: client threads with psycopg, for what pgbench cannot express.

Each client is a thread that picks a request by weight and a parameter set from the same pools
pgbench uses, routes it (:mod:`.routing`: writes to the primary, reads where the route says,
optionally read-your-writes), and runs it as a prepared statement in autocommit, as an app with
a statement cache does. What it adds over pgbench:

* a per-node ``psycopg_pool.ConnectionPool`` (``pool_size``, ``pool_timeout_s``) instead of one
  connection per client: N users on a pool of M, with ``PoolTimeout`` counted as ``pool_timeout``;
* client-side ``retries`` with exponential back-off and jitter on serialization failures,
  deadlocks, lock timeouts and lost connections, within a per-request ``budget_ms``;
* per-row loops (the N+1 pattern) run as written;
* a client that hits an error keeps going (pgbench aborts the client): a lost connection is
  reopened, a refused one retried after a short pause, and every failure is one row.

Open loop (``rate``): each client draws Poisson arrivals at ``rate / clients`` and a request's
latency counts from its scheduled time, so queueing behind a slow server shows in the tail
(pgbench ``-R`` measures the same way). Python's GIL limits a client thread to roughly one
request in flight at a time per core: benchmarks/README.md (traffic) has the ratio to pgbench.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import WorkbookError
from .classify import classify_exception, classify_message
from .mix import PreparedMix, Request
from .pgbench import DriverResult, _window
from .result import empty_transactions
from .routing import READ_YOUR_WRITES, Router

if TYPE_CHECKING:
    import psycopg

    from ..cluster import Target

GRACE_S = 1.0  # how long requests in flight at the end may finish before they are cancelled
START_TIMEOUT_S = 120.0  # how long the client threads may take to start (200 on 2 busy cores: seconds)
RETRYABLE = ("serialization_failure", "deadlock", "lock_timeout", "connection_lost")


class StartLine:
    """Where ``clients`` threads wait until every one of them runs, so a run's clock starts with all
    its clients: starting 200 threads on 2 busy cores took seconds (each ``start`` waits for the GIL
    behind the threads already running), so a clock started with the first thread timed "N
    clients" only for the tail of a short run, and the first threads had the pool or the server to
    themselves. ``on_start`` runs once, when the last one arrives, before any is released."""

    def __init__(self, clients: int, *, on_start: Callable[[], None] | None = None,
                 timeout_s: float = START_TIMEOUT_S) -> None:  # fmt: skip
        self.clients, self.timeout_s = clients, timeout_s
        self._barrier = threading.Barrier(clients + 1, action=on_start, timeout=timeout_s)

    def arrive(self) -> bool:
        """A client thread: wait for the others; False when the run was called off meanwhile."""
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            return False
        return True

    def go(self) -> None:
        """The thread that started the clients: wait for all of them (a one-line error if they do not come)."""
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise WorkbookError(f"{self.clients} client threads did not all start within {self.timeout_s:.0f} s: "
                                "the machine is too busy; try fewer clients") from None  # fmt: skip

    def call_off(self) -> None:
        """Release every thread still waiting (``arrive`` returns False); harmless after ``go``."""
        self._barrier.abort()


@dataclass
class Options:
    """What the Python driver adds; every default is what pgbench would do."""

    pool_size: int | None = None  # per node; None = one connection per client and node
    pool_timeout_s: float = 30.0
    retries: int = 0
    backoff_ms: float = 10.0
    budget_ms: float | None = None  # no retry that would end past this; run_load also makes it the statement_timeout
    session_options: str = ""  # libpq options for every session: "-c statement_timeout=50 -c lock_timeout=20"
    read_your_writes: str | None = None  # None, "stick", "wait_lsn"
    stick_ms: float = 500.0
    wait_lsn_timeout_ms: float = 1000.0
    policy: str = "round_robin"
    client: str = "libpq"  # or "psycopg": the full cursor path


@dataclass
class _Counters:
    retries: int = 0
    stuck_to_primary: int = 0
    lsn_waits: int = 0
    lsn_wait_ms: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, value: float = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + value)


class _Connections:
    """One client's connections (or pool checkouts) by node."""

    def __init__(self, target: Target, app: str, options: str, pools: dict[str, Any] | None) -> None:
        self.target, self.app, self.options, self.pools = target, app, options, pools
        self.conns: dict[str, psycopg.Connection[Any]] = {}
        self.on_drop: Callable[[psycopg.Connection[Any]], None] | None = None

    def get(self, node: str) -> psycopg.Connection[Any]:
        conn = self.conns.get(node)
        if conn is None or conn.closed:
            kwargs: dict[str, Any] = {"application_name": self.app, "connect_timeout": 5}
            if self.options:
                kwargs["options"] = self.options
            conn = self.target.connect(node, **kwargs)
            self.conns[node] = conn
        return conn

    def drop(self, node: str) -> None:
        conn = self.conns.pop(node, None)
        if conn is not None:
            if self.on_drop is not None:
                self.on_drop(conn)
            conn.close()

    def close(self) -> None:
        for node in list(self.conns):
            self.drop(node)


def _execute(conn: psycopg.Connection[Any], req: Request, params: dict[str, Any]) -> None:
    """Run one request's statements (a per-row loop feeds each row to the next statement)."""
    with conn.cursor() as cur:
        cur.execute(req.statements[0], params, prepare=True)
        rows = cur.fetchall() if cur.description else []
        for step in req.statements[1:]:
            names = [d.name for d in cur.description or ()]
            out: list[Any] = []
            for row in rows:
                cur.execute(step, {**params, **dict(zip(names, row, strict=False))}, prepare=True)
                out.extend(cur.fetchall() if cur.description else [])
            rows = out


class _Caller:
    """Runs a request on a connection: through libpq's prepared-statement call (``client="libpq"``,
    the experiments' timed path: parameters dumped once per set, no Python rows built) or through a
    psycopg cursor (``client="psycopg"``, what application code pays). Per-row loops always take
    the cursor path."""

    def __init__(self, requests: tuple[Request, ...], client: str) -> None:
        self.requests, self.lean = requests, client == "libpq"
        self.runners: dict[tuple[int, int, int], Callable[[], int]] = {}

    def __call__(self, conn: psycopg.Connection[Any], ri: int, pi: int) -> None:
        req = self.requests[ri]
        if self.lean and len(req.statements) == 1:
            key = (id(conn), ri, pi)
            fn = self.runners.get(key)
            if fn is None:
                from ..experiment.wire import statement_runner

                fn = self.runners[key] = statement_runner(conn, req.statements[0], req.params[pi])
            fn()
        else:
            _execute(conn, req, req.params[pi])

    def forget(self, conn: psycopg.Connection[Any]) -> None:
        """Drop the statements prepared on a connection that is gone (its id may be reused)."""
        cid = id(conn)
        for key in [k for k in self.runners if k[0] == cid]:
            del self.runners[key]


def run(
    target: Target,
    prepared: PreparedMix,
    *,
    clients: int,
    duration_s: float,
    route: str,
    app: str,
    rate: float | None = None,
    opts: Options | None = None,
    lag_of: Callable[[str], float | None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[float, float], None] | None = None,
    seed: int = 0,
) -> DriverResult:
    """Run the clients for ``duration_s`` (or until ``should_stop``); one row per request."""
    import pandas as pd

    o = opts or Options()
    if o.read_your_writes not in READ_YOUR_WRITES:
        raise WorkbookError(f"read_your_writes must be one of {READ_YOUR_WRITES}, got {o.read_your_writes!r}")
    router = Router.for_target(target.primary.name, tuple(e.name for e in target.replicas), route, o.policy, lag_of)
    session_opts = o.session_options
    pools = _open_pools(target, app, session_opts, o) if o.pool_size else None
    probs = prepared.probabilities()
    requests = prepared.requests
    stop = threading.Event()
    counters = _Counters()
    results: list[list[tuple[float, float, str, str, str | None]]] = [[] for _ in range(clients)]
    events: list[tuple[float, str]] = []
    t0 = time.time()
    deadline = time.monotonic() + duration_s
    mono0 = time.monotonic()

    def start_clock() -> None:  # when every client thread is running (StartLine)
        nonlocal t0, deadline, mono0
        t0, mono0 = time.time(), time.monotonic()
        deadline = mono0 + duration_s

    ready = StartLine(clients, on_start=start_clock)

    def client(i: int) -> None:
        if not ready.arrive():
            return
        rng = np.random.default_rng(seed * 7919 + i)
        jitter = random.Random(seed * 31 + i)
        conns = _Connections(target, app, session_opts, pools)
        call = _Caller(requests, o.client)
        conns.on_drop = call.forget
        batch = 4096
        picks = rng.choice(len(requests), size=batch, p=probs)
        sets = rng.random(batch)
        j = 0
        out = results[i]
        last_write_at = -1e9
        last_write_lsn: str | None = None
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                if rate:
                    next_at += rng.exponential(clients / rate)
                    delay = next_at - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                    scheduled = next_at
                else:
                    scheduled = time.monotonic()
                if scheduled >= deadline:
                    break
                if j == batch:  # the choices are drawn in batches: numpy per request costs more than the request
                    picks, sets, j = rng.choice(len(requests), size=batch, p=probs), rng.random(batch), 0
                ri = int(picks[j])
                req = requests[ri]
                pi = int(sets[j] * len(req.params))
                j += 1
                if req.is_write:
                    node = router.primary
                else:
                    node = router.read_node()
                    if node != router.primary and o.read_your_writes == "stick" and \
                            (time.monotonic() - last_write_at) * 1000 < o.stick_ms:
                        node = router.primary
                        counters.add("stuck_to_primary")
                error: str | None = None
                tries = 0
                while True:
                    tries += 1
                    try:
                        if pools is not None:
                            with pools[node].connection(timeout=o.pool_timeout_s) as conn:
                                if last_write_lsn and node != router.primary and o.read_your_writes == "wait_lsn":
                                    _wait_lsn(conn, last_write_lsn, o, counters)
                                call(conn, ri, pi)
                                if req.is_write and o.read_your_writes == "wait_lsn":
                                    last_write_lsn = _lsn(conn)
                        else:
                            conn = conns.get(node)
                            if last_write_lsn and node != router.primary and o.read_your_writes == "wait_lsn":
                                _wait_lsn(conn, last_write_lsn, o, counters)
                            call(conn, ri, pi)
                            if req.is_write and o.read_your_writes == "wait_lsn":
                                last_write_lsn = _lsn(conn)
                        error = None
                    except WorkbookError as exc:  # Target.connect refused (too many clients, server down)
                        error = classify_message(str(exc))
                        if error == "other":
                            error = "connection_lost"
                    except Exception as exc:  # noqa: BLE001 - every failure is a row, classified
                        error = classify_exception(exc)
                        if error == "connection_lost" and pools is None:
                            conns.drop(node)
                    if error is None or error not in RETRYABLE or tries > o.retries or stop.is_set():
                        break
                    pause = o.backoff_ms * (2 ** (tries - 1)) * (0.5 + jitter.random()) / 1000
                    if o.budget_ms is not None and (time.monotonic() - scheduled + pause) * 1000 > o.budget_ms:
                        break
                    counters.add("retries")
                    if stop.wait(pause):
                        break
                end = time.monotonic()
                if error is not None and stop.is_set():
                    break  # cancelled by the run's own stop, not by the server
                if req.is_write and error is None:
                    last_write_at = end
                out.append((scheduled - mono0, (end - scheduled) * 1000, req.name, node, error))
                if error is not None:
                    if len(events) < 1000:
                        events.append((end - mono0, f"{node}: {error}"))
                    if error in ("too_many_clients", "connection_lost"):
                        stop.wait(0.05)  # do not hammer a server that refuses connections
        finally:
            conns.close()

    threads = [threading.Thread(target=client, args=(i,), name=f"workbook-traffic-client-{i}", daemon=True)
               for i in range(clients)]  # fmt: skip
    cancelled = False
    try:
        for t in threads:
            t.start()
        ready.go()
        next_report, last_count = time.monotonic() + 1, 0
        while any(t.is_alive() for t in threads):
            if should_stop is not None and should_stop():
                cancelled = True
                break
            if progress is not None and time.monotonic() >= next_report:
                next_report += 1
                count = sum(len(r) for r in results)
                progress(time.time() - t0, float(count - last_count))
                last_count = count
            if time.monotonic() >= deadline + GRACE_S:  # requests still running a second after the end
                break
            time.sleep(0.02)
    finally:
        stop.set()
        ready.call_off()
        time.sleep(0.02)
        if any(t.is_alive() for t in threads):
            _cancel_running(target, app)
        for t in threads:
            t.join(timeout=5)
        if pools is not None:
            for p in pools.values():
                p.close(timeout=1)
    elapsed_wall = time.monotonic() - mono0
    rows = [r for rs in results for r in rs]
    if rows:
        df = pd.DataFrame(rows, columns=["start", "latency_ms", "shape", "node", "error_class"])
        df["error_class"] = df["error_class"].astype(object).where(df["error_class"].notna(), None)
    else:
        df = empty_transactions()
    df = df.sort_values("start", kind="stable").reset_index(drop=True)
    ok = df[df["error_class"].isna()]
    elapsed = _window(ok, elapsed_wall) if not rate else min(elapsed_wall, duration_s)
    settings = {"pool_size": o.pool_size, "pool_timeout_s": o.pool_timeout_s, "retries": o.retries,
                "backoff_ms": o.backoff_ms, "budget_ms": o.budget_ms,
                "read_your_writes": o.read_your_writes, "policy": o.policy, "client": o.client,
                "retries_done": counters.retries, "stuck_to_primary": counters.stuck_to_primary,
                "lsn_waits": counters.lsn_waits, "lsn_wait_ms": round(counters.lsn_wait_ms, 3)}  # fmt: skip
    return DriverResult(df, t0, elapsed, cancelled, sorted(events), settings, [])


def _open_pools(target: Target, app: str, session_opts: str, o: Options) -> dict[str, Any]:
    from psycopg_pool import ConnectionPool

    pools = {}
    for ep in target.endpoints:
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": app, "connect_timeout": 5}
        opts = session_opts + ("" if target.allow_writes else " -c default_transaction_read_only=on")
        if opts.strip():
            kwargs["options"] = opts.strip()
        pools[ep.name] = ConnectionPool(ep.dsn, kwargs=kwargs, min_size=o.pool_size or 1, max_size=o.pool_size or 1,
                                        timeout=o.pool_timeout_s, open=True, name=f"workbook-{ep.name}")  # fmt: skip
    for p in pools.values():
        p.wait(timeout=30)
    return pools


def _lsn(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    return str(row[0]) if row else "0/0"


def _wait_lsn(conn: psycopg.Connection[Any], lsn: str, o: Options, counters: _Counters) -> None:
    """Wait until this replica has replayed ``lsn`` (the client's own last write), polling every ms."""
    t = time.monotonic()
    waited = False
    while True:
        row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()
        if row and row[0]:
            break
        waited = True
        if (time.monotonic() - t) * 1000 > o.wait_lsn_timeout_ms:
            break
        time.sleep(0.001)
    if waited:
        counters.add("lsn_waits")
        counters.add("lsn_wait_ms", (time.monotonic() - t) * 1000)


def _cancel_running(target: Target, app: str) -> None:
    """Cancel this run's statements still running on any node, so stopping takes milliseconds, not
    the length of the slowest query (the client threads then see QueryCanceled and exit)."""
    for ep in target.endpoints:
        try:
            with target.connect(ep.name, application_name="workbook-traffic-admin", connect_timeout=2) as conn:
                conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
                             " AND state = 'active' AND pid <> pg_backend_pid()", (app,))  # fmt: skip
        except Exception:  # noqa: BLE001 - a node that does not answer has nothing running for us
            pass
