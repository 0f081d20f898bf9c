"""Each finding rule fires on a real plan built to trigger it, and not on the same query once fixed.

(The JIT rule needs a server with LLVM: it is tested on Debian's PostgreSQL 15 in test_experiment_plans.)
"""

from __future__ import annotations

from typing import Any

from workbook.dataset import load_indexes, shape
from workbook.experiment import Setting, Statistics, WhatIfIndex, explain, findings


def rules(conn: Any, query: str, params: Any = None) -> list[str]:
    return [f.rule for f in findings(explain(conn, query, params))]


def test_selective_seq_scan_fires_without_an_index_and_not_with_it(conn: Any, catalog_unchanged: None) -> None:
    qs = shape("conversation_latest_messages")
    query, params = qs.variant().statements[0], qs.sample(conn, "hot")
    found = findings(explain(conn, query, params))
    seq = [f for f in found if f.rule == "seq_scan_selective_filter"]
    assert seq and "Seq Scan on messages" in seq[0].message and "index" in seq[0].knob
    with WhatIfIndex(load_indexes()["messages_conversation_created"]).applied(conn):
        assert "seq_scan_selective_filter" not in rules(conn, query, params)


def test_misestimate_fires_on_correlated_columns_and_extended_statistics_fix_it(conn: Any, catalog_unchanged: None) -> None:
    conn.execute("CREATE TABLE public.wb_corr AS SELECT i, i % 100 AS a, i % 100 AS b FROM generate_series(1, 100000) i")
    try:
        conn.execute("ANALYZE public.wb_corr")
        query = "SELECT count(*) FROM public.wb_corr WHERE a = 7 AND b = 7"
        found = [f for f in findings(explain(conn, query)) if f.rule == "row_misestimate"]
        assert found and "underestimate" in found[0].message, found
        factor = explain(conn, query).nodes[-1].misestimate
        assert factor is not None and factor >= 50, "a = 7 AND b = 7 is 1% of rows; independence guesses 0.01%"
        with Statistics("public.wb_corr", ["a", "b"], kinds=("dependencies",)).applied(conn):
            assert "row_misestimate" not in rules(conn, query)
        assert "row_misestimate" in rules(conn, query), "revert dropped the statistics and re-analyzed"
    finally:
        conn.execute("DROP TABLE public.wb_corr")


def test_spill_fires_with_tiny_work_mem_and_not_with_enough(conn: Any) -> None:
    query = "SELECT id, content FROM ai_app.messages ORDER BY content LIMIT 5000"
    with Setting("work_mem", "64kB").applied(conn):
        spills = [f for f in findings(explain(conn, query)) if f.rule == "spill_to_disk"]
    assert spills and "on disk" in spills[0].message and "work_mem" in spills[0].knob
    with Setting("work_mem", "256MB").applied(conn):
        assert "spill_to_disk" not in rules(conn, query)
    assert conn.execute("SHOW work_mem").fetchone()[0] == "4MB", "the setting was reverted"


def test_heap_fetches_fire_before_vacuum_and_not_after(conn: Any, catalog_unchanged: None) -> None:
    conn.execute("CREATE TABLE public.wb_ios (a int, pad text) WITH (autovacuum_enabled = off)")
    try:
        conn.execute("INSERT INTO public.wb_ios SELECT i, 'x' FROM generate_series(1, 50000) i")
        conn.execute("CREATE INDEX wb_ios_a ON public.wb_ios (a)")
        conn.execute("ANALYZE public.wb_ios")
        query = "SELECT a FROM public.wb_ios WHERE a < 20000"
        with Setting("enable_seqscan", "off").applied(conn), Setting("enable_bitmapscan", "off").applied(conn):
            found = findings(explain(conn, query))
            assert [f.rule for f in found] == ["index_only_heap_fetches"] and "VACUUM" in found[0].knob
            conn.execute("VACUUM public.wb_ios")
            assert rules(conn, query) == []
    finally:
        conn.execute("DROP TABLE public.wb_ios")


def test_nested_loop_with_a_huge_inner_loop_count_fires_and_hash_join_does_not(conn: Any) -> None:
    query = (
        "SELECT count(*) FROM ai_app.conversations c JOIN ai_app.users u ON u.id = c.user_id AND u.display_name <> c.title"
    )
    with Setting("enable_hashjoin", "off").applied(conn), Setting("enable_mergejoin", "off").applied(conn):
        found = [f for f in findings(explain(conn, query)) if f.rule == "nested_loop_many_loops"]
    assert found and "ran" in found[0].message
    assert "nested_loop_many_loops" not in rules(conn, query)


def test_rows_removed_by_filter_fires_when_the_index_misses_a_column(conn: Any, catalog_unchanged: None) -> None:
    org = shape("usage_per_org_per_day").sample(conn, "hot")["org_id"]
    query = "SELECT id FROM ai_app.messages WHERE org_id = %(org)s AND role = 'system'"
    catalog = load_indexes()
    with WhatIfIndex(catalog["messages_org_created"]).applied(conn):
        conn.execute("SELECT set_config('enable_seqscan', 'off', true)")
        found = [f for f in findings(explain(conn, query, {"org": org})) if f.rule == "rows_removed_by_filter"]
        assert found and "discarded" in found[0].message and "role" in found[0].message
    spec = catalog["messages_org_created"]
    fixed = type(spec)(name="wb_org_role", table="messages", keys=("org_id", "role"))
    with WhatIfIndex(fixed).applied(conn):
        assert "rows_removed_by_filter" not in rules(conn, query, {"org": org})


# ---- early termination: fewer rows than estimated because the executor stopped early is no misestimate
def test_a_sort_or_scan_cut_short_by_limit_is_not_a_misestimate(conn: Any) -> None:
    sort = explain(conn, "SELECT * FROM ai_app.messages ORDER BY created_at DESC LIMIT 20")
    assert sort.summary() == "Limit > Sort > Seq Scan on messages"
    limit, sorted_, scan = sort.nodes
    assert sorted_.stopped_early and sorted_.misestimate is None, "the sort returned 20 of its rows: stopped, not wrong"
    assert not scan.stopped_early and scan.misestimate is not None, "the Sort read all of the scan: it is judged"
    assert "row_misestimate" not in [f.rule for f in findings(sort)]
    walk = explain(conn, "SELECT * FROM ai_app.messages ORDER BY id LIMIT 20")
    assert walk.nodes[1].node_type == "Index Scan" and walk.nodes[1].stopped_early
    assert "row_misestimate" not in [f.rule for f in findings(walk)]
    frame = sort.frame()
    assert list(frame["stopped_early"]) == [False, True, False]


def test_a_limit_that_ran_out_of_rows_stopped_nothing(conn: Any) -> None:
    # the planner expects thousands of rows, the filter keeps none: the Limit never reaches 20,
    # so the Sort and the scan under it ran to the end and their estimates are judged
    plan = explain(conn, "SELECT * FROM ai_app.messages WHERE created_at < '1990-01-01'::timestamptz + "
                         "(id % 2) * interval '0 s' ORDER BY created_at DESC LIMIT 20")  # fmt: skip
    limit, *below = plan.nodes
    assert limit.node_type == "Limit" and limit.actual_rows == 0 and float(limit.raw["Plan Rows"]) >= 1
    assert below and not any(n.stopped_early for n in below), plan.summary()
    assert any(n.misestimate is not None and n.misestimate > 1 for n in below)


def _node(node_type: str, est: float, act: float, *children: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"Node Type": node_type, "Plan Rows": est, "Actual Rows": act, "Actual Loops": 1,
            "Actual Total Time": 1.0, **extra, "Plans": list(children)}  # fmt: skip


def test_semi_join_inner_merge_join_sides_and_exists_subplans_stop_early() -> None:
    from workbook.experiment import parse_plan

    semi = parse_plan({"Plan": _node("Nested Loop", 100, 90, _node("Seq Scan", 100, 100),
                                     _node("Index Scan", 5000, 1), **{"Join Type": "Semi"})})  # fmt: skip
    outer, inner = semi.nodes[1], semi.nodes[2]
    assert inner.stopped_early and inner.misestimate is None and not outer.stopped_early
    inner_join = parse_plan({"Plan": _node("Nested Loop", 100, 90, _node("Seq Scan", 100, 100),
                                           _node("Index Scan", 5000, 1), **{"Join Type": "Inner"})})  # fmt: skip
    assert not inner_join.nodes[2].stopped_early and inner_join.nodes[2].misestimate == 5000
    merge = parse_plan({"Plan": _node("Merge Join", 10, 10, _node("Index Scan", 10, 10), _node("Index Scan", 90000, 12))})
    assert merge.nodes[2].stopped_early and merge.nodes[2].misestimate is None
    exists = parse_plan({"Plan": _node("Seq Scan", 1000, 10, _node("Index Scan", 500, 1, **{
        "Parent Relationship": "SubPlan", "Subplan Name": "SubPlan 1"}), Filter="(EXISTS(SubPlan 1))")})  # fmt: skip
    assert exists.nodes[1].stopped_early and exists.nodes[1].misestimate is None
    # a blocking node in between: the Limit stops the Hash Join, not the Seq Scan the Hash drained
    blocked = parse_plan({"Plan": _node("Limit", 10, 10, _node("Hash Join", 1000, 10, _node("Seq Scan", 1000, 12),
                                        _node("Hash", 50000, 50000, _node("Seq Scan", 50000, 50000))))})  # fmt: skip
    join, probe, hash_, drained = blocked.nodes[1:]
    assert join.stopped_early and probe.stopped_early and not hash_.stopped_early and not drained.stopped_early
    # an underestimate stays an underestimate even where the node was stopped early
    under = parse_plan({"Plan": _node("Limit", 10, 10, _node("Index Scan", 2, 10))})
    assert under.nodes[1].misestimate == 5 and under.nodes[1].misestimate_direction == "under"


def test_plan_diff_names_what_a_change_removed_added_and_kept() -> None:
    from workbook.experiment import parse_plan, plan_diff

    before = parse_plan({"Plan": _node("Limit", 20, 20, _node("Sort", 90, 20, _node("Seq Scan", 90, 95,
                                       **{"Relation Name": "messages"})))})  # fmt: skip
    after = parse_plan({"Plan": _node("Limit", 20, 20, _node("Index Scan", 20, 20, **{
        "Relation Name": "messages", "Index Name": "messages_conversation_created"}))})  # fmt: skip
    rows = {r["node"]: r for r in plan_diff(before, after)}
    assert rows["Limit"]["change"] == "kept" and rows["Sort"]["change"] == "removed"
    assert rows["Seq Scan on messages"]["change"] == "removed" and rows["Seq Scan on messages"]["rows_after"] is None
    added = rows["Index Scan using messages_conversation_created on messages"]
    assert added["change"] == "added" and added["rows_before"] is None and added["rows_after"] == 20


def test_a_generic_plan_that_differs_from_the_values_own_plan_is_named_and_nothing_else_is() -> None:
    from workbook.experiment import parse_plan

    def plan(cache: dict[str, Any] | None) -> Any:
        doc: dict[str, Any] = {"Plan": {"Node Type": "Seq Scan", "Relation Name": "t", "Plan Rows": 1, "Actual Rows": 1,
                                        "Actual Loops": 1}, "Execution Time": 1.0}  # fmt: skip
        if cache is not None:
            doc["Workbook"] = cache
        return parse_plan([doc])

    differs = findings(plan({"plan_cache": "generic", "custom_plan": "Index Scan using t_pkey on t"}))
    assert [f.rule for f in differs] == ["generic_plan"] and "Index Scan using t_pkey on t" in differs[0].message
    assert "force_custom_plan" in differs[0].knob
    for same in ({"plan_cache": "generic"}, {"plan_cache": "custom"}, None):  # the same plan, a custom one, none known
        assert not [f for f in findings(plan(same)) if f.rule == "generic_plan"]
