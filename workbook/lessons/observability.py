"""Observability and economic circuit breakers: the server already counts what every statement
costs, and limits set in the database (timeouts per role, budgets in the write's transaction,
retries with backoff behind a breaker) keep one bad query or one retry loop from taking the app down.

Seed problems: "we have no visibility into latency, locks and errors" (``pg_stat_statements`` is
preloaded and never read) and a retry storm that burned $20,000 in 48 hours. The steps:

1. **What the server saw** — a known read workload, then ``pg_stat_statements`` top statements by
   calls and by total time, each mapped back to its query shape; two lesson indexes exist during it
   (one the workload uses, one it never does, which also overlaps the first).
2. **Health** — unused and overlapping indexes, cache hit ratio, ``pg_stat_io`` (16+), dead
   tuples and autovacuum lag; the lesson's indexes are dropped after it.
3. **Advice for the workload** — ``advise_from_stats``: the top statements (with ``$n``) advised
   together, each candidate verified with a what-if index.
3b. **Slow statements' plans** — the same workload again, now without the lesson's indexes, with
   ``auto_explain`` logging the plan of every statement slower than :data:`SLOW_MS` (``log_analyze``,
   timing off, buffers); the plans are read back from the server log, mapped to their shapes and
   stored (``slow_plans`` in the results store); then what auto_explain's instrumentation costs,
   interleaved, on a point lookup and an aggregate (:func:`workbook.experiment.slow_plans.overhead`).
   It runs after the advice, which reads ``pg_stat_statements``: its statements would count there.
4. **Locks, live** — a session holds a row lock, two more queue behind it; the blocking tree
   (``pg_blocking_pids``) and wait events sampled over time; each waiter's ``lock_timeout`` ends its
   wait, measured.
5. **A runaway query** — two analytics sessions run a heavy query beside the ``chat`` mix, first with
   no timeout, then with per-role ``statement_timeout`` (roles ``wb_lesson_app`` and
   ``wb_lesson_analytics``, created here and dropped in the last step); then
   ``idle_in_transaction_session_timeout`` and ``transaction_timeout`` (17+) end sessions, measured.
6. **Token budgets** — per-org budgets enforced in the same statement (one transaction) as the usage
   write, raced by four clients: over-budget requests refused, none overspent; the overhead as a verdict.
7. **A retry storm** — clients of an expensive endpoint that times out under load retry at once,
   with exponential backoff and full jitter, or behind a circuit breaker: attempts per user request
   and session seconds burned, in dollars at :data:`PRICE_PER_VCPU_HOUR`.
8. **Put back** — roles, indexes and the scratch schema dropped; the dataset reset (the chat mix writes).

Figures: ``top_statements`` (count of statements listed), ``unused_indexes`` (list of names),
``cache_hit_ratio``, ``runaway`` {``chat_p95_ms_without``, ``chat_p95_ms_with``,
``errors_without``, ``errors_with``}, ``budget_refused``, ``retry_amplification`` {``immediate``,
``backoff_jitter``, ``circuit_breaker``}, ``slow_plans`` (count of workload statements whose plan
auto_explain captured; None when it could not run on this target).
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import WorkbookError
from ._lesson import Lesson, Step

if TYPE_CHECKING:
    import psycopg

    from ..cluster.target import Target
    from ..lab import Lab

WHAT = "the observability lesson (chat mix beside a runaway query)"
APP_ROLE, ANALYTICS_ROLE = "wb_lesson_app", "wb_lesson_analytics"
ROLES = (APP_ROLE, ANALYTICS_ROLE)
SCRATCH = "wb_lesson_budgets"
INDEX_PREFIX = "wb_lesson_obs_"
#: the lesson's indexes during the workload: (name, table, keys)
LESSON_INDEXES = (
    (INDEX_PREFIX + "messages_conversation_created", "messages", ("conversation_id", "created_at DESC")),
    (INDEX_PREFIX + "messages_conversation", "messages", ("conversation_id",)),
    (INDEX_PREFIX + "usage_events_model", "usage_events", ("model",)),
)
#: the read workload whose statements the server counts
WORKLOAD = {"conversation_latest_messages": 6, "api_key_lookup": 3, "usage_per_org_per_day": 1}
WORKLOAD_SECONDS = 2.0
#: auto_explain's threshold in the slow-plans step is half what an open of a conversation without its
#: index (a sequential scan of messages) measures here, between these bounds: at scale 0.05 that scan
#: takes ~2.5 ms on a quiet machine and 30-70 ms on a busy one, an API-key lookup ~0.06 ms
SLOW_MS, SLOW_MIN_MS = 10.0, 1.0  # whole milliseconds: what auto_explain.log_min_duration counts
SLOW_SECONDS = 1.5
SLOW_RATE = 100.0  # requests per second in the slow-plans step: ~90 plans to parse and store, not thousands
LOAD_SECONDS = 2.5
APP_TIMEOUT_MS, ANALYTICS_TIMEOUT_MS = 500, 250
RUNAWAY_SQL = (
    "SELECT m.role, count(*), sum(length(m.content) * g) FROM ai_app.messages m, generate_series(1, 400) g GROUP BY 1"
)
#: what a vCPU-hour costs (on-demand general-purpose cloud VMs are about $0.04–0.05 per vCPU-hour)
PRICE_PER_VCPU_HOUR = 0.05
STORM_CLIENTS = 8
STORM_SECONDS = 2.0
MAX_ATTEMPTS = 5


# ---- shared helpers ---------------------------------------------------------------------------
def _drop_leftovers(conn: psycopg.Connection[Any]) -> None:
    """What an interrupted run of this lesson may have left: its indexes, scratch schema and roles."""
    for (name,) in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'ai_app' AND indexname LIKE %s", (INDEX_PREFIX + "%",)
    ).fetchall():
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier("ai_app", name)))
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCRATCH)))
    for role in ROLES:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            _wait(lambda r=role: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE usename = %s", (r,)).fetchone())
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _wait(cond: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise WorkbookError("a lesson session did not end within 5 s")
        time.sleep(0.02)


def _error_class(exc: BaseException) -> str:
    return type(exc).__name__


# ---- 1. what the server saw ---------------------------------------------------------------------
def what_the_server_saw(lab: Lab) -> dict[str, Any]:
    """A known read workload with the lesson's indexes in place; pg_stat_statements emptied first."""
    from ..dataset import protect
    from ..experiment.workload import reset_statements, top_statements
    from ..traffic import Mix, run_load

    target = lab.target
    target.require_writes("the observability lesson (it creates indexes and roles, and runs the chat mix)")
    if not protect(target):
        raise WorkbookError(
            "the dataset was written to since it was loaded and has no pristine copy, so this lesson could not "
            "put it back afterwards; run `workbook load` (or lab.load(...)) first"
        )
    with target.connect() as conn:
        _drop_leftovers(conn)
        for name, table, keys in LESSON_INDEXES:
            conn.execute(sql.SQL("CREATE INDEX {} ON {} ({})").format(
                sql.Identifier(name), sql.Identifier("ai_app", table),
                sql.SQL(", ").join(sql.SQL(" ").join([sql.Identifier(k.split()[0]), *(sql.SQL(w) for w in k.split()[1:])])
                                   for k in keys)))  # fmt: skip
        conn.execute("ANALYZE ai_app.messages, ai_app.usage_events")
    reset_statements(target)
    run = run_load(target, Mix("observed", WORKLOAD), clients=2, duration_s=WORKLOAD_SECONDS, driver="pgbench",
                   protect_dataset=False, monitor=False)  # fmt: skip
    by_calls = top_statements(target, order="calls", limit=10)
    return {
        "load": run,
        "by_calls": by_calls,
        "by_total_time": top_statements(target, order="total", limit=10),
        "hidden_statements": by_calls.attrs.get("hidden_note"),  # a role without pg_read_all_stats
    }


def _index_scans(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in conn.execute(
        "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE schemaname = 'ai_app'").fetchall()}  # fmt: skip


# ---- 2. health ----------------------------------------------------------------------------------
def health_check(lab: Lab) -> dict[str, Any]:
    """Health after the workload; the lesson's indexes are dropped once read."""
    from ..experiment.health import health

    target = lab.target
    out = health(target, schemas=("ai_app",))
    # the lesson's indexes were created right before the workload: every scan they count is the workload's
    with target.connect() as conn:
        scans = _index_scans(conn)
    lesson = {name for name, _, _ in LESSON_INDEXES}
    out["unused_by_workload"] = sorted(n for n in lesson if scans.get(n, 0) == 0)
    out["index_scans"] = {n: scans.get(n, 0) for n in sorted(lesson)}
    with target.connect() as conn:
        for name in lesson:
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier("ai_app", name)))
    return out


# ---- 3. advice ------------------------------------------------------------------------------------
def workload_advice(lab: Lab) -> Any:
    """The top three statements by total time (``$n`` and all), advised together."""
    from ..experiment.workload import advise_from_stats

    return advise_from_stats(lab.target, top=3, repeats=5)


# ---- 3b. slow statements' plans ---------------------------------------------------------------------
def slow_threshold_ms(lab: Lab) -> float:
    """Half the median of nine client-timed opens of a conversation without its index (prepared, as
    the workload runs them), in whole milliseconds (auto_explain's unit) between SLOW_MIN_MS and
    SLOW_MS: on this machine, at its speed and load, the scans are over it and the lookups far under it."""
    import statistics

    from ..experiment.wire import wire_runner

    shape = lab.shape("conversation_latest_messages")
    with lab.target.connect() as conn:
        run = wire_runner(conn, shape, shape.default_variant, [shape.sample(conn, "hot", 0)], rollback_writes=False)
        for _ in range(3):  # prepare, load the pages
            run()
        times = []
        for _ in range(9):
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1000)
    return float(round(min(SLOW_MS, max(SLOW_MIN_MS, statistics.median(times) / 2))))


def slow_plans(lab: Lab) -> dict[str, Any]:
    """The observed workload again, the lesson's indexes gone, with auto_explain on; what auto_explain costs."""
    from ..experiment.slow_plans import capture_slow_plans, overhead
    from ..traffic import Mix, run_load

    target = lab.target
    threshold = slow_threshold_ms(lab)
    with capture_slow_plans(target, threshold_ms=threshold, store=lab.store, source="lesson:observability") as cap:
        load = run_load(target, Mix("observed", WORKLOAD), clients=2, duration_s=SLOW_SECONDS, driver="pgbench",
                        rate=SLOW_RATE, protect_dataset=False, monitor=False)  # fmt: skip
    out: dict[str, Any] = {"capture": cap.summary()}
    if not cap.ran:
        return out
    plans = cap.frame()
    executed = load.transactions.groupby("shape").size()
    by_shape = (plans.fillna({"shape": "(not a catalog shape)"}).groupby("shape", as_index=False)
                .agg(statements=("duration_ms", "size"), max_ms=("duration_ms", "max"), plan=("plan_summary", "first")))
    # every shape the workload ran, captured or not: what share of its executions crossed the threshold
    by_shape = by_shape.merge(executed.rename("executed").reset_index(), on="shape", how="outer")
    by_shape["statements"] = by_shape["statements"].fillna(0).astype(int)
    by_shape["executed"] = by_shape["executed"].fillna(0).astype(int)
    by_shape["captured_share"] = (by_shape["statements"] / by_shape["executed"].where(by_shape["executed"] > 0)).round(4)
    out["by_shape"] = by_shape.sort_values("max_ms", ascending=False, na_position="last")[
        ["shape", "executed", "statements", "captured_share", "max_ms", "plan"]]
    slowest = cap.slowest()
    if slowest is not None:
        out["slowest plan"] = slowest.plan
    with target.connect() as conn:
        key = conn.execute("SELECT min(id) FROM ai_app.api_keys").fetchone()[0]  # type: ignore[index]
    out["overhead"] = overhead(target, {
        "api-key lookup (primary key)": f"SELECT id, org_id, revoked_at FROM ai_app.api_keys WHERE id = {int(key or 0)}",
        "usage per model (scan + aggregate)": "SELECT model, count(*), sum(prompt_tokens) FROM ai_app.usage_events GROUP BY 1",
    })  # fmt: skip
    return out


# ---- 4. locks -------------------------------------------------------------------------------------
def locks_live(lab: Lab, *, waits_ms: tuple[int, int] = (500, 1000)) -> dict[str, Any]:
    """One session holds a row lock; two wait with their own lock_timeout; the tree sampled meanwhile."""
    import pandas as pd
    import psycopg

    target = lab.target
    with target.connect(application_name="wb-lesson-holder") as holder:
        org = holder.execute("SELECT id FROM ai_app.organisations ORDER BY id LIMIT 1").fetchone()[0]  # type: ignore[index]
        holder_pid = holder.info.backend_pid
        holder.execute("BEGIN")
        holder.execute("SELECT id FROM ai_app.organisations WHERE id = %s FOR UPDATE", (org,))
        results: dict[str, dict[str, Any]] = {}

        def waiter(label: str, timeout_ms: int, delay_s: float) -> None:
            time.sleep(delay_s)
            with target.connect(application_name=f"wb-lesson-{label}") as c:
                results[label] = {"pid": c.info.backend_pid, "lock_timeout_ms": timeout_ms}
                c.execute("BEGIN")
                c.execute("SELECT set_config('lock_timeout', %s, true)", (f"{timeout_ms}ms",))
                t0 = time.perf_counter()
                try:
                    c.execute("SELECT id FROM ai_app.organisations WHERE id = %s FOR UPDATE", (org,))
                    results[label]["outcome"] = "locked"
                except psycopg.Error as exc:
                    results[label]["outcome"] = _error_class(exc)
                results[label]["waited_ms"] = round((time.perf_counter() - t0) * 1000, 1)
                c.rollback()

        threads = [threading.Thread(target=waiter, args=("waiter_1", waits_ms[0], 0.0)),
                   threading.Thread(target=waiter, args=("waiter_2", waits_ms[1], 0.1))]  # fmt: skip
        for th in threads:
            th.start()
        samples = []
        t0 = time.perf_counter()
        with target.connect(application_name="wb-lesson-observer") as obs:
            while any(th.is_alive() for th in threads):
                for pid, app, state, wtype, wevent, blockers in obs.execute(
                    "SELECT pid, application_name, state, wait_event_type, wait_event, pg_blocking_pids(pid)"
                    " FROM pg_stat_activity WHERE application_name LIKE 'wb-lesson-%%' AND application_name <> 'wb-lesson-observer'"
                ).fetchall():  # fmt: skip
                    samples.append({"t_ms": round((time.perf_counter() - t0) * 1000), "session": app.removeprefix("wb-lesson-"),
                                    "pid": pid, "state": state, "wait": f"{wtype}:{wevent}" if wtype else None,
                                    "blocked_by": list(blockers)})  # fmt: skip
                time.sleep(0.05)
        for th in threads:
            th.join()
        holder.execute("ROLLBACK")
    names = {holder_pid: "holder", **{r["pid"]: k for k, r in results.items()}}
    frame = pd.DataFrame(samples)
    if len(frame):
        frame["blocked_by"] = frame["blocked_by"].map(lambda pids: [names.get(p, str(p)) for p in pids])
    tree = _tree(frame)
    return {"waiters": results, "samples": frame, "tree": tree}


def _tree(frame: Any) -> list[str]:
    """The widest blocking tree seen, as indented lines: holder, then who waits on whom."""
    if not len(frame):
        return []
    best = frame.groupby("t_ms").apply(lambda g: int((g["blocked_by"].map(len) > 0).sum()), include_groups=False).idxmax()
    snap = frame[frame["t_ms"] == best]
    edges = {r["session"]: r["blocked_by"] for r in snap.to_dict("records")}
    lines: list[str] = []

    def show(node: str, depth: int) -> None:
        wait = snap.loc[snap["session"] == node, "wait"]
        lines.append("  " * depth + node + (f"  ({wait.iloc[0]})" if len(wait) and wait.iloc[0] else ""))
        for child, parents in edges.items():
            if node in parents and depth < 4:
                show(child, depth + 1)

    for root in [s for s, p in edges.items() if not p]:
        show(root, 0)
    return lines


# ---- 5. a runaway query and session timeouts ------------------------------------------------------------
def _role_target(target: Target, role: str, password: str) -> Target:
    from psycopg.conninfo import make_conninfo

    from ..cluster.target import Endpoint

    return dataclasses.replace(target, primary=Endpoint("primary", make_conninfo(target.primary.dsn, user=role,
                                                                              password=password)), replicas=(), pooler=None)  # fmt: skip


def _runaway_phase(app: Target, analytics: Target, *, stop_after_s: float) -> dict[str, Any]:
    """Two analytics sessions loop on the runaway query while the chat mix runs as the app role."""
    import psycopg

    from ..traffic import run_load

    attempts: list[dict[str, Any]] = []
    stop = threading.Event()
    conns: list[psycopg.Connection[Any]] = []

    def analyst() -> None:
        with analytics.connect(application_name="wb-lesson-analytics") as c:
            conns.append(c)
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    c.execute(RUNAWAY_SQL)
                    outcome = "finished"
                except psycopg.errors.QueryCanceled as exc:
                    outcome = "cut by statement_timeout" if "statement timeout" in str(exc) else "cancelled at the end"
                attempts.append({"ms": round((time.perf_counter() - t0) * 1000, 1), "outcome": outcome})
                if outcome != "finished" and not stop.is_set():
                    stop.wait(0.3)  # the dashboard shows an error, the user clicks again

    threads = [threading.Thread(target=analyst) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        time.sleep(0.2)
        run = run_load(app, "chat", clients=2, duration_s=stop_after_s, driver="pgbench", protect_dataset=False,
                       dataset_pristine=False, monitor=False)  # fmt: skip
    finally:
        stop.set()
        for c in list(conns):
            try:
                c.cancel_safe()
            except Exception:  # noqa: BLE001 - the session may be between queries
                pass
        for th in threads:
            th.join()
    return {"load": run, "runaway": attempts}


def runaway_query(lab: Lab) -> dict[str, Any]:
    """The chat mix beside a runaway analytics query: no timeout, then per-role statement_timeout."""
    from ..dataset import mark_written

    target = lab.target
    password = secrets.token_urlsafe(18)
    with target.connect() as conn:
        _drop_leftovers(conn)
        owner = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
        for role in ROLES:  # members of the dataset's owner: its privileges, their own settings
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(role), sql.Literal(password), sql.Identifier(owner)))  # fmt: skip
    mark_written(target, WHAT)
    app, analytics = _role_target(target, APP_ROLE, password), _role_target(target, ANALYTICS_ROLE, password)
    without = _runaway_phase(app, analytics, stop_after_s=LOAD_SECONDS)
    with target.connect() as conn:  # per-role settings apply to the roles' next sessions
        conn.execute(sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
            sql.Identifier(APP_ROLE), sql.Literal(f"{APP_TIMEOUT_MS}ms")))  # fmt: skip
        conn.execute(sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
            sql.Identifier(ANALYTICS_ROLE), sql.Literal(f"{ANALYTICS_TIMEOUT_MS}ms")))  # fmt: skip
    with_timeout = _runaway_phase(app, analytics, stop_after_s=LOAD_SECONDS)
    sessions = session_timeouts(target)
    return {"without": without, "with": with_timeout, "timeouts_ms": {"app": APP_TIMEOUT_MS, "analytics": ANALYTICS_TIMEOUT_MS},
            "sessions": sessions}  # fmt: skip


def session_timeouts(target: Target, *, timeout_ms: int = 300) -> dict[str, Any]:
    """idle_in_transaction_session_timeout and transaction_timeout (17+) each end a session, measured."""
    import psycopg

    out: dict[str, Any] = {}
    with target.connect(application_name="wb-lesson-idle") as c:
        c.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)", (f"{timeout_ms}ms",))
        c.execute("BEGIN")
        c.execute("SELECT 1")
        t0 = time.perf_counter()
        time.sleep(timeout_ms / 1000 * 2)  # the app forgot its transaction
        try:
            c.execute("SELECT 1")
            out["idle_in_transaction"] = {"timeout_ms": timeout_ms, "outcome": "still open"}
        except psycopg.Error as exc:
            out["idle_in_transaction"] = {"timeout_ms": timeout_ms, "outcome": _error_class(exc),
                                          "message": str(exc).splitlines()[0], "idle_ms": round((time.perf_counter() - t0) * 1000)}  # fmt: skip
    with target.connect(application_name="wb-lesson-txn") as c:
        if c.info.server_version < 170000:
            out["transaction_timeout"] = {"skipped": "transaction_timeout needs PostgreSQL 17 or newer"}
            return out
        c.execute("SELECT set_config('transaction_timeout', %s, false)", (f"{timeout_ms}ms",))
        c.execute("BEGIN")
        t0 = time.perf_counter()
        statements = 0
        try:
            while time.perf_counter() - t0 < 5:  # busy, never idle: only transaction_timeout stops it
                c.execute("SELECT pg_sleep(0.05)")
                statements += 1
            outcome, message = "still open", ""
        except psycopg.Error as exc:
            outcome, message = _error_class(exc), str(exc).splitlines()[0]
        out["transaction_timeout"] = {"timeout_ms": timeout_ms, "outcome": outcome, "message": message,
                                      "ended_after_ms": round((time.perf_counter() - t0) * 1000), "statements": statements}  # fmt: skip
    return out


# ---- 6. token budgets -----------------------------------------------------------------------------
BUDGET_ORGS, BUDGET_TOKENS, REQUEST_TOKENS = 5, 5_000, 100
GUARDED = (
    "WITH spent AS (UPDATE {s}.budgets SET used = used + %(t)s WHERE org_id = %(o)s AND used + %(t)s <= token_limit"
    " RETURNING org_id) INSERT INTO {s}.usage (org_id, tokens) SELECT org_id, %(t)s FROM spent"
)
UNGUARDED = "INSERT INTO {s}.usage (org_id, tokens) VALUES (%(o)s, %(t)s)"


def token_budgets(lab: Lab, *, clients: int = 4, requests: int = 150) -> dict[str, Any]:
    """Four clients race to spend five orgs' budgets; the check and the usage write are one statement."""
    from ..experiment.pinning import same_cpu
    from ..experiment.timing import time_interleaved, verdict
    from ..experiment.wire import statement_runner

    target = lab.target
    s = sql.Identifier(SCRATCH)
    guarded, unguarded = (sql.SQL(q).format(s=s) for q in (GUARDED, UNGUARDED))
    with target.connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(s))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(s))
        conn.execute(sql.SQL("CREATE TABLE {}.budgets (org_id bigint PRIMARY KEY, token_limit bigint NOT NULL,"
                             " used bigint NOT NULL DEFAULT 0 CHECK (used <= token_limit))").format(s))  # fmt: skip
        conn.execute(sql.SQL("CREATE TABLE {}.usage (id bigserial PRIMARY KEY, org_id bigint NOT NULL, tokens int NOT NULL,"
                             " at timestamptz NOT NULL DEFAULT now())").format(s))  # fmt: skip
        conn.execute(sql.SQL("INSERT INTO {}.budgets (org_id, token_limit) SELECT g, %s FROM generate_series(1, %s) g"
                             " UNION ALL SELECT 0, 1e15").format(s), (BUDGET_TOKENS, BUDGET_ORGS))  # fmt: skip
    counts = {"accepted": 0, "refused": 0}
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = random.Random(k)
        with target.connect(application_name="wb-lesson-budget") as c:
            for _ in range(requests):
                cur = c.execute(guarded, {"o": rng.randint(1, BUDGET_ORGS), "t": REQUEST_TOKENS})
                with lock:
                    counts["accepted" if cur.rowcount == 1 else "refused"] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with target.connect() as conn:
        rows = conn.execute(sql.SQL(
            "SELECT b.org_id, b.token_limit, b.used, coalesce(sum(u.tokens), 0) FROM {}.budgets b LEFT JOIN {}.usage u"
            " USING (org_id) WHERE b.org_id > 0 GROUP BY 1, 2, 3 ORDER BY 1").format(s, s)).fetchall()  # fmt: skip
        with target.connect() as base, target.connect() as treat, same_cpu([base, treat]):  # the overhead: one org
            params = {"o": 0, "t": 1}  # with room to spare
            a, b = time_interleaved([statement_runner(base, unguarded.as_string(base), params),
                                     statement_runner(treat, guarded.as_string(treat), params)], repeats=20, warmup=5)  # fmt: skip
        v = verdict(a, b)
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s))
    orgs = [{"org_id": r[0], "limit": int(r[1]), "used": int(r[2]), "usage_rows_tokens": int(r[3])} for r in rows]
    return {
        "requests": clients * requests, **counts, "orgs": orgs,
        "overspent_orgs": sum(o["used"] > o["limit"] for o in orgs),
        "ledger_matches": all(o["used"] == o["usage_rows_tokens"] for o in orgs),
        "overhead": {"verdict": v.text, "kind": v.kind, "ratio": round(v.ratio, 3),
                     "unguarded_ms": round(float(sorted(a)[len(a) // 2]), 4),
                     "guarded_ms": round(float(sorted(b)[len(b) // 2]), 4)},
    }  # fmt: skip


# ---- 7. a retry storm -------------------------------------------------------------------------------
class Breaker:
    """A circuit breaker: closed until ``threshold`` failures in a row, then open (every request fails
    fast) for ``open_s``, then half-open: one probe goes through; its success closes the breaker,
    its failure opens it again."""

    def __init__(self, threshold: int = 3, open_s: float = 0.25) -> None:
        self.threshold, self.open_s = threshold, open_s
        self.failures, self.open_until, self.probing = 0, 0.0, False
        self.lock = threading.Lock()
        self.opened = 0

    def allow(self) -> bool:
        with self.lock:
            if self.open_until == 0.0:
                return True  # closed
            if time.monotonic() < self.open_until or self.probing:
                return False  # open, or half-open with its probe in flight
            self.probing = True
            return True

    def record(self, ok: bool) -> None:
        with self.lock:
            if ok:
                self.failures, self.open_until, self.probing = 0, 0.0, False
                return
            self.failures += 1
            if self.probing or self.failures >= self.threshold:
                self.open_until, self.failures, self.probing = time.monotonic() + self.open_s, 0, False
                self.opened += 1


def _calibrate(conn: psycopg.Connection[Any], target_ms: float = 25.0) -> tuple[int, float]:
    """A generate_series length whose count(*) takes about ``target_ms`` alone."""
    n = 200_000
    for _ in range(3):
        conn.execute("SELECT count(*) FROM generate_series(1, %s)", (n,))
        t0 = time.perf_counter()
        conn.execute("SELECT count(*) FROM generate_series(1, %s)", (n,))
        ms = (time.perf_counter() - t0) * 1000
        n = max(10_000, int(n * target_ms / max(ms, 0.1)))
    t0 = time.perf_counter()
    conn.execute("SELECT count(*) FROM generate_series(1, %s)", (n,))
    return n, (time.perf_counter() - t0) * 1000


def _storm(target: Target, policy: str, n: int, timeout_ms: int, seconds: float) -> dict[str, Any]:
    import psycopg

    stats = {"requests": 0, "succeeded": 0, "failed": 0, "attempts": 0, "fast_failed": 0, "session_s": 0.0}
    lock = threading.Lock()
    breaker = Breaker()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        rng = random.Random(k)
        with target.connect(application_name="wb-lesson-storm") as c:
            c.execute("SELECT set_config('statement_timeout', %s, false)", (f"{timeout_ms}ms",))
            while time.monotonic() < deadline:
                ok, attempts, spent, fast = False, 0, 0.0, 0
                for attempt in range(MAX_ATTEMPTS):
                    if policy == "circuit_breaker" and not breaker.allow():
                        fast = 1
                        break
                    attempts += 1
                    t0 = time.perf_counter()
                    try:
                        c.execute("SELECT count(*) FROM generate_series(1, %s)", (n,))
                        ok = True
                    except psycopg.errors.QueryCanceled:
                        ok = False
                    spent += time.perf_counter() - t0
                    if policy == "circuit_breaker":
                        breaker.record(ok)
                    if ok or time.monotonic() >= deadline:
                        break
                    if policy != "immediate":  # exponential backoff with full jitter
                        time.sleep(rng.uniform(0, min(0.64, 0.04 * 2**attempt)))
                with lock:
                    stats["requests"] += 1
                    stats["succeeded" if ok else "failed"] += 1
                    stats["attempts"] += attempts
                    stats["fast_failed"] += fast
                    stats["session_s"] += spent
                time.sleep(0.02)  # the next user request

    threads = [threading.Thread(target=client, args=(k,)) for k in range(STORM_CLIENTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    req = max(stats["requests"], 1)
    dollars = stats["session_s"] / 3600 * PRICE_PER_VCPU_HOUR
    return {
        "policy": policy, **stats, "session_s": round(stats["session_s"], 3),
        "amplification": round(stats["attempts"] / req, 3),
        "success_rate": round(stats["succeeded"] / req, 3),
        "usd_per_million_requests": round(dollars / req * 1e6, 2),
        "breaker_opened": breaker.opened if policy == "circuit_breaker" else None,
    }


def retry_storm(lab: Lab, *, seconds: float = STORM_SECONDS) -> dict[str, Any]:
    """Eight clients of an endpoint that times out under load: three retry policies, the same load each."""
    import pandas as pd

    target = lab.target
    with target.connect() as conn:
        n, alone_ms = _calibrate(conn)
    timeout_ms = max(15, int(alone_ms * 1.5))  # alone it fits; with 8 clients on 2 cores it does not
    runs = [_storm(target, p, n, timeout_ms, seconds) for p in ("immediate", "backoff_jitter", "circuit_breaker")]
    return {"alone_ms": round(alone_ms, 2), "timeout_ms": timeout_ms, "clients": STORM_CLIENTS,
            "price_per_vcpu_hour": PRICE_PER_VCPU_HOUR, "runs": pd.DataFrame(runs)}  # fmt: skip


# ---- 8. put back ------------------------------------------------------------------------------------
def put_back(lab: Lab) -> dict[str, Any]:
    """Roles, lesson indexes and scratch schema dropped; the dataset reset from its pristine copy."""
    from ..dataset import is_pristine, reset

    target = lab.target
    with target.connect() as conn:
        _drop_leftovers(conn)
    if is_pristine(target):
        return {"reset_seconds": 0.0, "pristine": True}
    result = reset(target)
    return {"reset_seconds": result.seconds, "pristine": bool(is_pristine(target))}


# ---- figures ----------------------------------------------------------------------------------------
def _p95(run: Any) -> float | None:
    p = run.latency().get("p95_ms")
    return None if p is None else round(float(p), 3)


def _errors(run: Any) -> int:
    return int(sum(run.errors().values()))


def figures(outputs: dict[str, Any]) -> dict[str, Any]:
    seen, health, rq = outputs["what_the_server_saw"], outputs["health_check"], outputs["runaway_query"]
    storm = outputs["retry_storm"]["runs"].set_index("policy")
    return {
        "top_statements": int(len(seen["by_calls"])),
        "unused_indexes": list(health["unused_by_workload"]),
        "cache_hit_ratio": health["cache_hit_ratio"],
        "runaway": {
            "chat_p95_ms_without": _p95(rq["without"]["load"]), "chat_p95_ms_with": _p95(rq["with"]["load"]),
            "errors_without": _errors(rq["without"]["load"]), "errors_with": _errors(rq["with"]["load"]),
        },
        "budget_refused": int(outputs["token_budgets"]["refused"]),
        "retry_amplification": {p: float(storm.loc[p, "amplification"]) for p in ("immediate", "backoff_jitter", "circuit_breaker")},
        "slow_plans": outputs["slow_plans"]["capture"]["workload_statements"] if outputs["slow_plans"]["capture"]["ran"] else None,
    }  # fmt: skip


LESSON = Lesson(
    name="observability",
    title="Observability and economic circuit breakers: pg_stat_statements, health, locks, timeouts, budgets, retries",
    claim="The server already counts what every statement costs; limits set in the database — per-role timeouts, "
          "budgets checked in the write's own transaction, retries with backoff behind a breaker — keep one runaway "
          "query or one retry loop from taking the app and the bill with it.",
    notebook="07_observability_and_circuit_breakers",
    steps=(
        Step("what_the_server_saw", "What the server saw",
             "pg_stat_statements after a known workload: top statements by calls and total time, mapped to shapes.",
             what_the_server_saw),
        Step("health_check", "Health",
             "Unused and overlapping indexes, cache hit ratio, pg_stat_io, dead tuples and autovacuum lag.", health_check),
        Step("workload_advice", "Advice for the workload",
             "The top statements, parameters and all, advised together and verified with what-if indexes.", workload_advice),
        Step("slow_plans", "Slow statements' plans (auto_explain)",
             "The workload again without the lesson's indexes: auto_explain logs the plan of every statement slower than "
             "half an unindexed open of a conversation (measured first, between "
             f"{SLOW_MIN_MS:g} and {SLOW_MS:g} ms); the plans read back from the server log, mapped to their shapes, "
             "stored; what it costs.",
             slow_plans),
        Step("locks_live", "Locks, live",
             "One session holds a row lock; two queue behind it until their lock_timeout ends the wait.", locks_live),
        Step("runaway_query", "A runaway query and session timeouts",
             "The chat mix beside a runaway analytics query, without and with per-role statement_timeout; "
             "idle_in_transaction_session_timeout and transaction_timeout end sessions.", runaway_query),
        Step("token_budgets", "Token budgets in the write's transaction",
             "Over-budget requests refused by the same statement that records usage; what the check costs.", token_budgets),
        Step("retry_storm", "A retry storm",
             "Immediate retries vs exponential backoff with jitter vs a circuit breaker: attempts per request and dollars.",
             retry_storm),
        Step("put_back", "Put everything back",
             "Roles, indexes and scratch schema dropped; the dataset reset from its pristine copy.", put_back),
    ),
    figures=figures,
    references=(
        ("pg_stat_statements", "https://www.postgresql.org/docs/current/pgstatstatements.html"),
        ("auto_explain", "https://www.postgresql.org/docs/current/auto-explain.html"),
        ("The Cumulative Statistics System", "https://www.postgresql.org/docs/current/monitoring-stats.html"),
        ("Viewing Locks", "https://www.postgresql.org/docs/current/view-pg-locks.html"),
        ("Client Connection Defaults (statement_timeout, lock_timeout ...)",
         "https://www.postgresql.org/docs/current/runtime-config-client.html"),
        ("ALTER ROLE", "https://www.postgresql.org/docs/current/sql-alterrole.html"),
        ("Routine Vacuuming", "https://www.postgresql.org/docs/current/routine-vacuuming.html"),
    ),
)  # fmt: skip
