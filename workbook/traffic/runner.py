"""Load runs and capacity sweeps: the entry points a lesson, a panel or ``workbook bench`` calls.

:func:`run_load` checks everything it can before anything starts (one-line
:class:`~workbook.errors.WorkbookError`: bad clients, rate, route, mix, driver, a write mix on a
read-only target, more clients than a node can take, pgbench missing), samples the parameter
pools, starts the server monitor, runs the driver, and stops within a second on ``should_stop``
or Ctrl-C with no pgbench process and no client session left behind (each run's sessions carry
its own ``application_name``, so the sweep finds exactly them).

Writes change the dataset. Before a mix with writes runs, :func:`workbook.dataset.protect` takes
the pristine copy (once per load; it ends other sessions on the database, so
``protect_dataset=False`` skips it when a test holds a lock there); a run whose writes succeeded
records ``wrote=True`` with the rows it inserted, updated and deleted per table
(``pg_stat_user_tables`` deltas) and marks the dataset written (:func:`workbook.dataset.mark_written`);
every run records ``dataset_pristine``, whether the dataset was as loaded before it (the caller's
flag, else :func:`workbook.dataset.is_pristine`). The reset itself is ``workbook.dataset.reset``.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError
from . import pgbench as pgbench_driver
from . import pydriver
from .mix import Mix, PreparedMix, get_mix, prepare, resolve
from .monitor import Monitor
from .result import LoadRun
from .routing import check_route
from .usl import USL, fit_with_holdout

if TYPE_CHECKING:
    import pandas as pd

    from ..cluster import Target

DRIVERS = ("pgbench", "python")
PROTOCOLS = ("simple", "extended", "prepared")
APP_PREFIX = "workbook-traffic-"


def capacity(target: Target, node: str) -> int:
    """How many more client sessions ``node`` takes: max_connections − reserved slots − sessions now."""
    with target.connect(node, application_name="workbook-traffic-admin") as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
            " - coalesce(current_setting('reserved_connections', true)::int, 0),"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0]) - int(row[1])


def _clients_per_node(prepared: PreparedMix, target: Target, route: str, clients: int, driver: str,
                      pool_size: int | None) -> dict[str, int]:  # fmt: skip
    """The most sessions the run may open on each node."""
    if driver == "pgbench":
        out: dict[str, int] = {}
        for p in pgbench_driver.split(prepared, target, route, clients, None):
            out[p.node] = out.get(p.node, 0) + p.clients
        return out
    per = pool_size if pool_size else clients  # the python driver opens one session per client and node it uses
    nodes = [target.primary.name] if route == "primary" else [e.name for e in target.endpoints]
    return {n: per for n in nodes}


def check_inputs(
    target: Target,
    mix: str | Mix,
    *,
    clients: int,
    duration_s: float,
    rate: float | None,
    route: str,
    driver: str,
    protocol: str = "prepared",
) -> Mix:
    """Everything that can be refused without a database (one-line errors)."""
    if isinstance(clients, bool) or not isinstance(clients, int) or clients <= 0:
        raise WorkbookError(f"clients must be a positive whole number, got {clients!r}")
    if not isinstance(duration_s, int | float) or not 0 < duration_s <= 24 * 3600:
        raise WorkbookError(f"duration must be between 0 and 86400 seconds, got {duration_s!r}")
    if rate is not None and (not isinstance(rate, int | float) or rate <= 0):
        raise WorkbookError(f"rate must be a positive number of transactions per second (or None), got {rate!r}")
    if driver not in DRIVERS:
        raise WorkbookError(f"driver must be one of {', '.join(DRIVERS)}, got {driver!r}")
    if protocol not in PROTOCOLS:
        raise WorkbookError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    check_route(route, tuple(e.name for e in target.replicas))
    m = get_mix(mix)
    if any(kind == "write" for _, kind, *_ in resolve(m)):
        target.require_writes(f"mix {m.name!r}")
    return m


_GUC = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def session_options(statement_timeout_ms: int | None, settings: Mapping[str, str | int | float] | None) -> str:
    """libpq ``options`` (``-c name=value ...``) for every session of a run, checked: a setting name is
    an identifier; spaces and backslashes in a value are escaped as libpq wants, other whitespace refused."""
    pairs = dict(settings or {})
    if statement_timeout_ms is not None:
        if isinstance(statement_timeout_ms, bool) or not isinstance(statement_timeout_ms, int | float) or statement_timeout_ms <= 0:
            raise WorkbookError(f"statement_timeout_ms must be a positive number, got {statement_timeout_ms!r}")
        pairs["statement_timeout"] = int(statement_timeout_ms)
    parts = []
    for name, value in pairs.items():
        text = str(value)
        if not _GUC.match(str(name)) or not text or any(c.isspace() and c != " " for c in text) or "\x00" in text:
            raise WorkbookError(f"session setting {name!r}={value!r} is not a plain name=value; e.g. {{'lock_timeout': '50ms'}}")
        escaped = text.replace("\\", "\\\\").replace(" ", "\\ ")  # libpq splits options at unescaped spaces
        parts.append(f"-c {name}={escaped}")
    return " ".join(parts)


def _table_changes(target: Target) -> dict[str, tuple[int, int, int]]:
    with target.connect(application_name="workbook-traffic-admin") as conn:
        rows = conn.execute("SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
                            " WHERE schemaname = 'ai_app'").fetchall()  # fmt: skip
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


class _Actions:
    """Things to do at given seconds into a run (add a replica, fail over, change a setting), each
    recorded as an event of the run, from a thread of their own so the load keeps going meanwhile."""

    def __init__(self, actions: Sequence[tuple[float, str, Callable[[], object]]], t0: float) -> None:
        self.actions = sorted(actions, key=lambda a: a[0])
        self.t0 = t0
        self.events: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="workbook-traffic-actions", daemon=True)

    def start(self) -> None:
        if self.actions:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)  # an action under way (a failover) is let finish

    def _loop(self) -> None:
        for when, label, action in self.actions:
            if self._stop.wait(max(0.0, self.t0 + when - time.time())):
                return
            self.events.append((time.time() - self.t0, label))
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the run goes on; the failure is an event of it
                self.events.append((time.time() - self.t0, f"{label} failed: {' '.join(str(exc).split())[:120]}"))


def _is_pristine(target: Target) -> bool | None:
    """Whether the dataset is as loaded (None when that cannot be told: no dataset, no access)."""
    from ..dataset import is_pristine

    try:
        return is_pristine(target)
    except Exception:  # noqa: BLE001 - not knowing is an answer: the run records None
        return None


def _protect(target: Target) -> list[str]:
    """Take the dataset's pristine copy before a write mix's first write (once per load: see
    :func:`workbook.dataset.protect`); a note when that is not possible, never an error."""
    from ..dataset import protect

    try:
        if not protect(target):
            return ["the dataset was already written to before this run: there is no pristine copy of it to reset to"]
    except Exception as exc:  # noqa: BLE001 - no CREATEDB right, no dataset, sessions that would not end ...
        return [f"no pristine copy of the dataset was taken ({' '.join(str(exc).split())[:160]}); 'workbook load' restores it"]
    return []


def _mark_written(target: Target, what: str) -> list[str]:
    from ..dataset import mark_written

    try:
        mark_written(target, what)
    except Exception as exc:  # noqa: BLE001 - the run's own record still says it wrote
        return [f"could not mark the dataset as written ({' '.join(str(exc).split())[:160]})"]
    return []


def sweep_sessions(target: Target, app: str, *, wait_s: float = 0.5) -> tuple[int, int]:
    """Wait for the run's sessions to end on every node; terminate the ones still there after ``wait_s``.

    Returns how many had to be terminated, and how many of those were a pooler's idle server
    connections (an endpoint named ``pooler``: PgBouncer keeps its server connections, which carry
    the run's application name, for the next client; they are closed so that the next run, or the
    next arm of a lesson, has the server's connection slots to itself and starts from an empty pool).
    """
    from psycopg import sql

    deadline = time.monotonic() + wait_s
    terminated = pooled = 0
    for ep in target.endpoints:
        idle = "state = 'idle'" if ep.name == "pooler" else "false"
        try:
            with target.connect(ep.name, application_name="workbook-traffic-admin", connect_timeout=2) as conn:
                while True:
                    row = conn.execute(sql.SQL("SELECT count(*) FILTER (WHERE NOT ({})) FROM pg_stat_activity "
                                               "WHERE application_name = %s").format(sql.SQL(idle)), (app,)).fetchone()  # fmt: skip
                    if not row or not row[0] or time.monotonic() > deadline:
                        got = conn.execute(sql.SQL("SELECT count(*) FILTER (WHERE ended), count(*) FILTER (WHERE ended AND "
                                                   "pooled) FROM (SELECT pg_terminate_backend(pid) AS ended, {} AS pooled "
                                                   "FROM pg_stat_activity WHERE application_name = %s) s"
                                                   ).format(sql.SQL(idle)), (app,)).fetchone()  # fmt: skip
                        terminated += int(got[0]) if got else 0
                        pooled += int(got[1]) if got else 0
                        break
                    time.sleep(0.02)
        except WorkbookError:
            continue  # a node that does not answer holds no session of ours
    return terminated, pooled


def run_load(
    target: Target,
    mix: str | Mix,
    *,
    clients: int = 4,
    duration_s: float = 10.0,
    rate: float | None = None,
    route: str = "primary",
    driver: str = "pgbench",
    latency_limit_ms: float | None = None,
    protocol: str = "prepared",
    pool_size: int | None = None,
    pool_timeout_s: float = 30.0,
    retries: int = 0,
    backoff_ms: float = 10.0,
    budget_ms: float | None = None,
    statement_timeout_ms: int | None = None,
    session_settings: Mapping[str, str | int | float] | None = None,
    read_your_writes: str | None = None,
    stick_ms: float = 500.0,
    policy: str = "round_robin",
    client: str = "libpq",
    params_per_shape: int = 16,
    hot_share: float = 0.8,
    seed: int = 0,
    dataset_pristine: bool | None = None,
    protect_dataset: bool = True,
    allow_overload: bool = False,
    monitor: bool = True,
    pgbench: str | None = None,
    prepared: PreparedMix | None = None,
    actions: Sequence[tuple[float, str, Callable[[], object]]] = (),
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> LoadRun:
    """Put ``clients`` concurrent clients of ``mix`` on the target for ``duration_s``; one LoadRun.

    ``rate`` (transactions/s over all clients) makes it an open loop; ``route`` sends reads to the
    primary, the replicas or all nodes (writes always go to the primary). ``driver="pgbench"``
    (default) is the cheapest load generator; ``"python"`` adds pools (``pool_size``,
    ``pool_timeout_s``), client-side ``retries``/``backoff_ms``/``budget_ms``,
    ``read_your_writes`` (``"stick"`` for ``stick_ms`` after a write, or ``"wait_lsn"``) and
    ``policy="least_lag"``; ``client="psycopg"`` times the full cursor path instead of libpq's
    prepared call. ``statement_timeout_ms`` and ``session_settings`` (``{"lock_timeout": "50ms",
    "default_transaction_isolation": "serializable"}``) apply to the run's sessions (both drivers).
    ``actions=[(3.0, "replica added", lambda: cluster.add_replica())]`` run during the load, each an
    event of the run (the timeline chart marks them). ``budget_ms`` also sets the sessions'
    statement_timeout unless ``statement_timeout_ms`` is given.
    ``protect_dataset`` takes the pristine copy before a write mix (see the module docstring).
    ``allow_overload=True`` skips the capacity check, to show what "too many clients" looks like.
    ``prepared`` reuses parameter pools already sampled (a sweep samples once). ``progress(seconds,
    tps)`` is called about once a second (a progress bar's live TPS); ``should_stop()`` is polled
    every 50 ms (a Cancel button).
    """
    m = check_inputs(target, mix, clients=clients, duration_s=duration_s, rate=rate, route=route, driver=driver,
                     protocol=protocol)  # fmt: skip
    if budget_ms is not None and (not isinstance(budget_ms, int | float) or budget_ms <= 0):
        raise WorkbookError(f"budget_ms must be a positive number of milliseconds, got {budget_ms!r}")
    # a budget bounds each try on the server too: a statement cannot outlive the request it serves
    options = session_options(statement_timeout_ms if statement_timeout_ms or not budget_ms else int(budget_ms),
                              session_settings)  # fmt: skip
    for when, label, action in actions:
        if not isinstance(when, int | float) or when < 0 or not callable(action):
            raise WorkbookError(f"an action is (seconds >= 0, label, callable), got {(when, label, action)!r}")
    exe = pgbench_driver.find_pgbench(pgbench, tls=target.needs_tls) if driver == "pgbench" else None
    if client not in ("libpq", "psycopg"):
        raise WorkbookError(f"client must be 'libpq' or 'psycopg', got {client!r}")
    if driver == "pgbench" and (pool_size or retries or budget_ms or read_your_writes or policy != "round_robin"):
        raise WorkbookError("pools, retries, budgets, read-your-writes and least-lag routing need driver='python'")
    pm = prepared if prepared is not None else prepare(target, m, pool_size=params_per_shape, hot_share=hot_share, seed=seed)
    if not allow_overload:
        for node, n in _clients_per_node(pm, target, route, clients, driver, pool_size).items():
            free = capacity(target, node) - (1 if monitor else 0)
            if n > free:
                raise WorkbookError(
                    f"{n} clients on {node} but it takes only {free} more sessions (max_connections minus reserved slots "
                    "minus sessions open now); use fewer clients or a pool (workbook bench --pool psycopg|pgbouncer; "
                    "pool_size=... in Python), or, in Python, allow_overload=True to see it fail"
                )
    app = f"{APP_PREFIX}{uuid.uuid4().hex[:10]}"
    notes: list[str] = []
    pristine = dataset_pristine if dataset_pristine is not None else _is_pristine(target)
    if pm.writes and protect_dataset:
        notes += _protect(target)
    before = _table_changes(target) if pm.writes else {}
    t0 = time.time()
    mon = Monitor(target, t0=t0) if monitor else None
    if mon is not None:
        mon.start()
    timeline = _Actions(actions, t0)
    timeline.start()
    try:
        if driver == "pgbench":
            res = pgbench_driver.run(target, pm, clients=clients, duration_s=duration_s, route=route, app=app, rate=rate,
                                     latency_limit_ms=latency_limit_ms, protocol=protocol, pgbench=exe, options=options,
                                     should_stop=should_stop, progress=progress)  # fmt: skip
        else:
            opts = pydriver.Options(pool_size=pool_size, pool_timeout_s=pool_timeout_s, retries=retries,
                                    backoff_ms=backoff_ms, budget_ms=budget_ms, session_options=options,
                                    read_your_writes=read_your_writes, stick_ms=stick_ms, policy=policy,
                                    client=client)  # fmt: skip
            res = pydriver.run(target, pm, clients=clients, duration_s=duration_s, route=route, app=app, rate=rate,
                               opts=opts, lag_of=(mon.lag_bytes.get if mon else None), should_stop=should_stop,
                               progress=progress, seed=seed)  # fmt: skip
    finally:
        timeline.stop()
        if mon is not None:
            mon.stop()
        terminated, pooled = sweep_sessions(target, app)
    samples = mon.frame() if mon is not None else None
    if samples is not None and not samples.empty:
        samples["t"] = samples["t"] - (res.t0 - t0)
    changes: dict[str, dict[str, int]] = {}
    if pm.writes:
        after = _table_changes(target)
        for table, (i, u, d) in after.items():
            b = before.get(table, (0, 0, 0))
            delta = {"ins": i - b[0], "upd": u - b[1], "del": d - b[2]}
            if any(delta.values()):
                changes[table] = delta
    done = res.transactions[res.transactions["error_class"].isna()]
    wrote = bool(changes) or bool(done["shape"].isin({r.name for r in pm.write_requests}).any())
    notes += res.notes
    if pooled:
        notes.append(f"closed the pooler's {pooled} idle server connection(s) after the run (the next run starts "
                     "from an empty pool)")  # fmt: skip
    if terminated - pooled:
        notes.append(f"{terminated - pooled} session(s) of the run were still open after it and were terminated")
    if wrote:
        notes.append("this run wrote to the dataset: it is no longer the pristine one (workbook reset puts it back)")
        notes += _mark_written(target, f"load run {m.name!r}")
    settings = {**res.settings, "app": app, "params_per_shape": params_per_shape, "hot_share": hot_share, "seed": seed,
                "statement_timeout_ms": statement_timeout_ms, "session_settings": dict(session_settings or {})}  # fmt: skip
    if driver == "pgbench" and res.summaries:
        settings["pgbench_summary"] = res.summaries
    return LoadRun(
        mix=pm.name, driver=driver, route=route, clients=clients, duration_s=float(duration_s), elapsed_s=res.elapsed_s,
        transactions=res.transactions, samples=samples, rate=rate, started_at=res.t0, wrote=wrote,
        dataset_pristine=pristine, dataset_changes=changes, cancelled=res.cancelled,
        events=sorted([(t - (res.t0 - t0), label) for t, label in timeline.events] + res.events),
        settings=settings, notes=notes,
    )  # fmt: skip


@dataclass
class Sweep:
    """Load runs at growing concurrency and the USL fitted to them."""

    runs: list[LoadRun]
    usl: USL | None
    holdout_error: float | None
    notes: list[str] = field(default_factory=list)

    def points(self) -> pd.DataFrame:
        """Per client count: measured TPS and percentiles, the USL's TPS, errors."""
        import pandas as pd

        rows = []
        for r in self.runs:
            d = r.as_dict()
            rows.append({"clients": r.clients, "tps": r.tps, "p50_ms": d["p50_ms"], "p95_ms": d["p95_ms"],
                         "p99_ms": d["p99_ms"], "errors": sum(d["errors"].values()),
                         "usl_tps": float(self.usl.throughput(r.clients)) if self.usl else None})  # fmt: skip
        return pd.DataFrame(rows)

    def users_table(self, users: Sequence[int] | None = None) -> pd.DataFrame:
        """Users → p95: measured where a run was made; for other counts the USL's throughput and the
        mean latency Little's law gives a closed loop (N / X(N)); p95 is measured only."""
        import pandas as pd

        measured = {r.clients: r for r in self.runs}
        ns = sorted(set(users or []) | set(measured))
        rows = []
        for n in ns:
            r = measured.get(n)
            x = float(self.usl.throughput(n)) if self.usl else None
            rows.append({"users": n, "tps_measured": r.tps if r else None,
                         "p95_ms_measured": r.latency()["p95_ms"] if r else None,
                         "tps_usl": x, "mean_ms_usl": (n / x * 1000) if x else None})  # fmt: skip
        return pd.DataFrame(rows)

    def save(self, store: Any) -> str:
        """Store every run of the sweep (with the fit) in one transaction; returns the sweep's id."""
        sweep_id = uuid.uuid4().hex[:12]
        usl = self.as_dict()["usl"]
        store.append_load_runs([{**r.record(), "sweep_id": sweep_id, "usl": usl} for r in self.runs])
        return sweep_id

    def as_dict(self) -> dict[str, Any]:
        """The last run's summary plus ``usl`` and every point (what ``workbook bench --sweep`` prints)."""
        last = self.runs[-1].as_dict() if self.runs else {}
        usl = None
        if self.usl is not None:
            usl = {"sigma": round(self.usl.sigma, 6), "kappa": round(self.usl.kappa, 8),
                   "lambda": round(self.usl.lam, 1), "peak_clients": _finite(self.usl.peak_clients, 1),
                   "peak_tps": _finite(self.usl.peak_tps, 1),
                   "holdout_error": None if self.holdout_error is None else round(self.holdout_error, 4)}  # fmt: skip
        return {**last, "usl": usl, "points": [{"clients": r.clients, **r.as_dict()} for r in self.runs]}


def _finite(x: float, digits: int) -> float | None:
    return None if x != x or x in (float("inf"), float("-inf")) else round(x, digits)


def sweep(
    target: Target,
    mix: str | Mix,
    clients: Sequence[int] = (1, 2, 4, 8),
    *,
    duration_s: float = 5.0,
    should_stop: Callable[[], bool] | None = None,
    on_run: Callable[[int, LoadRun], None] | None = None,
    **kwargs: Any,
) -> Sweep:
    """One closed-loop :func:`run_load` per client count (parameters sampled once), then the USL.

    The fit uses every point; ``holdout_error`` is the relative error of a fit without the largest
    client count, predicting it (None with fewer than 4 counts).
    """
    counts = list(clients)
    if not counts or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in counts):
        raise WorkbookError(f"sweep clients must be positive whole numbers, e.g. [1, 2, 4, 8], got {clients!r}")
    if kwargs.get("rate"):
        raise WorkbookError("a sweep measures a closed loop (throughput at each concurrency): leave rate=None")
    m = check_inputs(target, mix, clients=max(counts), duration_s=duration_s, rate=None,
                     route=kwargs.get("route", "primary"), driver=kwargs.get("driver", "pgbench"))  # fmt: skip
    pm = kwargs.pop("prepared", None) or prepare(target, m, pool_size=kwargs.pop("params_per_shape", 16),
                                                 hot_share=kwargs.pop("hot_share", 0.8), seed=kwargs.get("seed", 0))  # fmt: skip
    runs: list[LoadRun] = []
    for n in sorted(counts):
        if should_stop is not None and should_stop():
            break
        run = run_load(target, m, clients=n, duration_s=duration_s, prepared=pm, should_stop=should_stop, **kwargs)
        runs.append(run)
        if on_run is not None:
            on_run(n, run)
        if run.cancelled:
            break
    notes = []
    model, err = None, None
    good = [r for r in runs if not r.cancelled and r.tps > 0]
    if len({r.clients for r in good}) >= 3:
        model, err = fit_with_holdout([r.clients for r in good], [r.tps for r in good])
    else:
        notes.append("the USL needs 3 or more client counts: not fitted")
    return Sweep(runs, model, err, notes)
