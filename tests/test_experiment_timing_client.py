"""What a timed call is: every shape through libpq does the same work as through psycopg, and fails the same way."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from workbook.cluster import LocalCluster
from workbook.dataset.shapes import load_shapes, parse_shape
from workbook.errors import WorkbookError
from workbook.experiment import QueryFailed, Setting, compare
from workbook.experiment.runs import shape_runner
from workbook.experiment.wire import statement_runner, to_positional

SHAPES = load_shapes()


def test_placeholders_become_positional_as_psycopg_reads_them() -> None:
    q, keys, fmts = to_positional("SELECT %(a)s, %(b)t, %(a)s, '100%%' WHERE x LIKE 'y%%'")
    assert q == b"SELECT $1, $2, $1, '100%' WHERE x LIKE 'y%'" and keys == ["a", "b"]
    assert [f.value for f in fmts] == ["s", "t"]
    assert to_positional("SELECT %s + %b")[:2] == (b"SELECT $1 + $2", [0, 1])
    with pytest.raises(WorkbookError, match="mixes"):
        to_positional("SELECT %(a)s, %s")
    with pytest.raises(WorkbookError, match="unsupported placeholder"):
        to_positional("SELECT %(a)d")


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_variant_returns_the_same_rows_through_libpq_as_through_psycopg(lab: LocalCluster, name: str) -> None:
    qs = SHAPES[name]
    with lab.target().connect() as a, lab.target().connect() as b:
        params = [qs.sample(a, tier, 0) for tier in ("hot", "cold")]
        for v in qs.variants:
            wire, driver = shape_runner(a, qs, v, params, "libpq"), shape_runner(b, qs, v, params, "psycopg")
            for _ in params:
                rows = driver()
                expected = rows[0][0] if qs.kind == "write" and not (rows and len(rows[0]) > 1) else len(rows)
                assert wire() == expected, f"{name} ({v})"


def test_per_row_steps_make_one_round_trip_per_row_on_the_server(lab: LocalCluster, conn: Any) -> None:
    qs = SHAPES["conversation_list_n_plus_one"]
    params = [qs.sample(conn, "hot", 0)]
    step_calls = "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '%AS title, m.role, m.created_at%'"
    with lab.target().connect() as c:
        run = shape_runner(c, qs, "n_plus_one", params)
        run()  # prepares
        before = conn.execute(step_calls).fetchone()[0]
        rows = run()
        after = conn.execute(step_calls).fetchone()[0]
    expected = qs.run(conn, params[0], "n_plus_one")
    assert rows == len(expected) > 1
    assert after - before == len(expected), "one execution of the per-row statement for each conversation"


def test_a_write_is_rolled_back_and_leaves_the_rows_as_they_were(lab: LocalCluster, conn: Any) -> None:
    qs = SHAPES["increment_org_usage"]
    params = [qs.sample(conn, "hot", k) for k in range(3)]
    snapshot = "SELECT count(*), sum(hashtext(t::text)) FROM ai_app.{} t"
    before = [conn.execute(snapshot.format(t)).fetchone() for t in qs.tables]
    with lab.target().connect() as c:
        run = shape_runner(c, qs, qs.default_variant, params)
        assert [run() for _ in range(6)] == [1] * 6
        assert c.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert [conn.execute(snapshot.format(t)).fetchone() for t in qs.tables] == before


def test_statements_prepared_again_after_psycopg_deallocates_everything(lab: LocalCluster, conn: Any) -> None:
    run = statement_runner(conn, "SELECT count(*) FROM ai_app.organisations WHERE id <= %(n)s", {"n": 5})
    assert run() == 1
    # psycopg prepares a statement of its own, then a rolled-back transaction makes it send DEALLOCATE ALL
    conn.execute("SELECT 1", prepare=True)
    with conn.transaction(force_rollback=True):
        pass
    assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
    assert run() == 1


def test_server_errors_and_timeouts_surface_as_psycopg_errors_and_query_failed(lab: LocalCluster, conn: Any) -> None:
    with pytest.raises(psycopg.errors.UndefinedColumn, match='"nope"') as info:
        statement_runner(conn, "SELECT nope FROM ai_app.messages")()
    assert info.value.diag.sqlstate == "42703"
    conn.execute("SET statement_timeout = '50ms'")
    with pytest.raises(psycopg.errors.QueryCanceled):
        statement_runner(conn, "SELECT pg_sleep(%s)", (1,))()
    slow = parse_shape("-- shape: slow\n-- title: t\n-- variant: default\nSELECT pg_sleep(0.5)\n")
    with pytest.raises(QueryFailed, match="statement timeout"):
        compare(lab.target(), slow, Setting("work_mem", "8MB"), repeats=3, timeout_s=0.1)


def test_the_client_is_a_choice_recorded_with_the_run(lab: LocalCluster) -> None:
    c = compare(lab.target(), "api_key_lookup", Setting("work_mem", "8MB"), repeats=5, client="psycopg")
    assert c.baseline.context["client"] == "psycopg"
    c = compare(lab.target(), "api_key_lookup", Setting("work_mem", "8MB"), repeats=5)
    assert c.treatment.context["client"] == "libpq"
    with pytest.raises(WorkbookError, match="client must be one of"):
        compare(lab.target(), "api_key_lookup", Setting("work_mem", "8MB"), repeats=5, client="jdbc")


@pytest.mark.parametrize("client", ["libpq", "psycopg"])
def test_timed_writes_roll_back_without_dropping_the_prepared_statements(lab: LocalCluster, conn: Any, client: str) -> None:
    # through psycopg, a ROLLBACK makes it DEALLOCATE ALL: every timed write would be re-prepared too
    qs = SHAPES["insert_message"]
    params = [qs.sample(conn, "hot", 0)]
    before = conn.execute("SELECT count(*), max(id) FROM ai_app.messages").fetchone()
    with lab.target().connect() as c:
        run = shape_runner(c, qs, qs.default_variant, params, client)
        for _ in range(4):
            run()
        prepared = c.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
    assert prepared >= 1, "the write's prepared statement survived the rollbacks"
    assert conn.execute("SELECT count(*), max(id) FROM ai_app.messages").fetchone() == before


def test_sessions_lost_mid_measurement_give_one_clear_error_and_leave_the_catalog(
    lab: LocalCluster, catalog_unchanged: None
) -> None:
    from workbook.dataset import load_indexes
    from workbook.experiment import WhatIfIndex

    def kill_the_arms(turn: int, repeats: int) -> None:
        if turn == 3:
            with lab.target().connect() as killer:
                killer.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )

    spec = load_indexes()["messages_conversation_created"]
    with pytest.raises(WorkbookError, match="lost the connection to the server while measuring conversation_latest_messages"):
        compare(lab.target(), "conversation_latest_messages", WhatIfIndex(spec), repeats=10, progress=kill_the_arms)
