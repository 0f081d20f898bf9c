"""Traffic: real concurrent load on a real primary + replica, both drivers, real server errors.

One module cluster (a primary, one streaming replica, the dataset at SF 0.01) serves every test;
the test that lowers max_connections restores it. Runs last 1-2 s with a few clients.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest

from tests.conftest import destroy_and_prove, make_home
from workbook.cluster import LocalCluster, Target
from workbook.errors import WorkbookError
from workbook.traffic import CustomQuery, Mix, fit, fit_with_holdout, run_load, sweep
from workbook.traffic.runner import APP_PREFIX

SCALE = 0.01


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    from workbook.dataset import load

    parent = make_home("wb-traffic-")
    c = LocalCluster(parent / "home")
    c.up(replicas=1)
    load(c.target(), SCALE, 42, progress=False)
    c.wait_caught_up()
    yield c
    destroy_and_prove(c)
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def target(cluster: LocalCluster) -> Target:
    return cluster.target()


def _our_sessions(target: Target) -> list[tuple[Any, ...]]:
    found = []
    for ep in target.endpoints:
        with target.connect(ep.name) as conn:
            found += conn.execute("SELECT application_name, state FROM pg_stat_activity WHERE application_name LIKE %s"
                                  " AND application_name <> 'workbook-traffic-admin'", (APP_PREFIX + "%",)).fetchall()  # fmt: skip
    return found


def _pgbench_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running() and "pgbench" in p.name()]


def _statement_calls(target: Target, node: str, needle: str) -> int:
    with target.connect(node) as conn:
        row = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE %s",
                           ("%" + needle + "%",)).fetchone()  # fmt: skip
    return int(row[0]) if row else 0


# ---- the USL fit ------------------------------------------------------------------------------
def test_usl_fit_recovers_sigma_and_kappa_from_synthetic_points() -> None:
    lam, sigma, kappa = 1200.0, 0.04, 0.0015
    n = np.array([1, 2, 4, 8, 12, 16, 24, 32, 48, 64], dtype=float)
    x = lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))
    rng = np.random.default_rng(1)
    noisy = x * rng.normal(1, 0.01, len(n))
    model = fit(n, noisy)
    assert model.sigma == pytest.approx(sigma, abs=0.01)
    assert model.kappa == pytest.approx(kappa, rel=0.2)
    assert model.lam == pytest.approx(lam, rel=0.05)
    true_peak = math.sqrt((1 - sigma) / kappa)
    assert model.peak_clients == pytest.approx(true_peak, rel=0.1)
    exact = fit(n, x)  # noise-free points give the law back exactly
    assert (exact.sigma, exact.kappa, exact.lam) == pytest.approx((sigma, kappa, lam), rel=1e-6)
    _, err = fit_with_holdout(n, noisy)
    assert err is not None and abs(err) < 0.05
    # linear scaling: kappa and sigma are 0, never negative, and there is no peak
    flat = fit([1, 2, 4, 8], [100.0, 200.0, 400.0, 800.0])
    assert flat.sigma == pytest.approx(0, abs=1e-9) and flat.kappa == pytest.approx(0, abs=1e-9)
    assert math.isinf(flat.peak_clients)
    with pytest.raises(WorkbookError, match="3 or more"):
        fit([1, 2], [10.0, 20.0])


# ---- bad input: refused before anything starts ------------------------------------------------
def test_bad_input_is_one_line_and_starts_nothing(target: Target) -> None:
    ro = Target.from_dsn(target.primary.dsn)  # an external target: read-only unless allowed
    no_replicas = Target(primary=target.primary, allow_writes=True)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"mix": "chat", "clients": 0}, "clients must be a positive"),
        ({"mix": "chat", "clients": -3}, "clients must be a positive"),
        ({"mix": "nope", "clients": 1}, "no mix 'nope'"),
        ({"mix": "chat", "clients": 1, "rate": -5}, "rate must be a positive"),
        ({"mix": "chat", "clients": 1, "pgbench": "/nonexistent/pgbench"}, "pgbench not found"),
        ({"mix": "chat", "clients": 1, "route": "sideways"}, "route must be one of"),
        ({"mix": "chat", "clients": 1, "driver": "java"}, "driver must be one of"),
        ({"mix": "chat", "clients": 100_000}, "takes only"),
        ({"mix": Mix("m", {"no_such_shape": 1}), "clients": 1}, "no query shape 'no_such_shape'"),
        ({"mix": Mix("m", {"x": 1}, custom={"x": "DROP TABLE ai_app.messages"}), "clients": 1}, "DROP"),
        ({"mix": Mix("m", {"conversation_list_n_plus_one": 1}), "clients": 1}, "per-row loop"),
        ({"mix": "chat", "clients": 1, "target": ro}, "read-only"),
        ({"mix": "read", "clients": 2, "route": "replicas", "target": no_replicas}, "needs replicas"),
    ]
    for kwargs, message in cases:
        t = kwargs.pop("target", target)
        with pytest.raises(WorkbookError) as info:
            run_load(t, duration_s=1, **kwargs)
        text = str(info.value)
        assert message.lower() in text.lower(), text
        assert "\n" not in text
    assert not _our_sessions(target)
    assert not _pgbench_children()


# ---- drivers, routing, results ----------------------------------------------------------------
def test_pgbench_log_parser_matches_pgbench_summary(target: Target) -> None:
    run = run_load(target, "point", clients=2, duration_s=1.5, monitor=False)
    (summary,) = run.settings["pgbench_summary"].values()
    assert len(run.ok) == summary["transactions"] > 100
    assert run.ok["latency_ms"].mean() == pytest.approx(summary["latency_average_ms"], rel=0.05)
    assert run.tps == pytest.approx(summary["tps"], rel=0.05)
    assert run.errors() == {} and not run.wrote
    assert set(run.transactions.columns) == {"start", "latency_ms", "shape", "node", "error_class"}


def test_open_loop_runs_at_the_rate_asked(target: Target) -> None:
    for driver in ("pgbench", "python"):
        run = run_load(target, "point", clients=2, duration_s=2, rate=300, driver=driver, monitor=False)
        assert run.tps == pytest.approx(300, rel=0.3), (driver, run.summary())
        assert run.rate == 300 and not run.errors()
    late = run_load(target, "point", clients=1, duration_s=1, rate=20_000, latency_limit_ms=0.05, monitor=False)
    assert late.errors().get("skipped", 0) > 0  # asked for more than one client can do: pgbench skips the late ones


def test_routing_puts_reads_on_the_replica(target: Target) -> None:
    needle = "ORDER BY created_at DESC, id DESC"  # conversation_latest_messages
    for driver, route in (("pgbench", "replicas"), ("python", "replicas"), ("python", "all")):
        before = {ep.name: _statement_calls(target, ep.name, needle) for ep in target.endpoints}
        run = run_load(target, "chat", clients=3, duration_s=1.5, route=route, driver=driver)
        after = {ep.name: _statement_calls(target, ep.name, needle) for ep in target.endpoints}
        delta = {n: after[n] - before[n] for n in after}
        ran = run.by_shape().set_index("shape")["transactions"]["conversation_latest_messages"]
        assert ran > 20, run.summary()
        assert delta["replica1"] >= ran * 0.95 if route == "replicas" else delta["replica1"] > 0, (driver, route, delta)
        if route == "replicas":
            assert delta["primary"] == 0, (driver, delta)  # reads never reached the primary
        else:
            assert delta["primary"] > 0, delta  # "all" spreads reads over both
        nodes = run.as_dict()["by_node"]
        assert set(nodes) == {"primary", "replica1"} and all(v["tps"] > 0 for v in nodes.values())
        # writes went to the primary only, and the run says it wrote
        assert set(run.transactions.loc[run.transactions["shape"] == "insert_message", "node"]) == {"primary"}
        assert run.wrote and run.dataset_changes["messages"]["ins"] > 0
        assert set(run.samples["metric"]) >= {"sessions", "locks_waiting", "lag_bytes", "up"}
        assert not _our_sessions(target)


def test_write_mix_records_that_it_wrote(target: Target) -> None:
    from workbook.dataset import is_pristine, reset

    reset(target)  # whatever earlier tests wrote: back to the dataset as loaded
    assert is_pristine(target) is True
    reader = run_load(target, "read", clients=2, duration_s=1)
    assert reader.dataset_pristine is True and not reader.wrote and not reader.dataset_changes
    run = run_load(target, "ingest", clients=2, duration_s=1)
    assert run.dataset_pristine is True  # it was, before this run
    assert is_pristine(target) is False  # and is no longer
    inserted = int((run.ok["shape"] == "insert_message").sum())
    assert run.wrote and inserted > 10
    assert run.dataset_changes["messages"]["ins"] == pytest.approx(inserted, rel=0.05)
    assert run.dataset_changes["conversations"]["upd"] > 0
    assert run.record()["dataset_pristine"] is True and run.record()["wrote"] is True
    assert run_load(target, "ingest", clients=2, duration_s=1).dataset_pristine is False
    assert any("no longer the pristine" in n for n in run.notes)


def test_custom_mix_pool_timeouts_and_read_your_writes(target: Target) -> None:
    mine = Mix("mine", {"conversation_latest_messages": 8, "count_org": 2},
               custom={"count_org": CustomQuery("SELECT count(*) FROM ai_app.messages WHERE org_id = %(org_id)s",
                                                samplers=("org",))})  # fmt: skip
    run = run_load(target, mine, clients=4, duration_s=1, driver="python", pool_size=1, pool_timeout_s=0.002)
    assert run.errors().get("pool_timeout", 0) > 0 and len(run.ok) > 0
    assert set(run.ok["shape"]) == {"conversation_latest_messages", "count_org"}
    stick = run_load(target, "chat", clients=2, duration_s=1, driver="python", route="replicas",
                     read_your_writes="stick", stick_ms=50)  # fmt: skip
    assert stick.settings["stuck_to_primary"] > 0 and not stick.errors()
    waited = run_load(target, "chat", clients=2, duration_s=1, driver="python", route="replicas",
                      read_your_writes="wait_lsn", policy="least_lag")  # fmt: skip
    assert len(waited.ok) > 0 and not waited.errors()


def test_statement_timeout_is_classified(target: Target) -> None:
    slow = Mix("slow", {"sleep": 1}, custom={"sleep": "SELECT pg_sleep(0.05)"})
    run = run_load(target, slow, clients=2, duration_s=1, driver="python", statement_timeout_ms=20)
    assert run.errors().get("statement_timeout", 0) > 10
    assert set(run.errors()) == {"statement_timeout"} and run.ok.empty
    assert any("statement_timeout" in label for _, label in run.events)
    pg = run_load(target, slow, clients=2, duration_s=1, statement_timeout_ms=20)
    assert pg.errors() == {"statement_timeout": 2}  # pgbench aborts a client at its first such error
    assert any("aborted" in n for n in pg.notes)


def test_lock_timeout_serialization_and_deadlock_are_classified(target: Target) -> None:
    import threading

    import psycopg

    from workbook.traffic import classify_exception, prepare

    # a lock timeout under load: another session holds the hot row every request wants
    hot_mix = Mix("hot", {"increment_org_usage": 1})
    hot = prepare(target, hot_mix, pool_size=1, hot_share=1.0)
    org_id = hot.requests[0].params[0]["org_id"]
    with target.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM ai_app.organisations WHERE id = %s FOR UPDATE", (org_id,))
        for driver in ("python", "pgbench"):
            run = run_load(target, hot_mix, clients=2, duration_s=1, driver=driver, prepared=hot, protect_dataset=False,
                           session_settings={"lock_timeout": "20ms"})  # fmt: skip
            assert "lock_timeout" in run.errors(), (driver, run.summary())
        holder.execute("ROLLBACK")
    with pytest.raises(WorkbookError, match="plain name=value"):
        run_load(target, "point", clients=1, duration_s=1, session_settings={"lock_timeout": "1\ns"})

    # serialization failure and deadlock: two real sessions each, classified from the server's error
    def serialization() -> BaseException:
        with target.connect() as a, target.connect() as b:
            for c in (a, b):
                c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                c.execute("SELECT tokens_this_month FROM ai_app.organisations WHERE id = %s", (org_id,))
            a.execute("UPDATE ai_app.organisations SET tokens_this_month = tokens_this_month WHERE id = %s", (org_id,))
            a.execute("COMMIT")
            try:
                b.execute("UPDATE ai_app.organisations SET tokens_this_month = tokens_this_month WHERE id = %s", (org_id,))
            except psycopg.Error as exc:
                return exc
        raise AssertionError("no serialization failure")

    def deadlock() -> BaseException:
        ids = [org_id, org_id + 1]
        caught: list[BaseException] = []
        with target.connect() as a, target.connect() as b:
            for c, first in ((a, ids[0]), (b, ids[1])):
                c.execute("SET deadlock_timeout = '20ms'")
                c.execute("BEGIN")
                c.execute("SELECT 1 FROM ai_app.organisations WHERE id = %s FOR UPDATE", (first,))

            def grab(c: Any, other: int) -> None:
                try:
                    c.execute("SELECT 1 FROM ai_app.organisations WHERE id = %s FOR UPDATE", (other,))
                except psycopg.Error as exc:
                    caught.append(exc)
                finally:
                    c.execute("ROLLBACK")

            t = threading.Thread(target=grab, args=(a, ids[1]))
            t.start()
            grab(b, ids[0])
            t.join()
        return caught[0]

    assert classify_exception(serialization()) == "serialization_failure"
    assert classify_exception(deadlock()) == "deadlock"


def test_serialization_failures_retries_and_timed_actions(target: Target) -> None:
    from workbook.traffic import prepare

    hot_mix = Mix("hot", {"increment_org_usage": 1})
    hot = prepare(target, hot_mix, pool_size=1, hot_share=1.0)  # every request updates the same row
    rr = {"default_transaction_isolation": "repeatable read"}
    plain = run_load(target, hot_mix, clients=4, duration_s=1, driver="python", prepared=hot, session_settings=rr)
    failed = plain.errors().get("serialization_failure", 0)
    assert failed > 0, plain.summary()

    def checkpoint() -> None:
        with target.connect() as conn:
            conn.execute("CHECKPOINT")

    retried = run_load(target, hot_mix, clients=4, duration_s=1, driver="python", prepared=hot, session_settings=rr,
                       retries=20, backoff_ms=1, actions=[(0.3, "checkpoint", checkpoint)])  # fmt: skip
    assert retried.settings["retries_done"] > 0
    assert retried.errors().get("serialization_failure", 0) < failed / 2, (failed, retried.summary())
    ((when, label),) = [e for e in retried.events if e[1] == "checkpoint"]
    assert 0.1 < when < 0.8
    pg = run_load(target, hot_mix, clients=4, duration_s=1, prepared=hot, session_settings=rr)
    assert pg.errors().get("serialization_failure", 0) > 0, pg.summary()  # from pgbench's log (--failures-detailed)


def _stopper(after_s: float, *, interrupt: bool = False) -> tuple[Any, dict[str, float]]:
    """A should_stop that says stop (or raises KeyboardInterrupt, as Ctrl-C does) ``after_s``
    after its first call; the dict gets the moment it did."""
    seen: dict[str, float] = {}

    def should_stop() -> bool:
        seen.setdefault("first", time.monotonic())
        if time.monotonic() - seen["first"] > after_s:
            seen.setdefault("stop", time.monotonic())
            if interrupt:
                raise KeyboardInterrupt
            return True
        return False

    return should_stop, seen


def test_cancel_stops_within_a_second_and_leaves_nothing(target: Target) -> None:
    for driver in ("pgbench", "python"):
        stop, seen = _stopper(1.2)
        run = run_load(target, "read", clients=3, duration_s=60, route="all", driver=driver, should_stop=stop)
        took = time.monotonic() - seen["stop"]
        assert run.cancelled and took < 1.0, (driver, took)
        assert not _pgbench_children() and not _our_sessions(target)

        ctrl_c, seen = _stopper(0.8, interrupt=True)
        with pytest.raises(KeyboardInterrupt):
            run_load(target, "read", clients=3, duration_s=60, route="all", driver=driver, should_stop=ctrl_c)
        assert time.monotonic() - seen["stop"] < 1.0
        assert not _pgbench_children() and not _our_sessions(target)


def test_sweep_fits_the_usl_and_stores_runs(target: Target, tmp_path: Any) -> None:
    from workbook.results.store import ResultsStore
    from workbook.ui import svg
    from workbook.ui.charts import load_errors, load_percentiles, load_timeline, usl_fit

    s = sweep(target, "point", [1, 2, 3, 4], duration_s=1)
    d = s.as_dict()
    assert [p["clients"] for p in d["points"]] == [1, 2, 3, 4]
    assert set(d["usl"]) >= {"sigma", "kappa", "peak_clients", "peak_tps", "holdout_error"}
    assert d["usl"]["holdout_error"] is not None and d["usl"]["sigma"] >= 0 and d["usl"]["kappa"] >= 0
    assert len(s.users_table([1, 8, 16])) == 6
    store = ResultsStore(tmp_path)
    s.save(store)
    stored = store.load_runs("point")
    assert list(stored["clients"]) == [1, 2, 3, 4] and stored["usl"].iloc[0]["sigma"] == d["usl"]["sigma"]
    run = s.runs[-1]
    run.events.append((0.5, "replica added"))
    for chart in (load_percentiles(s), load_timeline(run), load_errors(run), usl_fit(s)):
        assert "<svg" in svg(chart)


def test_too_many_clients_is_classified_from_the_server(cluster: LocalCluster) -> None:
    """Last in the module: it restarts the primary with max_connections = 16 and restores it."""
    target = cluster.target()
    with target.connect() as conn:
        conn.execute("ALTER SYSTEM SET max_connections = 16")
    cluster.stop()
    cluster.up()
    try:
        target = cluster.target()
        with pytest.raises(WorkbookError, match="takes only"):
            run_load(target, "point", clients=20, duration_s=1)
        assert not _our_sessions(target)
        run = run_load(target, "point", clients=20, duration_s=1, driver="python", allow_overload=True)
        assert run.errors().get("too_many_clients", 0) > 0 and len(run.ok) > 0, run.summary()
        pg = run_load(target, "point", clients=20, duration_s=1, allow_overload=True)
        assert pg.errors() == {"too_many_clients": 1} and len(pg.ok) == 0
        assert not _pgbench_children() and not _our_sessions(target)
    finally:
        with cluster.target().connect() as conn:
            conn.execute("ALTER SYSTEM RESET max_connections")
        cluster.stop()
        cluster.up()


def test_samplers_fit_a_tenant_with_only_two_conversations(target: Target) -> None:
    """SF 1's small tenants have 2-6 conversations: the samplers' offsets wrap around what a tenant
    has instead of finding no row (which made the read and chat mixes fail to prepare at SF 1)."""
    from workbook.dataset.samplers import sample

    with target.connect(autocommit=False) as conn:
        try:  # a tiny tenant made for the test, in a transaction that is rolled back
            org = conn.execute("INSERT INTO ai_app.organisations (name, slug, plan, created_at)"
                               " VALUES ('tiny', 'tiny-sampler-test', 'free', now()) RETURNING id").fetchone()[0]  # type: ignore[index]
            user = conn.execute("INSERT INTO ai_app.users (org_id, email, display_name, role, created_at)"
                                " VALUES (%s, 'tiny@sampler.test', 'tiny', 'owner', now()) RETURNING id", (org,)).fetchone()[0]  # type: ignore[index]
            conn.execute("INSERT INTO ai_app.conversations (org_id, user_id, title, status, started_at, last_activity_at,"
                         " message_count) SELECT %s, %s, 't', 'active', now(), now(), g FROM generate_series(1, 2) g", (org, user))  # fmt: skip
            conn.execute("UPDATE ai_app.dataset_info SET cold_orgs = ARRAY[%s]::bigint[]", (org,))
            conversations = {sample("conversation", conn, "cold", k)["conversation_id"] for k in range(10)}
            users = {sample("user", conn, "cold", k)["user_id"] for k in range(6)}
            assert len(conversations) == 2 and users == {user}
        finally:
            conn.rollback()
