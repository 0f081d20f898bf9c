"""Transactions and integrity: constraints reject the garbage an app writes by mistake, and only
an atomic update, a row lock or a serializable retry keeps a counter right under concurrency —
while a hot row queues its writers, an open transaction holds back cleanup, and an ORM's lazy
loading sends one statement per row.

Seed problem: a "vibe-coded" AI app meets concurrent users. Its generated code writes orphan
messages and negative token counts, spends a tenant's token budget with read-modify-write,
double-submits a charge, updates one counter row on every request, leaves a report's
transaction open, and loads each conversation's messages lazily through SQLAlchemy.

Every step measures with real sessions (threads, each with its own connection, bounded in count
and time). Writes go to two scratch schemas beside ``ai_app`` (``shipped_fast``: the app's
tables without foreign keys, checks or uniques; ``tx_scratch``: the step's own tables), each
created and dropped by its step, or to ``ai_app`` itself after :func:`~workbook.dataset.protect`;
the last step puts the dataset back (:func:`~workbook.dataset.reset`).

Figures: ``garbage_rows_accepted`` (``without_constraints`` / ``with_constraints``) and what the
constraints cost per insert (``constraint_cost``: slow-down with its 95% CI);
``lost_updates_per_10k`` per strategy, ``serializable_retries_per_10k``, ``race`` (per strategy:
spends, lost, retries, TPS, p95); ``duplicates_with_idempotency_key`` (and
``duplicates_check_then_insert``); ``hot_row_tps`` and ``append_only_tps`` per client count, and
``hot_row_lock_wait_share``; ``mvcc`` (dead tuples not yet removable and heap fetches with the
transaction open and after it closed) and ``hot_update_share`` per fillfactor; ``orm_statements``
and ``orm_ms`` (``lazy`` / ``selectinload`` / ``joinedload``), ``bulk_insert_ms`` and
``bulk_insert_statements``; ``pristine_after``.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import WorkbookError
from ._lesson import Lesson, Step

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

    from ..cluster.target import Target
    from ..lab import Lab

SHIPPED_FAST = "shipped_fast"  # the app's tables without foreign keys, checks or uniques
SCRATCH = "tx_scratch"  # the steps' own tables
APP = "ai_app"
WHAT = "the transactions lesson"

STRATEGIES = ("read_modify_write", "atomic_update", "select_for_update", "serializable_retry")
RACE_CLIENTS, RACE_SPENDS, SPEND_TOKENS = 4, 25, 7
THINK_S = 0.002  # the app's work between reading the budget and writing it back (a model call is far longer)
HOT_CLIENTS = (1, 2, 4, 8)
HOT_SECONDS = 1.0
MVCC_ROWS = 20_000
ORM_CONVERSATIONS = 20
BOUNDED = "-c statement_timeout=30s -c lock_timeout=20s"  # a client session never waits unbounded
BULK_ROWS = 1_000


# ---- shared helpers ---------------------------------------------------------------------------
def _begin_writes(target: Target) -> None:
    """Take the pristine copy (once per load) before writing to the dataset, then note the write."""
    from ..dataset import mark_written, protect

    if not protect(target):
        raise WorkbookError(
            "the dataset was written to since it was loaded and has no pristine copy, so this lesson could not "
            "put it back afterwards; run `workbook load` (or lab.load(...)) first"
        )
    mark_written(target, WHAT)


@contextmanager
def _schema(target: Target, name: str) -> Iterator[None]:
    """A scratch schema, new for the block and dropped after it (also after an error)."""
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
    with target.connect() as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield
    finally:
        with target.connect() as conn:
            conn.execute(drop)


def _t(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


def _p95(xs: list[float]) -> float | None:
    import numpy as np

    return round(float(np.percentile(xs, 95)), 3) if xs else None


def _hot_org(target: Target, tier: str = "hot") -> int:
    from ..dataset.samplers import org

    with target.connect() as conn:
        return int(org(conn, tier, 0)["org_id"])


# ---- 1. constraints as the safety net ---------------------------------------------------------
COPIED = ("organisations", "users", "api_keys", "conversations", "messages", "usage_events")
BAD_WRITES: tuple[tuple[str, str], ...] = (
    ("orphan message", "a message for a conversation that does not exist"),
    ("negative token count", "a message with token_count = -120 (a subtraction gone wrong)"),
    ("invalid role", "a message whose role is 'bot'"),
    ("duplicate API key", "a second API key with an existing key_prefix"),
    ("duplicate e-mail", "a second user with an existing e-mail"),
    ("usage for a deleted org", "a usage event for an organisation that was just deleted"),
    ("negative cost", "a usage event costing -0.50 USD"),
    ("conversation ends before it starts", "last_activity_at before started_at"),
)  # fmt: skip


def _make_shipped_fast(conn: psycopg.Connection[Any]) -> None:
    """The app's tables as shipped fast: same columns, NOT NULLs and defaults, a primary key, nothing else."""
    for table in COPIED:
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING IDENTITY)").format(
            _t(SHIPPED_FAST, table), _t(APP, table)))  # fmt: skip
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(_t(SHIPPED_FAST, table)))
        # ids of its own, far from the copied rows' ids
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id RESTART WITH 1000000000").format(_t(SHIPPED_FAST, table)))


def _fixtures(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """An org, one of its users with a conversation, an API key of theirs; the ids the bad writes reuse."""
    row = conn.execute(
        "SELECT c.org_id, c.user_id, c.id, u.email, k.key_prefix FROM ai_app.conversations c"
        " JOIN ai_app.users u ON u.id = c.user_id JOIN ai_app.api_keys k ON k.org_id = c.org_id"
        " ORDER BY c.id LIMIT 1"
    ).fetchone()
    if row is None:
        raise WorkbookError("the dataset has no conversation with an API key in its org; run `workbook load`")
    missing = conn.execute("SELECT max(id) + 1000000 FROM ai_app.conversations").fetchone()[0]  # type: ignore[index]
    return {"org": row[0], "user": row[1], "conversation": row[2], "email": row[3], "key_prefix": row[4],
            "missing_conversation": missing}  # fmt: skip


def _copy_fixture_rows(conn: psycopg.Connection[Any], f: dict[str, Any]) -> None:
    """The rows the duplicates collide with, copied into the shipped-fast tables."""
    for table, where in (("organisations", f["org"]), ("users", f["user"]), ("conversations", f["conversation"])):
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE id = %s").format(_t(SHIPPED_FAST, table), _t(APP, table)),
                     (where,))  # fmt: skip
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} WHERE key_prefix = %s").format(
        _t(SHIPPED_FAST, "api_keys"), _t(APP, "api_keys")), (f["key_prefix"],))  # fmt: skip


def _bad_write(conn: psycopg.Connection[Any], schema: str, name: str, f: dict[str, Any]) -> int:
    """Send bad write ``name`` to ``schema``'s tables; the rows it wrote (an error propagates)."""
    msg = sql.SQL("INSERT INTO {} (conversation_id, org_id, user_id, role, content, token_count, created_at)"
                  " VALUES (%s, %s, %s, %s, %s, %s, now())").format(_t(schema, "messages"))  # fmt: skip
    usage = sql.SQL("INSERT INTO {} (org_id, user_id, model, prompt_tokens, completion_tokens, cost_usd, occurred_at)"
                    " VALUES (%s, %s, 'gpt-4o', 100, 20, %s, now())").format(_t(schema, "usage_events"))  # fmt: skip
    if name == "orphan message":
        cur = conn.execute(msg, (f["missing_conversation"], f["org"], f["user"], "user", "hello?", 5))
    elif name == "negative token count":
        cur = conn.execute(msg, (f["conversation"], f["org"], f["user"], "assistant", "...", -120))
    elif name == "invalid role":
        cur = conn.execute(msg, (f["conversation"], f["org"], None, "bot", "beep", 3))
    elif name == "duplicate API key":
        cur = conn.execute(sql.SQL("INSERT INTO {} (org_id, created_by, name, key_prefix, key_hash, created_at)"
                                   " VALUES (%s, %s, 'ci', %s, repeat('a', 64), now())").format(_t(schema, "api_keys")),
                           (f["org"], f["user"], f["key_prefix"]))  # fmt: skip
    elif name == "duplicate e-mail":
        cur = conn.execute(sql.SQL("INSERT INTO {} (org_id, email, display_name, role, created_at)"
                                   " VALUES (%s, %s, 'Twin', 'member', now())").format(_t(schema, "users")),
                           (f["org"], f["email"]))  # fmt: skip
    elif name == "usage for a deleted org":
        org = conn.execute(sql.SQL("INSERT INTO {} (name, slug, plan, created_at) VALUES ('Gone', %s, 'free', now())"
                                   " RETURNING id").format(_t(schema, "organisations")),
                           (f"gone-{time.time_ns()}",)).fetchone()[0]  # type: ignore[index]  # fmt: skip
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(_t(schema, "organisations")), (org,))
        cur = conn.execute(usage, (org, f["user"], 0.01))
    elif name == "negative cost":
        cur = conn.execute(usage, (f["org"], f["user"], -0.5))
    elif name == "conversation ends before it starts":
        cur = conn.execute(sql.SQL("INSERT INTO {} (org_id, user_id, title, status, started_at, last_activity_at,"
                                   " message_count) VALUES (%s, %s, 'Time travel', 'active', now(),"
                                   " now() - interval '1 day', 0)").format(_t(schema, "conversations")),
                           (f["org"], f["user"]))  # fmt: skip
    else:
        raise WorkbookError(f"no bad write {name!r}")
    return max(cur.rowcount, 0)


def _insert_cost(target: Target, f: dict[str, Any], *, rows: int = 40, repeats: int = 40) -> dict[str, Any]:
    """Valid messages inserted into the shipped-fast copy and into ai_app, interleaved, always rolled back."""
    from ..experiment import time_interleaved, verdict
    from ..experiment.pinning import same_cpu

    params = [(f["conversation"], f["org"], f["user"], "user", f"question {i}", 12) for i in range(rows)]

    def runner(conn: psycopg.Connection[Any], schema: str) -> Callable[[], None]:
        stmt = sql.SQL("INSERT INTO {} (conversation_id, org_id, user_id, role, content, token_count, created_at)"
                       " VALUES (%s, %s, %s, %s, %s, %s, now())").format(_t(schema, "messages"))  # fmt: skip

        def run() -> None:
            with conn.transaction(force_rollback=True), conn.cursor() as cur:
                for p in params:
                    cur.execute(stmt, p)

        return run

    with target.connect() as fast, target.connect() as safe, same_cpu([fast, safe]):
        without, with_ = time_interleaved([runner(fast, SHIPPED_FAST), runner(safe, APP)], repeats=repeats, warmup=3)
    v = verdict(without, with_)  # ratio = without / with: below 1 when the constraints cost time
    import numpy as np

    return {
        "rows_per_transaction": rows, "without_ms_per_insert": round(float(np.median(without)) / rows, 4),
        "with_ms_per_insert": round(float(np.median(with_)) / rows, 4), "slowdown": round(1 / v.ratio, 3),
        "ci_low": round(1 / v.ci_high, 3), "ci_high": round(1 / v.ci_low, 3), "verdict": v.kind, "text": v.text,
    }  # fmt: skip


def constraints(lab: Lab) -> dict[str, Any]:
    """The same stream of bad writes into the shipped-fast copy and into ai_app; what each accepted."""
    import pandas as pd
    import psycopg

    target = lab.target
    _begin_writes(target)
    with _schema(target, SHIPPED_FAST), target.connect() as conn:
        _make_shipped_fast(conn)
        f = _fixtures(conn)
        _copy_fixture_rows(conn, f)
        rows = []
        for name, what in BAD_WRITES:
            accepted = _bad_write(conn, SHIPPED_FAST, name, f)  # committed: it is garbage now
            try:
                with conn.transaction(force_rollback=True):  # nothing of it stays in ai_app, whatever happens
                    kept = _bad_write(conn, APP, name, f)
                outcome, error = ("accepted", "") if kept else ("rejected", "")
            except psycopg.errors.IntegrityError as exc:
                kept, outcome = 0, "rejected"
                error = f"{type(exc).__name__}: {(exc.diag.message_primary or '').strip()}"
            rows.append({"bad write": name, "what": what, "without_constraints": "accepted" if accepted else "rejected",
                         "garbage_rows_without": accepted, "with_constraints": outcome, "garbage_rows_with": kept,
                         "error": error})  # fmt: skip
        cost = _insert_cost(target, f)
    return {"writes": pd.DataFrame(rows), "cost": cost}


# ---- 2. races: N clients spending one org's token budget --------------------------------------
def _spend(conn: psycopg.Connection[Any], strategy: str, org: int, tokens: int, think: float, rng: random.Random) -> int:
    """One spend of ``tokens`` by ``strategy``; the serialization failures it retried."""
    import psycopg

    read = "SELECT tokens_this_month FROM ai_app.organisations WHERE id = %s"
    write = "UPDATE ai_app.organisations SET tokens_this_month = %s WHERE id = %s"
    if strategy == "read_modify_write":  # two autocommit statements: another client's write lands in between
        (v,) = conn.execute(read, (org,)).fetchone()  # type: ignore[misc]
        time.sleep(think)
        conn.execute(write, (v + tokens, org))
        return 0
    if strategy == "atomic_update":  # the database adds: no read, nothing to lose
        time.sleep(think)
        conn.execute("UPDATE ai_app.organisations SET tokens_this_month = tokens_this_month + %s WHERE id = %s", (tokens, org))
        return 0
    if strategy == "select_for_update":  # the row is locked from the read to the commit
        with conn.transaction():
            (v,) = conn.execute(read + " FOR UPDATE", (org,)).fetchone()  # type: ignore[misc]
            time.sleep(think)
            conn.execute(write, (v + tokens, org))
        return 0
    if strategy == "serializable_retry":  # the server refuses the second writer; the app retries
        retries = 0
        while True:
            try:
                with conn.transaction():
                    (v,) = conn.execute(read, (org,)).fetchone()  # type: ignore[misc]
                    time.sleep(think)
                    conn.execute(write, (v + tokens, org))
                return retries
            except psycopg.errors.SerializationFailure:
                retries += 1
                if retries > 200:
                    raise
                time.sleep(rng.uniform(0, think * min(retries, 4)))  # jittered backoff
    raise WorkbookError(f"no strategy {strategy!r}; the strategies: {', '.join(STRATEGIES)}")


def spend_race(
    target: Target, strategy: str, org: int, *, clients: int = RACE_CLIENTS, spends: int = RACE_SPENDS,
    tokens: int = SPEND_TOKENS, think: float = THINK_S, deadline_s: float = 20.0,
) -> dict[str, Any]:  # fmt: skip
    """``clients`` threads each spend ``tokens`` ``spends`` times; lost updates counted exactly.

    Expected: the counter grows by ``tokens`` per committed spend. Lost: committed spends minus the
    growth the counter shows.
    """
    import psycopg

    if strategy not in STRATEGIES:
        raise WorkbookError(f"no strategy {strategy!r}; the strategies: {', '.join(STRATEGIES)}")
    read = "SELECT tokens_this_month FROM ai_app.organisations WHERE id = %s"
    with target.connect() as conn:
        (start,) = conn.execute(read, (org,)).fetchone()  # type: ignore[misc]
    barrier = threading.Barrier(clients)
    lock = threading.Lock()
    done = {"spends": 0, "retries": 0}
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + deadline_s

    def client(k: int) -> None:
        rng = random.Random(k)
        mine: list[float] = []
        n = r = 0
        try:
            with target.connect(application_name="workbook-race", options=BOUNDED) as conn:
                if strategy == "serializable_retry":
                    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
                barrier.wait(timeout=10)
                for _ in range(spends):
                    if time.monotonic() > stop_at:
                        break
                    t0 = time.perf_counter()
                    r += _spend(conn, strategy, org, tokens, think, rng)
                    mine.append((time.perf_counter() - t0) * 1000)
                    n += 1
        except Exception as exc:  # noqa: BLE001 - reported below, never swallowed
            errors.append(f"{type(exc).__name__}: {exc}")
            barrier.abort()
        with lock:
            done["spends"] += n
            done["retries"] += r
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(deadline_s + 15)
    wall = time.perf_counter() - t0
    if errors:
        raise WorkbookError(f"the {strategy} race failed: {errors[0]}")
    with target.connect() as conn:
        (end,) = conn.execute(read, (org,)).fetchone()  # type: ignore[misc]
    applied = (end - start) // tokens
    lost = done["spends"] - applied
    return {
        "strategy": strategy, "clients": clients, "spends": done["spends"], "applied": int(applied),
        "lost_updates": int(lost), "lost_per_10k": round(lost * 10_000 / max(done["spends"], 1), 1),
        "retries": done["retries"], "retries_per_10k": round(done["retries"] * 10_000 / max(done["spends"], 1), 1),
        "tps": round(done["spends"] / wall, 1), "p95_ms": _p95(latencies),
    }  # fmt: skip


def double_submit(target: Target, *, requests: int = 30, think: float = THINK_S) -> pd.DataFrame:
    """Every request submitted twice at once (a double click, a client retry): check-then-insert in
    application code vs an idempotency key with a unique constraint."""
    import pandas as pd

    def one_round(table: sql.Identifier, keyed: bool) -> int:
        barrier = threading.Barrier(2)
        errors: list[str] = []

        def submit() -> None:
            try:
                with target.connect(application_name="workbook-double-submit", options=BOUNDED) as conn:
                    for i in range(requests):
                        key = f"req-{i}"
                        barrier.wait(timeout=10)
                        if keyed:  # the database decides: one row per key, the loser learns it was already done
                            conn.execute(sql.SQL("INSERT INTO {} (idempotency_key, tokens) VALUES (%s, %s)"
                                                 " ON CONFLICT (idempotency_key) DO NOTHING").format(table), (key, 42))  # fmt: skip
                        else:  # the app checks first, then inserts: both see "not there yet"
                            seen = conn.execute(sql.SQL("SELECT 1 FROM {} WHERE idempotency_key = %s").format(table),
                                                (key,)).fetchone()  # fmt: skip
                            if seen is None:
                                time.sleep(think)
                                conn.execute(sql.SQL("INSERT INTO {} (idempotency_key, tokens) VALUES (%s, %s)").format(table),
                                             (key, 42))  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{type(exc).__name__}: {exc}")
                barrier.abort()

        threads = [threading.Thread(target=submit, daemon=True) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        if errors:
            raise WorkbookError(f"double submit failed: {errors[0]}")
        with target.connect() as conn:
            (rows, keys) = conn.execute(sql.SQL("SELECT count(*), count(DISTINCT idempotency_key) FROM {}").format(table)).fetchone()  # type: ignore[misc]
        return int(rows - keys)

    out = []
    with _schema(target, SCRATCH):
        with target.connect() as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                                 " idempotency_key text NOT NULL, tokens integer NOT NULL)").format(_t(SCRATCH, "charges_naive")))  # fmt: skip
            conn.execute(sql.SQL("CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                                 " idempotency_key text NOT NULL UNIQUE, tokens integer NOT NULL)").format(_t(SCRATCH, "charges")))  # fmt: skip
        for label, table, keyed in (("check_then_insert", "charges_naive", False), ("idempotency_key", "charges", True)):
            out.append({"method": label, "requests": requests, "submits": 2 * requests,
                        "duplicates": one_round(_t(SCRATCH, table), keyed)})  # fmt: skip
    return pd.DataFrame(out)


def races(lab: Lab) -> dict[str, Any]:
    """Four clients spend one org's token budget with each strategy; then every request is submitted twice."""
    import pandas as pd

    target = lab.target
    _begin_writes(target)
    org = _hot_org(target, "cold")
    rows = [spend_race(target, s, org) for s in STRATEGIES]
    return {"strategies": pd.DataFrame(rows), "double_submit": double_submit(target)}


# ---- 3. hot rows ------------------------------------------------------------------------------
def _increment_statement(lab: Lab) -> str:
    from ..statement import check_statement

    return check_statement(lab.shape("increment_org_usage").variant().statements[0], what="increment_org_usage").text


def _drive(target: Target, work: Callable[[psycopg.Connection[Any]], None], clients: int, seconds: float,
           app: str) -> dict[str, Any]:  # fmt: skip
    """``clients`` threads running ``work`` (one transaction each call) for ``seconds``, with wait
    events sampled from pg_stat_activity every 10 ms."""
    barrier = threading.Barrier(clients + 1)
    stop = threading.Event()
    counts = [0] * clients
    errors: list[str] = []

    def client(k: int) -> None:
        try:
            with target.connect(application_name=app, options=BOUNDED) as conn:
                barrier.wait(timeout=10)
                while not stop.is_set():
                    work(conn)
                    counts[k] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for th in threads:
        th.start()
    waits: dict[str, int] = {}
    samples = 0
    wall = 0.0
    try:
        with target.connect() as mon:
            barrier.wait(timeout=15)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds and not errors:
                for wtype, wevent, n in mon.execute(
                    "SELECT coalesce(wait_event_type, 'CPU'), coalesce(wait_event, 'running'), count(*)"
                    " FROM pg_stat_activity WHERE application_name = %s AND state = 'active' GROUP BY 1, 2", (app,),
                ):  # fmt: skip
                    waits[f"{wtype}:{wevent}"] = waits.get(f"{wtype}:{wevent}", 0) + int(n)
                samples += 1
                time.sleep(0.01)
            wall = time.perf_counter() - t0
    except threading.BrokenBarrierError:
        pass  # a client failed before the start: its error is reported below
    finally:
        stop.set()  # the clients stop whatever happened here
        for th in threads:
            th.join(10)
    if errors:
        raise WorkbookError(f"a client failed: {errors[0]}")
    seen = sum(waits.values())
    lock = sum(n for k, n in waits.items() if k.startswith("Lock:"))
    return {"clients": clients, "transactions": sum(counts), "tps": round(sum(counts) / wall, 1),
            "lock_wait_share": round(lock / seen, 3) if seen else 0.0, "samples": samples,
            "top_waits": ", ".join(f"{k} {n}" for k, n in sorted(waits.items(), key=lambda kv: -kv[1])[:3])}  # fmt: skip


def hot_rows(lab: Lab) -> dict[str, Any]:
    """increment_org_usage on one hot org under 1, 2, 4, 8 clients; then the fix: append-only
    increments, rolled up into the counter by one session."""
    import pandas as pd

    target = lab.target
    _begin_writes(target)
    org = _hot_org(target)
    increment = _increment_statement(lab)
    tokens = 512
    read = "SELECT tokens_this_month FROM ai_app.organisations WHERE id = %s"
    log = _t(SCRATCH, "usage_increments")

    def hot(conn: psycopg.Connection[Any]) -> None:
        conn.execute(increment, {"org_id": org, "tokens": tokens})

    def append(conn: psycopg.Connection[Any]) -> None:
        conn.execute(sql.SQL("INSERT INTO {} (org_id, tokens) VALUES (%s, %s)").format(log), (org, tokens))

    rows = []
    with _schema(target, SCRATCH):
        with target.connect() as conn:
            conn.execute(sql.SQL("CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, org_id bigint NOT NULL,"
                                 " tokens integer NOT NULL, at timestamptz NOT NULL DEFAULT now())").format(log))  # fmt: skip
            (start,) = conn.execute(read, (org,)).fetchone()  # type: ignore[misc]
        for n in HOT_CLIENTS:
            rows.append({"method": "hot row (UPDATE counter)", **_drive(target, hot, n, HOT_SECONDS, "workbook-hot-row")})
        for n in HOT_CLIENTS:
            rows.append({"method": "append-only (INSERT, rolled up)", **_drive(target, append, n, HOT_SECONDS, "workbook-append")})
        with target.connect() as conn, conn.transaction():  # the roll-up: one writer, one update
            t0 = time.perf_counter()
            conn.execute(sql.SQL("WITH d AS (DELETE FROM {} WHERE org_id = %s RETURNING tokens)"
                                 " UPDATE ai_app.organisations SET tokens_this_month = tokens_this_month"
                                 " + (SELECT coalesce(sum(tokens), 0) FROM d) WHERE id = %s").format(log), (org, org))  # fmt: skip
            rollup_ms = (time.perf_counter() - t0) * 1000
        with target.connect() as conn:
            (end,) = conn.execute(read, (org,)).fetchone()  # type: ignore[misc]
    frame = pd.DataFrame(rows)
    expected = int(frame["transactions"].sum()) * tokens
    return {"runs": frame, "roll_up": {"org_id": org, "counter_right": bool(end - start == expected),
                                       "rollup_ms": round(rollup_ms, 2)}}  # fmt: skip


# ---- 4. long transactions and MVCC ------------------------------------------------------------
_VACUUM_TUPLES = re.compile(r"tuples: (\d+) removed, (\d+) remain, (\d+) are dead but not yet removable")


def _vacuum(conn: psycopg.Connection[Any], table: sql.Identifier) -> dict[str, int]:
    """VACUUM (VERBOSE) ``table``: the tuples it removed and those it had to keep."""
    notes: list[str] = []

    def handler(diag: Any) -> None:
        notes.append(diag.message_primary or "")

    conn.add_notice_handler(handler)
    try:
        conn.execute(sql.SQL("VACUUM (VERBOSE) {}").format(table))
    finally:
        conn.remove_notice_handler(handler)
    for note in notes:
        m = _VACUUM_TUPLES.search(note)
        if m:
            return {"removed": int(m[1]), "remain": int(m[2]), "dead_not_removable": int(m[3])}
    raise WorkbookError("VACUUM (VERBOSE) did not report its tuples; is this PostgreSQL 15 or later?")


def _heap_fetches(conn: psycopg.Connection[Any], table: sql.Identifier) -> dict[str, Any]:
    """The index-only scan of a range of orgs: its heap fetches (visibility map says 'not all visible')."""
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        (doc,) = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT sum(tokens) FROM {}"
                                      " WHERE org_id BETWEEN 1 AND 1000000").format(table)).fetchone()  # type: ignore[misc]  # fmt: skip
    plan = doc if isinstance(doc, list) else json.loads(doc)
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        if node.get("Node Type") == "Index Only Scan":
            return {"heap_fetches": int(node.get("Heap Fetches", 0)), "rows": int(node.get("Actual Rows", 0))}
        stack.extend(node.get("Plans", []))
    return {"heap_fetches": None, "rows": None}


def _balances(conn: psycopg.Connection[Any], name: str, fillfactor: int) -> sql.Identifier:
    table = _t(SCRATCH, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, org_id bigint NOT NULL, tokens bigint NOT NULL,"
                         " note text NOT NULL) WITH (fillfactor = {})").format(table, sql.Literal(fillfactor)))  # fmt: skip
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, 1 + g %% 100, g, 'seen' FROM generate_series(1, %s) g").format(table),
                 (MVCC_ROWS,))  # fmt: skip
    conn.execute(sql.SQL("CREATE INDEX {} ON {} (org_id) INCLUDE (tokens)").format(sql.Identifier(f"{name}_org_tokens"), table))
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table))
    return table


def _size(conn: psycopg.Connection[Any], table: sql.Identifier) -> int:
    return int(conn.execute("SELECT pg_relation_size(%s::regclass)", (table.as_string(conn),)).fetchone()[0])  # type: ignore[index]


def long_transaction(target: Target, *, rounds: int = 3) -> pd.DataFrame:
    """A REPEATABLE READ transaction left open while the app updates every row ``rounds`` times:
    VACUUM must keep every dead version it might still see, and index-only scans read the heap."""
    import pandas as pd
    import psycopg

    rows: list[dict[str, Any]] = []
    with target.connect() as conn:
        table = _balances(conn, "balances", 100)
        update = sql.SQL("UPDATE {} SET note = %s").format(table)

        def measure(phase: str, round_: int) -> None:
            vac = _vacuum(conn, table)
            rows.append({"phase": phase, "round": round_, **vac, **_heap_fetches(conn, table),
                         "table_bytes": _size(conn, table)})  # fmt: skip

        conn.execute(update, ("round 0",))
        measure("no open transaction", 0)
        with target.connect(autocommit=False, application_name="workbook-long-report") as report:
            try:
                report.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # BEGIN ISOLATION LEVEL ...
                report.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()  # its snapshot is taken here
                for r in range(1, rounds + 1):
                    conn.execute(update, (f"round {r}",))
                    measure("transaction open", r)
            finally:
                report.rollback()  # always closed, whatever happened above
        measure("transaction closed", rounds)
    return pd.DataFrame(rows)


def hot_updates(target: Target) -> pd.DataFrame:
    """One row in five updated (a column no index holds) at fillfactor 100 and 70: HOT updates
    need free space on the row's own page; a non-HOT update adds an entry to every index."""
    import pandas as pd

    out = []
    with target.connect() as conn:
        for ff in (100, 70):
            table = _balances(conn, f"balances_ff{ff}", ff)
            index = _t(SCRATCH, f"balances_ff{ff}_org_tokens")
            before = _size(conn, index)
            with conn.transaction():
                cur = conn.execute(sql.SQL("UPDATE {} SET note = 'updated' WHERE id % 5 = 0").format(table))
                updated = cur.rowcount
                (upd, hot) = conn.execute(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relid = %s::regclass",
                    (table.as_string(conn),),
                ).fetchone()  # type: ignore[misc]
            out.append({"fillfactor": ff, "updated": updated, "hot_updates": int(hot), "hot_share": round(hot / max(upd, 1), 3),
                        "index_bytes_before": before, "index_bytes_after": _size(conn, index),
                        "table_bytes": _size(conn, table)})  # fmt: skip
    return pd.DataFrame(out)


def mvcc(lab: Lab) -> dict[str, Any]:
    """A transaction left open holds back cleanup; fillfactor makes room for HOT updates."""
    target = lab.target
    _begin_writes(target)
    with _schema(target, SCRATCH):
        return {"long_transaction": long_transaction(target), "hot_updates": hot_updates(target)}


# ---- 5. the ORM --------------------------------------------------------------------------------
def _orm_user(target: Target) -> int:
    """The user with the most conversations (at least ORM_CONVERSATIONS of them, if any has that many)."""
    with target.connect() as conn:
        (user,) = conn.execute("SELECT user_id FROM ai_app.conversations GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1").fetchone()  # type: ignore[misc]
    return int(user)


def n_plus_one(lab: Lab, *, conversations: int = ORM_CONVERSATIONS, repeats: int = 10) -> pd.DataFrame:
    """A user's latest conversations and their messages, three ways; statements counted, time measured.

    All three run on one connection inside a transaction that has the index the loads need
    (messages by conversation, a what-if: rolled back), so the count of round trips is what differs.
    """
    import numpy as np
    import pandas as pd
    from sqlalchemy import select
    from sqlalchemy.orm import Session, joinedload, selectinload

    from .. import orm
    from ..experiment import time_interleaved

    target = lab.target
    user = _orm_user(target)
    eng = orm.engine(target)
    query = (select(orm.Conversation).where(orm.Conversation.user_id == user)
             .order_by(orm.Conversation.last_activity_at.desc(), orm.Conversation.id.desc()).limit(conversations))  # fmt: skip
    loaders: dict[str, Any] = {"lazy": None, "selectinload": selectinload(orm.Conversation.messages),
                               "joinedload": joinedload(orm.Conversation.messages)}  # fmt: skip
    try:
        with eng.connect() as conn:
            driver = conn.connection.driver_connection
            spec = lab.index("messages_conversation_created")
            conn.exec_driver_sql(spec.create().as_string(driver))

            def load(option: Any) -> tuple[int, int]:
                with Session(bind=conn) as s:
                    q = query if option is None else query.options(option)
                    convs = s.scalars(q).unique().all()
                    return len(convs), sum(len(c.messages) for c in convs)

            rows = []
            for name, option in loaders.items():
                with orm.counting(eng) as sent:
                    n_conv, n_msg = load(option)
                rows.append({"loading": name, "conversations": n_conv, "messages": n_msg, "statements": len(sent)})
            times = time_interleaved([lambda o=o: load(o) for o in loaders.values()], repeats=repeats, warmup=2)  # type: ignore[misc]
            conn.rollback()  # the what-if index goes
    finally:
        eng.dispose()
    for row, ms in zip(rows, times, strict=True):
        row["median_ms"] = round(float(np.median(ms)), 3)
    return pd.DataFrame(rows)


def bulk_insert(lab: Lab, *, rows: int = BULK_ROWS, repeats: int = 3) -> pd.DataFrame:
    """``rows`` messages four ways, each in a transaction rolled back: the unit of work one INSERT per
    object (SQLAlchemy 1.x's way), the unit of work batched by insertmanyvalues (2.x's default), an
    ORM bulk INSERT of dicts, and COPY."""
    import datetime as dt

    import numpy as np
    import pandas as pd
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from .. import orm

    target = lab.target
    _begin_writes(target)
    with target.connect() as conn:
        (conv, org) = conn.execute("SELECT id, org_id FROM ai_app.conversations ORDER BY id LIMIT 1").fetchone()  # type: ignore[misc]
    now = dt.datetime.now(dt.UTC)
    values = [{"conversation_id": conv, "org_id": org, "user_id": None, "role": "assistant",
               "content": f"answer {i}", "token_count": 40 + i % 50, "created_at": now, "metadata_": {"model": "gpt-4o"}}
              for i in range(rows)]  # fmt: skip
    row_by_row = orm.engine(target, use_insertmanyvalues=False)
    batched = orm.engine(target)

    def unit_of_work(eng: Any) -> int:
        with eng.connect() as conn, orm.counting(eng) as sent:
            with Session(bind=conn) as s:
                s.add_all([orm.Message(**v) for v in values])
                s.flush()
            conn.rollback()
        return len(sent)

    def bulk() -> int:
        with batched.connect() as conn, orm.counting(batched) as sent:
            with Session(bind=conn) as s:
                s.execute(insert(orm.Message), values)
            conn.rollback()
        return len(sent)

    def copy() -> int:
        cols = ("conversation_id", "org_id", "user_id", "role", "content", "token_count", "created_at", "metadata")
        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(_t(APP, "messages"), sql.SQL(", ").join(map(sql.Identifier, cols)))
        with target.connect() as conn, conn.transaction(force_rollback=True), conn.cursor() as cur, cur.copy(stmt) as cp:
            for v in values:
                cp.write_row((v["conversation_id"], v["org_id"], v["user_id"], v["role"], v["content"], v["token_count"],
                              v["created_at"], json.dumps(v["metadata_"])))  # fmt: skip
        return 1

    arms: dict[str, Callable[[], int]] = {
        "unit_of_work_row_by_row": lambda: unit_of_work(row_by_row),
        "unit_of_work_insertmanyvalues": lambda: unit_of_work(batched),
        "bulk_insert_insertmanyvalues": bulk,
        "copy": copy,
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    statements: dict[str, int] = {}
    try:
        for _ in range(repeats):  # interleaved: each turn runs every arm once
            for name, arm in arms.items():
                t0 = time.perf_counter()
                statements[name] = arm()
                times[name].append((time.perf_counter() - t0) * 1000)
    finally:
        row_by_row.dispose()
        batched.dispose()
    return pd.DataFrame([{"method": k, "rows": rows, "statements": statements[k], "median_ms": round(float(np.median(v)), 2)}
                         for k, v in times.items()])  # fmt: skip


def the_orm(lab: Lab) -> dict[str, Any]:
    """N+1 through lazy loading vs selectinload vs joinedload; bulk inserts four ways."""
    return {"n_plus_one": n_plus_one(lab), "bulk_insert": bulk_insert(lab)}


# ---- 6. put the dataset back ------------------------------------------------------------------
def put_back(lab: Lab) -> dict[str, Any]:
    """Reset the dataset from its pristine copy; the scratch schemas are gone with it."""
    from ..dataset import is_pristine, reset

    target = lab.target
    with target.connect() as conn:  # a step interrupted before its own cleanup
        for schema in (SHIPPED_FAST, SCRATCH):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    if is_pristine(target):
        return {"reset_seconds": 0.0, "pristine": True}
    result = reset(target)
    return {"reset_seconds": result.seconds, "pristine": bool(is_pristine(target))}


# ---- figures ------------------------------------------------------------------------------------
def figures(outputs: dict[str, Any]) -> dict[str, Any]:
    writes = outputs["constraints"]["writes"]
    race = {r["strategy"]: r for r in outputs["races"]["strategies"].to_dict("records")}
    dup = {r["method"]: int(r["duplicates"]) for r in outputs["races"]["double_submit"].to_dict("records")}
    hot = outputs["hot_rows"]["runs"]
    hot_row = hot[hot["method"].str.startswith("hot row")]
    appended = hot[hot["method"].str.startswith("append-only")]
    long_tx = outputs["mvcc"]["long_transaction"]
    opened = long_tx[long_tx["phase"] == "transaction open"].iloc[-1]
    closed = long_tx[long_tx["phase"] == "transaction closed"].iloc[-1]
    hot_upd = {f"fillfactor_{int(r['fillfactor'])}": float(r["hot_share"]) for r in outputs["mvcc"]["hot_updates"].to_dict("records")}
    orm_rows = {r["loading"]: r for r in outputs["the_orm"]["n_plus_one"].to_dict("records")}
    bulk = outputs["the_orm"]["bulk_insert"].to_dict("records")
    return {
        "garbage_rows_accepted": {"without_constraints": int(writes["garbage_rows_without"].sum()),
                                  "with_constraints": int(writes["garbage_rows_with"].sum())},
        "bad_writes": len(writes),
        "constraint_cost": {k: v for k, v in outputs["constraints"]["cost"].items() if k != "text"},
        "lost_updates_per_10k": {s: race[s]["lost_per_10k"] for s in STRATEGIES},
        "serializable_retries_per_10k": race["serializable_retry"]["retries_per_10k"],
        "race": {s: {k: race[s][k] for k in ("spends", "lost_updates", "retries", "tps", "p95_ms")} for s in STRATEGIES},
        "duplicates_with_idempotency_key": dup["idempotency_key"],
        "duplicates_check_then_insert": dup["check_then_insert"],
        "hot_row_tps": {str(int(r["clients"])): float(r["tps"]) for r in hot_row.to_dict("records")},
        "append_only_tps": {str(int(r["clients"])): float(r["tps"]) for r in appended.to_dict("records")},
        "hot_row_lock_wait_share": {str(int(r["clients"])): float(r["lock_wait_share"]) for r in hot_row.to_dict("records")},
        "hot_row_counter_right": bool(outputs["hot_rows"]["roll_up"]["counter_right"]),
        "mvcc": {"dead_not_removable_open": int(opened["dead_not_removable"]), "heap_fetches_open": int(opened["heap_fetches"]),
                 "dead_not_removable_closed": int(closed["dead_not_removable"]),
                 "heap_fetches_closed": int(closed["heap_fetches"])},
        "hot_update_share": hot_upd,
        "orm_statements": {k: int(orm_rows[k]["statements"]) for k in ("lazy", "selectinload", "joinedload")},
        "orm_ms": {k: float(orm_rows[k]["median_ms"]) for k in ("lazy", "selectinload", "joinedload")},
        "orm_conversations": int(orm_rows["lazy"]["conversations"]),
        "bulk_insert_ms": {r["method"]: float(r["median_ms"]) for r in bulk},
        "bulk_insert_statements": {r["method"]: int(r["statements"]) for r in bulk},
        "pristine_after": bool(outputs["put_back"]["pristine"]),
    }  # fmt: skip


LESSON = Lesson(
    name="transactions",
    title="Transactions and integrity: constraints, races, hot rows, MVCC and the ORM",
    claim="Constraints reject the garbage generated code writes; under concurrency only an atomic update, a row "
          "lock or a serializable retry loses no update and only a unique key stops a double submit; one hot row "
          "queues its writers; an open transaction holds back cleanup; lazy loading sends one statement per row.",
    notebook="04_transactions_and_integrity",
    steps=(
        Step("constraints", "Constraints as the safety net",
             "The same bad writes into a shipped-fast copy (no foreign keys, checks or uniques) and into ai_app: "
             "count the garbage rows each kept, then what the constraints cost per insert.", constraints),
        Step("races", "Races: four clients spending one org's token budget",
             "Lost updates are counted exactly: committed spends against what the counter shows. Then every request "
             "is submitted twice at once.", races),
        Step("hot_rows", "Hot rows: one counter, rising clients",
             "Every writer of the hot org's counter waits for the one before it (Lock:transactionid); append-only "
             "increments rolled up later do not.", hot_rows),
        Step("mvcc", "Long transactions and MVCC",
             "While a transaction stays open VACUUM keeps every dead version it might see and index-only scans "
             "fetch heap pages; with free space on the page (fillfactor) updates are HOT.", mvcc),
        Step("the_orm", "The ORM: N+1 and bulk inserts",
             "Lazy loading sends one statement per conversation; selectinload two; joinedload one. Bulk inserts: "
             "one INSERT per object, batched by insertmanyvalues, and COPY.", the_orm),
        Step("put_back", "Put the dataset back",
             "The lesson wrote to ai_app: the dataset is reset from its pristine copy.", put_back),
    ),
    figures=figures,
    references=(
        ("Constraints", "https://www.postgresql.org/docs/current/ddl-constraints.html"),
        ("Transaction isolation", "https://www.postgresql.org/docs/current/transaction-iso.html"),
        ("Explicit locking", "https://www.postgresql.org/docs/current/explicit-locking.html"),
        ("Routine vacuuming", "https://www.postgresql.org/docs/current/routine-vacuuming.html"),
        ("Heap-only tuples (HOT)", "https://www.postgresql.org/docs/current/storage-hot.html"),
        ("Index-only scans", "https://www.postgresql.org/docs/current/indexes-index-only-scans.html"),
        ("The statistics views (pg_stat_activity wait events)", "https://www.postgresql.org/docs/current/monitoring-stats.html"),
    ),
)  # fmt: skip
