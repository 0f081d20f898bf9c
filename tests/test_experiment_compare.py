"""Comparisons and knobs on real data: verdicts with intervals, catalogs left exactly as found."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from workbook.cluster import LocalCluster, Target
from workbook.dataset import checksum, load_indexes
from workbook.errors import ReadOnlyTarget, WorkbookError
from workbook.experiment import (
    Arm,
    Index,
    QueryFailed,
    Setting,
    StatisticsTarget,
    Variant,
    WhatIfIndex,
    compare,
    index_costs,
    verdict,
)  # fmt: skip
from workbook.results import ResultsStore

from .conftest import catalog_snapshot

CATALOG = load_indexes()


# ------------------------------------------------------------------ the statistics, on known samples
def test_verdict_reports_a_real_ratio_with_an_interval_and_calls_noise_noise() -> None:
    rng = np.random.default_rng(1)
    slow = rng.lognormal(np.log(8.0), 0.1, 40)
    fast = rng.lognormal(np.log(2.0), 0.1, 40)
    v = verdict(slow, fast)
    assert v.kind == "faster" and 3.6 < v.ratio < 4.4 and v.ci_low < v.ratio < v.ci_high and v.ci_low > 1
    assert v.text.startswith(f"{v.ratio:.2f}x faster, 95% CI")
    assert verdict(fast, slow).kind == "slower"
    same = verdict(rng.lognormal(0, 0.2, 40), rng.lognormal(0, 0.2, 40))
    assert same.kind == "no measurable difference" and same.ci_low <= 1 <= same.ci_high
    small = verdict(rng.lognormal(np.log(1.04), 0.01, 40), rng.lognormal(0, 0.01, 40))
    assert small.kind == "negligible" and small.ci_low > 1 and "under the 1.10x" in small.text
    slow = verdict(rng.lognormal(0, 0.01, 40), rng.lognormal(np.log(1.04), 0.01, 40))
    assert slow.kind == "negligible" and slow.text.startswith("negligible: 1.04x slower, 95% CI 1.0")


# ------------------------------------------------------------------ index comparisons
def test_the_right_index_turns_the_seq_scan_into_an_index_scan_and_is_measurably_faster(
    lab: LocalCluster, catalog_unchanged: None, tmp_path: Path
) -> None:
    store = ResultsStore(tmp_path)
    c = compare(lab.target(), "conversation_latest_messages", WhatIfIndex(CATALOG["messages_conversation_created"]),
                store=store, repeats=20)  # fmt: skip
    assert c.interleaved
    assert [s[0] for s in c.baseline.plan.scans()] == ["Seq Scan"]
    assert c.treatment.plan.scans() == [("Index Scan", "ai_app.messages", "messages_conversation_created")]
    assert c.verdict.kind == "faster" and c.verdict.ci_low > 1, c.verdict
    assert c.verdict.ratio > 3 and "faster, 95% CI" in c.verdict.text
    assert len(c.baseline.samples_ms) == len(c.treatment.samples_ms) == 20
    assert c.treatment.cache == "warm" and c.treatment.knobs[0]["size_bytes"] > 0
    assert any(f.rule == "seq_scan_selective_filter" for f in c.baseline.findings) and not c.treatment.findings
    runs, comps = store.runs(), store.comparisons()
    assert len(runs) == 2 and list(comps["verdict_kind"]) == ["faster"]
    ctx = store.run(c.treatment.run_id)["context"]
    with lab.target().connect() as conn:
        assert ctx["dataset"]["checksum"] == checksum(conn).value and ctx["dataset"]["scale"] > 0
        assert ctx["server_version"] == conn.execute("SHOW server_version").fetchone()[0]


def test_an_index_that_cannot_help_gives_no_measurable_difference(lab: LocalCluster, catalog_unchanged: None) -> None:
    # 99%: at 95% one run in twenty of two identical arms misses 1 by design, and this test runs on every push
    c = compare(lab.target(), "conversation_latest_messages", WhatIfIndex(CATALOG["audit_actor_time"]), repeats=30,
                confidence=0.99)  # fmt: skip
    assert not c.plan_changed
    assert not c.verdict.significant, c.verdict
    assert c.verdict.kind in ("no measurable difference", "negligible")  # negligible: real but < 1.10x


def test_the_plan_shown_is_the_plan_the_timed_prepared_statement_ran(lab: LocalCluster) -> None:
    # PostgreSQL plans a prepared statement's first five executions for their values and may run a generic plan from
    # the sixth: every timed execution is past that point, and the plan shown is the plan cache's, not a fresh one
    from workbook.dataset.shapes import shape
    from workbook.experiment import parse_plan, run_shape
    from workbook.experiment.runs import plan_signature
    from workbook.experiment.wire import to_positional

    with lab.target().connect() as c:
        if c.info.server_version < 160000:
            pytest.skip("EXPLAIN (GENERIC_PLAN), the independent check, needs PostgreSQL 16 (plan counts need 14)")
    r = run_shape(lab.target(), "tokens_by_model", repeats=6, param_sets=2)
    cache = r.plan.raw["Workbook"]
    # two parameter sets, each past its fifth execution before timing: the first set's statement ran 5 custom plans,
    # then its 3 of the 6 timed executions as generic ones (the other set may have its own statement, or share it)
    assert cache["plan_cache"] == "generic" and cache["custom_plans"] == 5, cache
    assert cache["generic_plans"] in (3, 6 + 5), cache
    qs = shape("tokens_by_model")
    positional = to_positional(qs.variant(None).statements[0])[0].decode()
    with lab.target().connect() as conn:  # independently: the generic plan, and the plan for these values
        generic = parse_plan(conn.execute(f"EXPLAIN (GENERIC_PLAN, VERBOSE, FORMAT JSON) {positional}").fetchone()[0])
        custom = parse_plan(conn.execute(psycopg.sql.SQL("EXPLAIN (VERBOSE, FORMAT JSON) ") + psycopg.sql.SQL(
            qs.variant(None).statements[0]), r.params[0]).fetchone()[0])  # fmt: skip
    assert plan_signature(r.plan) == plan_signature(generic), (r.plan.summary(), generic.summary())
    differs = plan_signature(custom) != plan_signature(generic)
    assert any(f.rule == "generic_plan" for f in r.findings) == differs
    if differs:
        assert cache["custom_plan"] == custom.summary()


def test_a_plan_explained_through_execute_keeps_every_value_and_a_vanished_statement_is_explained_plainly(
    conn: Any,
) -> None:
    from workbook.dataset.shapes import shape
    from workbook.experiment import explain
    from workbook.experiment.runs import timed_plan
    from workbook.experiment.wire import plan_source, statement_runner, wire_runner

    # a char(8) parameter: as EXECUTE's argument it must be cast to bpchar; "character" would mean character(1)
    conn.execute("CREATE TEMP TABLE codes (code char(8))")
    try:
        conn.execute("INSERT INTO codes VALUES ('BUILDING'), ('B')")
        run = statement_runner(conn, "SELECT * FROM codes WHERE code = %s", ["BUILDING"])
        for _ in range(6):
            assert run() == 1
        source = plan_source(run)
        assert source is not None
        prepared = source.execute_args()
        assert prepared is not None
        name, args = prepared
        assert "bpchar" in psycopg.sql.SQL(", ").join(args).as_string(conn)
        plan = explain(conn, "SELECT * FROM codes WHERE code = %s", ["BUILDING"], prepared=prepared)
        assert plan.root.actual_rows == 1 and plan.raw["Workbook"]["statement"] == name
    finally:
        conn.execute("DROP TABLE codes")
    # the server forgot the timed statement (psycopg's DEALLOCATE ALL, a pooler): the plan for the values, labelled so
    qs = shape("conversation_latest_messages")
    params = [qs.sample(conn, "hot")]
    run = wire_runner(conn, qs, qs.default_variant, params)
    for _ in range(6):
        run()
    conn.execute("DEALLOCATE ALL")
    plan = timed_plan(conn, run, qs, qs.default_variant, params[0], 30.0)
    assert plan.raw["Workbook"]["plan_cache"] == "unknown" and "was gone" in plan.raw["Workbook"]["source"]
    assert plan.analyzed


def test_the_arms_server_processes_share_one_cpu_while_timed_and_move_back_after(lab: LocalCluster) -> None:
    # per-CPU noise follows a process, not the clock: unpinned, 15 of 100 A/A comparisons were "different" at 99 %
    # (benchmarks/README.md, "Arms on one CPU"); every comparison on a local server now pins its arms to one CPU
    import os

    from workbook.experiment.pinning import same_cpu

    def allowed(pid: int) -> set[int]:
        return os.sched_getaffinity(pid)

    target = lab.target()
    with target.connect() as a, target.connect() as b:
        pids = [a.info.backend_pid, b.info.backend_pid]
        before = [allowed(p) for p in pids]
        with same_cpu([a, b]) as note:
            cpus = [allowed(p) for p in pids]
            assert cpus[0] == cpus[1] and len(cpus[0]) == 1, cpus
            assert note == f"server processes on CPU {min(cpus[0])}"
        assert [allowed(p) for p in pids] == before, "the processes get their CPU sets back"
        socket_dir = lab._socket_dir()
        with psycopg.connect(psycopg.conninfo.make_conninfo(target.primary.dsn, host=str(socket_dir))) as local:
            with same_cpu([a, local]) as note:
                assert note.startswith("not pinned: not a TCP connection") and allowed(pids[0]) == before[0]
    c = compare(target, "conversation_latest_messages", Variant("default"), repeats=3, stop_early=False)
    assert c.baseline.context["cpu_pinning"].startswith("server processes on CPU "), c.baseline.context["cpu_pinning"]


def test_what_if_leaves_the_catalog_exactly_as_before_even_when_the_query_fails(lab: LocalCluster, conn: Any) -> None:
    before = catalog_snapshot(conn)
    knob = WhatIfIndex(CATALOG["messages_metadata_gin_path"])
    with knob.applied(conn):
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'messages_metadata_gin_path'").fetchone()[0] == 1
        with lab.target().connect() as other:
            assert catalog_snapshot(other) == before, "other sessions never see a what-if index"
    assert catalog_snapshot(conn) == before
    with pytest.raises(psycopg.errors.UndefinedColumn):
        with knob.applied(conn):
            conn.execute("SELECT no_such_column FROM ai_app.messages")
    assert catalog_snapshot(conn) == before and conn.execute("SELECT 1").fetchone()[0] == 1


def test_real_index_knob_is_idempotent_reversible_and_records_build_time_and_size(conn: Any) -> None:
    before = catalog_snapshot(conn)
    knob = Index(CATALOG["conversations_org"])
    knob.apply(conn)
    knob.apply(conn)  # idempotent
    assert len(catalog_snapshot(conn)["indexes"]) == len(before["indexes"]) + 1
    assert knob.cost.build_seconds is not None and knob.cost.size_bytes > 0
    knob.revert(conn)
    knob.revert(conn)
    assert catalog_snapshot(conn) == before
    # "off" on an index that exists drops it, and revert puts it back
    Index(CATALOG["conversations_org"]).apply(conn)
    with_it = catalog_snapshot(conn)
    with Index(CATALOG["conversations_org"], on=False).applied(conn):
        assert catalog_snapshot(conn) == before
    assert catalog_snapshot(conn) == with_it
    Index(CATALOG["conversations_org"], on=False).apply(conn)
    assert catalog_snapshot(conn) == before


def test_concurrent_build_and_drop_leave_a_valid_index_then_nothing(conn: Any) -> None:
    before = catalog_snapshot(conn)
    knob = Index(CATALOG["usage_events_org_time"], concurrently=True)  # CONCURRENTLY needs autocommit: conn is
    with knob.applied(conn):
        valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ai_app.usage_events_org_time'::regclass"
        ).fetchone()[0]
        assert valid and knob.cost.size_bytes > 0
    assert catalog_snapshot(conn) == before


def test_real_index_comparison_is_sequential_and_reverts(lab: LocalCluster, catalog_unchanged: None) -> None:
    c = compare(lab.target(), "user_conversation_list", Index(CATALOG["conversations_user_activity"]), repeats=10)
    assert c.interleaved is False
    assert any(i == "conversations_user_activity" for _, _, i in c.treatment.plan.scans())


def lab_conn(conn: Any) -> Any:
    """A second connection to the server ``conn`` is on."""
    import psycopg

    return psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True)


def test_settings_and_statistics_targets_revert_to_what_they_were(conn: Any) -> None:
    conn.execute("SET random_page_cost = 3.3")
    with Setting("random_page_cost", 1.1).applied(conn):
        assert conn.execute("SHOW random_page_cost").fetchone()[0] == "1.1"
    assert conn.execute("SHOW random_page_cost").fetchone()[0] == "3.3", "restored to the session's value, not the default"
    with pytest.raises(WorkbookError, match="did you mean 'work_mem'"):
        Setting("wrok_mem", "64MB").apply(conn)
    with pytest.raises(WorkbookError, match="server restart"):
        Setting("shared_buffers", "1GB").apply(conn)
    # one knob on two connections keeps what it found on each: no state carried from one arm to the other
    knob = Setting("random_page_cost", 1.1)
    with lab_conn(conn) as other:
        other.execute("SET random_page_cost = 7")
        knob.apply(conn)
        knob.apply(other)
        assert other.execute("SHOW random_page_cost").fetchone()[0] == "1.1", "applied on the second connection too"
        knob.revert(other)
        assert other.execute("SHOW random_page_cost").fetchone()[0] == "7"
        assert conn.execute("SHOW random_page_cost").fetchone()[0] == "1.1", "still applied on the first"
        knob.revert(conn)
        assert conn.execute("SHOW random_page_cost").fetchone()[0] == "3.3"
    target_of = "SELECT attstattarget FROM pg_attribute WHERE attrelid = 'ai_app.messages'::regclass AND attname = 'org_id'"
    before = conn.execute(target_of).fetchone()[0]
    with StatisticsTarget("ai_app.messages", ["org_id"], 1000).applied(conn):
        assert conn.execute(target_of).fetchone()[0] == 1000
    assert conn.execute(target_of).fetchone()[0] == before


def test_variant_comparison_n_plus_one_vs_join(lab: LocalCluster, catalog_unchanged: None) -> None:
    # with the index both need (each arm builds its own what-if copy), what is left is 31 round trips vs one
    spec = CATALOG["messages_conversation_created"]
    same = (Arm("one join", knobs=(Variant("one_join"), WhatIfIndex(spec))), Arm("n+1", knobs=(WhatIfIndex(spec),)))
    with pytest.raises(WorkbookError, match="same name"):
        compare(lab.target(), "conversation_list_n_plus_one", *same, repeats=3)
    other = dataclasses.replace(spec, name="messages_conversation_created_b")
    c = compare(lab.target(), "conversation_list_n_plus_one",
                Arm("one join", knobs=(Variant("one_join"), WhatIfIndex(spec))),
                Arm("n+1", knobs=(WhatIfIndex(other),)), repeats=15)  # fmt: skip
    assert c.interleaved
    assert c.baseline.variant == "n_plus_one" and c.treatment.variant == "one_join"
    assert c.verdict.kind == "faster", c.verdict


# ------------------------------------------------------------------ writes and failures
def test_index_costs_measure_the_write_slowdown_and_leave_nothing(lab: LocalCluster, conn: Any) -> None:
    before = catalog_snapshot(conn), conn.execute("SELECT count(*), max(id) FROM ai_app.messages").fetchone()
    fts = index_costs(lab.target(), CATALOG["messages_content_fts"], rounds=2, reps=15)
    assert fts.write_shapes == ("insert_message",) and fts.size_bytes > 0 and fts.build_seconds > 0
    assert fts.write_ratio is not None and fts.write_ci[0] <= fts.write_ratio <= fts.write_ci[1]
    hnsw = index_costs(lab.target(), CATALOG["chunks_embedding_hnsw"], rounds=2, sample_rows=300)
    assert hnsw.write_shapes == ("bulk insert of sample rows",)
    assert hnsw.write_ratio > 2 and hnsw.write_ci[0] > 1, "an HNSW graph makes inserts several times slower"
    assert (catalog_snapshot(conn), conn.execute("SELECT count(*), max(id) FROM ai_app.messages").fetchone()) == before


def test_write_shape_timing_is_rolled_back(lab: LocalCluster, conn: Any) -> None:
    before = conn.execute("SELECT count(*) FROM ai_app.messages").fetchone()[0]
    c = compare(lab.target(), "insert_message", Setting("synchronous_commit", "off"), repeats=5)
    assert c.baseline.plan.root.node_type == "ModifyTable"
    assert conn.execute("SELECT count(*) FROM ai_app.messages").fetchone()[0] == before
    with pytest.raises(WorkbookError, match="index_costs"):
        compare(lab.target(), "insert_message", WhatIfIndex(CATALOG["messages_conversation_id"]), repeats=5)


def test_a_failing_variant_reverts_every_knob(lab: LocalCluster, conn: Any, tmp_path: Path) -> None:
    from workbook.dataset.shapes import parse_shape

    broken = parse_shape(
        "-- shape: broken\n-- title: t\n-- params: org\n-- variant: default\nSELECT nope FROM ai_app.messages WHERE org_id = %(org_id)s\n"
    )
    before = catalog_snapshot(conn)
    with pytest.raises(QueryFailed, match='column "nope" does not exist'):
        compare(lab.target(), broken, [WhatIfIndex(CATALOG["messages_org_created"]), Setting("work_mem", "1MB")], repeats=3)
    assert catalog_snapshot(conn) == before


def test_read_only_target_refuses_index_knobs_but_measures_settings(lab: LocalCluster) -> None:
    ro = Target.from_dsn(lab.target().primary.dsn)
    with pytest.raises(ReadOnlyTarget):
        compare(ro, "conversation_latest_messages", WhatIfIndex(CATALOG["messages_conversation_created"]), repeats=3)
    c = compare(ro, "conversation_latest_messages", Setting("enable_seqscan", "off"), repeats=3)
    assert c.baseline.plan is not None and Arm().label == "baseline"
