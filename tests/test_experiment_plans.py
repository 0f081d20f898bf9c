"""Plans: EXPLAIN (ANALYZE ...) JSON parsed from real servers; DML rolled back; bad input refused cleanly."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workbook.cluster import LocalCluster
from workbook.dataset import shape
from workbook.experiment import QueryFailed, explain, findings

PG15 = Path("/usr/lib/postgresql/15/bin")


def count(conn: Any, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM ai_app.{table}").fetchone()[0])


def test_dml_explain_analyze_runs_the_write_and_leaves_rows_unchanged(conn: Any) -> None:
    qs = shape("insert_message")
    params = qs.sample(conn, "hot")
    before = count(conn, "messages"), conn.execute("SELECT max(id) FROM ai_app.messages").fetchone()[0]
    plan = explain(conn, qs.variant().statements[0], params)
    assert plan.root.node_type == "ModifyTable" and plan.root.get("Operation") == "Insert"
    assert plan.root.get("WAL Records", 0) > 0, "the insert really executed (it wrote WAL)"
    assert (count(conn, "messages"), conn.execute("SELECT max(id) FROM ai_app.messages").fetchone()[0]) == before
    update = explain(conn, "UPDATE ai_app.conversations SET title = 'x' WHERE id < 50")
    assert update.root.actual_rows == 0 and update.root.children[0].actual_rows == 49
    assert conn.execute("SELECT count(*) FROM ai_app.conversations WHERE title = 'x'").fetchone()[0] == 0


def test_plan_frame_has_rows_times_buffers_and_misestimates(conn: Any) -> None:
    qs = shape("conversation_latest_messages")
    plan = explain(conn, qs.variant().statements[0], qs.sample(conn, "hot"))
    df = plan.frame()
    assert list(df["node_type"]) == ["Limit", "Sort", "Seq Scan"]
    scan = df.iloc[2]
    assert scan["relation"] == "ai_app.messages" and scan["rows_removed_by_filter"] > 0
    assert scan["actual_rows"] == pytest.approx(plan.nodes[2].actual_rows)
    assert (df["exclusive_ms"] >= 0).all() and df["exclusive_ms"].sum() == pytest.approx(df["inclusive_ms"][0], rel=0.05)
    assert df["shared_hit"][0] + df["shared_read"][0] > 0
    assert plan.cache_state == "warm" or "cold" in plan.cache_state
    assert plan.execution_ms > 0 and plan.planning_ms is not None
    assert plan.summary() == "Limit > Sort > Seq Scan on messages"


def test_parallel_plan_parses_with_workers_and_divided_time(conn: Any) -> None:
    for name, value in [("parallel_setup_cost", "0"), ("parallel_tuple_cost", "0"), ("min_parallel_table_scan_size", "0"),
                        ("max_parallel_workers_per_gather", "2")]:  # fmt: skip
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    plan = explain(conn, "SELECT role, count(*) FROM ai_app.messages WHERE token_count > 10 GROUP BY role")
    gather = next(n for n in plan.nodes if n.node_type.startswith("Gather"))
    assert gather.workers_launched is not None and gather.get("Workers Planned") == 2
    scan = next(n for n in plan.nodes if n.node_type == "Seq Scan")
    assert scan.get("Parallel Aware") and scan.label == "Parallel Seq Scan on messages"
    assert scan.parallel_divisor == gather.workers_launched + 1
    assert scan.loops == gather.workers_launched + 1
    assert scan.inclusive_ms <= gather.inclusive_ms * 1.5, "per-worker time is not summed into wall time"
    assert int(plan.frame()["workers_launched"].dropna().iloc[0]) == gather.workers_launched


def test_ctes_initplans_and_subplans_parse(conn: Any) -> None:
    plan = explain(
        conn,
        """
        WITH busy AS MATERIALIZED (SELECT conversation_id, count(*) AS n FROM ai_app.messages GROUP BY 1)
        SELECT c.id, (SELECT max(n) FROM busy) AS top,
               (SELECT count(*) FROM ai_app.messages m WHERE m.conversation_id = c.id) AS own
        FROM ai_app.conversations c WHERE c.id <= 3
        """,
    )
    rels = {n.get("Parent Relationship") for n in plan.nodes}
    subplans = {n.get("Subplan Name") for n in plan.nodes if n.get("Subplan Name")}
    assert "InitPlan" in rels and "SubPlan" in rels
    assert any(s.startswith("CTE busy") for s in subplans)
    assert any(n.node_type == "CTE Scan" for n in plan.nodes)
    assert all(n.exclusive_ms is not None and n.exclusive_ms >= 0 for n in plan.nodes if n.executed)


def test_partitioned_table_plan_lists_each_partition(conn: Any) -> None:
    conn.execute("BEGIN")
    try:
        conn.execute("CREATE TABLE public.wb_events (day date NOT NULL, n int) PARTITION BY RANGE (day)")
        for m in (1, 2, 3):
            conn.execute(f"CREATE TABLE public.wb_events_{m} PARTITION OF public.wb_events"
                         f" FOR VALUES FROM ('2026-0{m}-01') TO ('2026-0{m + 1}-01')")  # fmt: skip
        conn.execute("INSERT INTO public.wb_events SELECT d, 1 FROM generate_series('2026-01-01'::date, '2026-03-31', '1 day') d")
        plan = explain(conn, "SELECT count(*) FROM public.wb_events WHERE day >= '2026-02-10'")
    finally:
        conn.execute("ROLLBACK")
    scanned = sorted(r for _, r, _ in plan.scans())
    assert scanned == ["public.wb_events_2", "public.wb_events_3"], "partition pruning is visible in the parse"
    assert any(n.node_type == "Append" for n in plan.nodes)


def test_invalid_sql_gives_the_server_message_and_changes_nothing(conn: Any) -> None:
    before = count(conn, "messages")
    with pytest.raises(QueryFailed, match=r'column "no_such_column" does not exist'):
        explain(conn, "SELECT no_such_column FROM ai_app.messages")
    with pytest.raises(QueryFailed, match=r"syntax error .*at character 10 of the statement"):
        explain(conn, "SELECT * FORM ai_app.messages")
    assert conn.execute("SELECT 1").fetchone()[0] == 1, "the connection is still usable"
    assert count(conn, "messages") == before


def test_runaway_query_is_cancelled_by_the_statement_timeout(conn: Any) -> None:
    with pytest.raises(QueryFailed, match="statement timeout"):
        explain(conn, "SELECT pg_sleep(5)", timeout_s=0.2)
    assert conn.execute("SELECT current_setting('statement_timeout')").fetchone()[0] == "0", "timeout was local"


@pytest.fixture(scope="module")
def pg15(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if not (PG15 / "postgres").exists():
        pytest.skip("Debian's PostgreSQL 15 is not installed (.ci/run installs it)")
    from .conftest import destroy_and_prove, make_home

    parent = make_home("wb-pg15-")
    c = LocalCluster(parent / "home", pg_bin=PG15)
    c.up(replicas=0)
    yield c
    destroy_and_prove(c)
    shutil.rmtree(parent, ignore_errors=True)


def test_postgresql_15_json_parses_and_its_jit_finding_fires(pg15: LocalCluster) -> None:
    with pg15.target().connect() as conn:
        assert conn.info.server_version // 10000 == 15
        conn.execute("CREATE TABLE IF NOT EXISTS t (a int, g int, b text)")
        conn.execute("INSERT INTO t SELECT i, i % 7, md5(i::text) FROM generate_series(1, 20000) i")
        conn.execute("ANALYZE t")
        query = "SELECT g, count(*), sum(a) FROM t WHERE a > 10 GROUP BY g"
        for name, value in [("jit", "on"), ("jit_above_cost", "0"), ("jit_inline_above_cost", "0"), ("jit_optimize_above_cost", "0")]:
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        plan = explain(conn, query)
        assert plan.jit is not None and plan.jit_ms > 0, "Debian's PostgreSQL 15 has LLVM JIT"
        df = plan.frame()
        assert "Seq Scan" in set(df["node_type"]) and df["actual_rows"].iloc[-1] == 19990
        assert [f.rule for f in findings(plan)] == ["jit_overhead"]
        conn.execute("SELECT set_config('jit', 'off', false)")
        assert findings(explain(conn, query)) == []
