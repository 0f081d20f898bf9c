"""Bring your own plan: EXPLAIN text (and JSON) pasted from psql, a log or a console reads into the same Plan.

The text and the JSON compared here come from ONE execution: the statement runs as
``EXPLAIN (ANALYZE, ..., FORMAT JSON)`` with ``auto_explain`` loaded in the session and
``client_min_messages = log``, so the server also sends the very same execution's plan in text
(same instrumentation, same times) as a LOG message. Tree, node types, relations, costs, rows,
loops, buffers and exclusive times must then agree exactly; psql's frames are produced by the real
``psql`` binary printing that text; PostgreSQL 15's text is read the same way.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workbook.cluster import LocalCluster
from workbook.dataset import load_shapes
from workbook.experiment import explain, findings
from workbook.experiment.plan import Plan
from workbook.experiment.plan_text import PlanTextError, describe, read_plan

from .conftest import REPO
from .test_experiment_plans import pg15  # noqa: F401  (the module-scoped PostgreSQL 15 cluster fixture)

PARALLEL = {"parallel_setup_cost": "0", "parallel_tuple_cost": "0", "min_parallel_table_scan_size": "0",
            "max_parallel_workers_per_gather": "2", "parallel_leader_participation": "on"}  # fmt: skip

# plans that are hard to account: a CTE scanned twice, an InitPlan used two levels below where it
# hangs, a correlated SubPlan, a hashed SubPlan, and never-executed branches
HARD = {
    "cte_initplan_subplan": """
        WITH busy AS MATERIALIZED (SELECT conversation_id, count(*) AS n FROM ai_app.messages GROUP BY 1)
        SELECT c.id, (SELECT max(n) FROM busy) AS top, (SELECT min(n) FROM busy) AS low,
               (SELECT count(*) FROM ai_app.messages m WHERE m.conversation_id = c.id) AS own
        FROM ai_app.conversations c WHERE c.id <= 3""",
    "initplan_below": """
        SELECT c.id FROM ai_app.conversations c
        WHERE c.id > (SELECT max(id) - 3 FROM ai_app.conversations)
          AND c.id NOT IN (SELECT conversation_id FROM ai_app.messages WHERE token_count > 1000000)
          AND EXISTS (SELECT 1 FROM ai_app.messages m WHERE m.conversation_id = c.id AND m.token_count > c.id)""",
    "never_executed": """
        SELECT c.id, m.id FROM ai_app.conversations c JOIN LATERAL (
            SELECT id FROM ai_app.messages m WHERE m.conversation_id = c.id ORDER BY id LIMIT 1) m ON true
        WHERE c.id < 0
        UNION ALL
        SELECT id, CASE WHEN id < 0 THEN (SELECT max(id) FROM ai_app.messages) END FROM ai_app.conversations WHERE id <= 2""",
}


def _auto_explain(conn: Any, fmt: str = "text") -> list[str]:
    """Load auto_explain in this session so every plan also comes back as a LOG message."""
    conn.execute("LOAD 'auto_explain'")
    for name, value in {"auto_explain.log_min_duration": "0", "auto_explain.log_analyze": "on",
                        "auto_explain.log_buffers": "on", "auto_explain.log_verbose": "on",
                        "auto_explain.log_settings": "on", "auto_explain.log_wal": "on",
                        "auto_explain.log_format": fmt, "client_min_messages": "log"}.items():  # fmt: skip
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    seen: list[str] = []
    conn.add_notice_handler(lambda d: seen.append(d.message_primary or ""))
    return seen


def both(conn: Any, sql: str, params: Any = None) -> tuple[Plan, Plan, str]:
    """(the JSON plan, the same execution's text plan, the text) of one EXPLAIN ANALYZE."""
    seen = conn.__dict__.setdefault("_wb_seen", None)
    if seen is None:
        seen = conn.__dict__["_wb_seen"] = _auto_explain(conn)
    seen.clear()
    plan = explain(conn, sql, params)
    logged = [m for m in seen if "Query Text: EXPLAIN" in m]
    assert len(logged) == 1, f"auto_explain sent {len(logged)} plans for the EXPLAIN"
    text = "LOG:  " + logged[0]
    return plan, read_plan(text), text


def assert_same(a: Plan, b: Plan, what: str) -> None:
    """Same tree, node types, relations, costs, rows, loops, buffers and times, node by node."""
    assert len(a.nodes) == len(b.nodes), f"{what}: {a.summary()} vs {b.summary()}"
    for x, y in zip(a.nodes, b.nodes, strict=True):
        where = f"{what}, node {x.id} {x.label}"
        assert (x.depth, x.label, x.relation, x.index, x.alias) == (y.depth, y.label, y.relation, y.index, y.alias), where
        for key in ("Node Type", "Parent Relationship", "Subplan Name", "Join Type", "Strategy", "Partial Mode",
                    "Parallel Aware", "Plan Rows", "Total Cost", "Startup Cost", "Actual Rows", "Actual Loops",
                    "Actual Total Time", "Filter", "Index Cond", "Hash Cond", "Workers Launched",
                    "Sort Method", "Hash Batches", "CTE Name"):  # fmt: skip
            assert x.get(key) == y.get(key), f"{where}: {key} {x.get(key)!r} != {y.get(key)!r}"
        # counters: the text leaves out the zeros JSON prints
        for key in ("Shared Hit Blocks", "Shared Read Blocks", "Temp Written Blocks", "WAL Records",
                    "Rows Removed by Filter", "Heap Fetches"):  # fmt: skip
            assert int(x.get(key, 0) or 0) == int(y.get(key, 0) or 0), f"{where}: {key}"
        assert len(x.get("Workers") or []) == len(y.get("Workers") or []), f"{where}: workers"
        assert (x.inclusive_ms, x.exclusive_ms) == pytest.approx((y.inclusive_ms, y.exclusive_ms), abs=1e-6), where
        assert x.misestimate == y.misestimate and x.stopped_early == y.stopped_early, where
    assert [f.rule for f in findings(a)] == [f.rule for f in findings(b)], what


def assert_accounted(plan: Plan, what: str) -> None:
    """Every executed node's time is counted once: the exclusive times add up to the root's inclusive."""
    total = plan.root.inclusive_ms or 0.0
    parts = sum(n.exclusive_ms or 0.0 for n in plan.nodes)
    assert all((n.exclusive_ms or 0.0) >= 0 for n in plan.nodes)
    assert parts == pytest.approx(total, rel=0.02, abs=0.02), f"{what}: exclusive sum {parts:.3f} vs root {total:.3f}"


@pytest.fixture(scope="module")
def conn(lab: LocalCluster) -> Iterator[Any]:
    with lab.target().connect() as c:
        yield c


def test_every_query_shape_reads_the_same_from_text_as_from_json(conn: Any) -> None:
    shapes = load_shapes()
    assert len(shapes) >= 15
    for name, qs in shapes.items():
        params = qs.sample(conn, "hot")
        plan, text_plan, _ = both(conn, qs.variant().statements[0], params)
        assert_same(plan, text_plan, name)
        assert text_plan.execution_ms is not None and text_plan.notes[:2] == ["format: text", text_plan.notes[1]]
        assert "auto_explain" in text_plan.notes[1]
        assert text_plan.sql.startswith("EXPLAIN"), "auto_explain's Query Text is kept as the plan's query"


@pytest.mark.parametrize("name", sorted(HARD))
def test_ctes_initplans_subplans_and_never_executed_branches(conn: Any, name: str) -> None:
    plan, text_plan, _ = both(conn, HARD[name])
    assert_same(plan, text_plan, name)
    assert_accounted(plan, name)
    kinds = {n.get("Parent Relationship") for n in plan.nodes}
    if name == "cte_initplan_subplan":
        assert {"InitPlan", "SubPlan"} <= kinds
        cte = next(n for n in plan.nodes if str(n.get("Subplan Name")).startswith("CTE busy"))
        scans = [n for n in plan.nodes if n.node_type == "CTE Scan"]
        assert len(scans) == 2 and cte.runs_elsewhere
        # the CTE's own time belongs to the CTE, not to the scan that first pulled its rows
        assert scans[0].exclusive_ms < cte.inclusive_ms and scans[0].owned_ms == pytest.approx(
            min(cte.inclusive_ms, scans[0].inclusive_ms), abs=1e-6)
    if name == "initplan_below":
        init = next(n for n in plan.nodes if n.get("Parent Relationship") == "InitPlan" and n.parent is plan.root)
        user = next(n for n in plan.nodes if n.owned_ms > 0)
        assert init.runs_elsewhere and user is not init.parent, "charged to the node whose condition reads it"
    if name == "never_executed":
        never = [n for n in plan.nodes if not n.executed]
        assert never and all(n.inclusive_ms is None and n.exclusive_ms is None for n in never)
        assert any(not n.executed for n in text_plan.nodes), "'never executed' is read from the text"


def test_parallel_plans_divide_by_processes(conn: Any) -> None:
    for name, value in PARALLEL.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    try:
        for sql in ("SELECT role, count(*) FROM ai_app.messages WHERE token_count > 10 GROUP BY role ORDER BY 2",
                    "SELECT m.id FROM ai_app.messages m JOIN ai_app.conversations c ON c.id = m.conversation_id"
                    " WHERE m.token_count > (SELECT avg(token_count) FROM ai_app.messages) ORDER BY m.created_at LIMIT 5"):  # fmt: skip
            plan, text_plan, text = both(conn, sql)
            assert_same(plan, text_plan, sql)
            assert_accounted(plan, sql)
            gather = next(n for n in plan.nodes if n.node_type.startswith("Gather"))
            assert gather.workers_launched and re.search(r"Worker \d:  actual time=", text)
            inner = gather.children[-1]
            assert inner.parallel_divisor == inner.loops // gather.loops, "processes = the input's loops per Gather loop"
            worker = next(n for n in text_plan.nodes if n.get("Workers"))
            assert all("Actual Loops" in w for w in worker.get("Workers")), "per-worker lines are read"
    finally:
        for name in PARALLEL:
            conn.execute(f"RESET {name}")


# ---- psql's frames: the real psql prints the text as it prints EXPLAIN's output ---------------
FRAMES = {
    "aligned": ["-P", "format=aligned"],
    "unaligned": ["-P", "format=unaligned"],
    "border0": ["-P", "border=0"],
    "border2": ["-P", "border=2"],
    "unicode": ["-P", "linestyle=unicode"],
    "unicode_border2": ["-P", "linestyle=unicode", "-P", "border=2"],
    "wrapped": ["-P", "format=wrapped", "-P", "columns=60"],
    "wrapped_border0": ["-P", "format=wrapped", "-P", "columns=50", "-P", "border=0"],
    "wrapped_unicode_border2": ["-P", "format=wrapped", "-P", "columns=45", "-P", "linestyle=unicode", "-P", "border=2"],
    "expanded": ["-x"],
    "csv": ["-P", "format=csv"],
    "tuples_only": ["-t"],
}


def _psql(cluster: LocalCluster, options: list[str], sql: str, variables: dict[str, str], *, terminal: bool = False) -> str:
    """psql's output (``terminal``: its notices on stderr and results on stdout, as a terminal shows them)."""
    dsn = cluster.target().endpoints[0].dsn
    args = [str(cluster.bins.bindir / "psql"), "-X", "-d", dsn, *options]
    env = {"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"}
    for k, v in variables.items():
        args += ["-v", f"{k}={v}"]
    out = subprocess.run(args, input=sql, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if terminal else subprocess.PIPE,
                         text=True, env=env, timeout=60, check=True)  # fmt: skip
    return out.stdout


def test_psql_frames_and_wrapped_lines_read_to_the_same_plan(conn: Any, lab: LocalCluster) -> None:
    plan, text_plan, text = both(conn, HARD["cte_initplan_subplan"])
    lines = text.split("\n")  # without "LOG:  duration ... plan:" and the query text
    body = "\n".join(lines[next(i for i, ln in enumerate(lines) if "  (cost=" in ln):])
    show_text = "SELECT line AS \"QUERY PLAN\" FROM unnest(string_to_array(:'plan', E'\\n')) AS line;"
    show_json = "SELECT :'plan' AS \"QUERY PLAN\";"
    for name, options in FRAMES.items():
        framed = _psql(lab, options, show_text, {"plan": body})
        assert framed.count("\n") >= body.count("\n"), name
        assert_same(text_plan, read_plan(framed), f"text in psql {name}")
        framed_json = _psql(lab, options, show_json, {"plan": plan.to_json() if name != "aligned" else json.dumps([plan.raw], indent=2)})
        assert_same(plan, read_plan(framed_json), f"JSON in psql {name}")
    # a GUI client's copy: every row a quoted CSV field (pgAdmin, DBeaver), here from COPY ... FORCE_QUOTE
    quoted = _psql(lab, [], "COPY (SELECT line AS \"QUERY PLAN\" FROM unnest(string_to_array(:'plan', E'\\n')) AS line)"
                   " TO STDOUT WITH (FORMAT csv, HEADER, FORCE_QUOTE *);", {"plan": body})  # fmt: skip
    assert all(ln.startswith('"') for ln in quoted.splitlines()[1:]) and quoted.splitlines()[0] == "QUERY PLAN"
    assert_same(text_plan, read_plan(quoted), "quoted CSV rows")
    assert_same(text_plan, read_plan(quoted.split("\n", 1)[1]), "quoted CSV rows without their header")
    # and a real EXPLAIN typed at psql's prompt (another execution: same tree, rows and loops)
    typed = _psql(lab, ["-e", "-P", "format=wrapped", "-P", "columns=70"],
                  "EXPLAIN (ANALYZE, BUFFERS) SELECT count(*) FROM ai_app.conversations WHERE id <= 30;", {})  # fmt: skip
    direct = read_plan(typed)
    assert direct.summary().startswith("Aggregate") and direct.nodes[-1].actual_rows == 30
    assert direct.sql == "SELECT count(*) FROM ai_app.conversations WHERE id <= 30", "the echoed statement is kept"


def test_server_log_entries_with_their_prefix(conn: Any, lab: LocalCluster) -> None:
    """auto_explain as it lands in the server's log: prefix, tab-indented lines, text and JSON."""
    log = lab.home / "nodes" / "primary" / "postgres.log"
    start = log.stat().st_size
    plan, _, _ = both(conn, HARD["initplan_below"])
    entries = log.read_bytes()[start:].decode()
    at = entries.rfind("Query Text: EXPLAIN")
    begin = entries.rfind("\n", 0, entries.rfind("duration:", 0, at)) + 1
    entry = entries[begin:]
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", entry) and "\t" in entry, entry[:200]
    assert_same(plan, read_plan("some earlier line\n" + entry + "\n2026-01-01 00:00:00 UTC [1] LOG:  next"), "server log")
    conn.execute("SELECT set_config('auto_explain.log_format', 'json', false)")
    try:
        conn.__dict__["_wb_seen"].clear()
        explain(conn, HARD["initplan_below"])
        logged = [m for m in conn.__dict__["_wb_seen"] if "Query Text" in m and "EXPLAIN" in m]
        as_json = read_plan("LOG:  " + logged[-1])
        assert as_json.notes[0] == "format: JSON" and as_json.sql.startswith("EXPLAIN")
        assert [n.label for n in as_json.nodes] == [n.label for n in plan.nodes]
    finally:
        conn.execute("SELECT set_config('auto_explain.log_format', 'text', false)")


def test_estimates_only_plan_says_what_it_can(conn: Any) -> None:
    text = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT * FROM ai_app.messages WHERE conversation_id = 7 ORDER BY created_at DESC LIMIT 20").fetchall())  # fmt: skip
    plan = read_plan(text)
    assert not plan.analyzed and plan.execution_ms is None
    assert any(n.startswith("estimates only") for n in plan.notes)
    assert plan.scans() and plan.scans()[0][1] == "messages" and plan.total_cost > 0
    assert all(n.actual_rows is None and n.exclusive_ms is None for n in plan.nodes) and findings(plan) == []
    said = "\n".join(describe(plan))
    assert "estimates only" in said and "the planner expects most of the cost in Seq Scan on messages" in said
    assert "Filter: (conversation_id = 7)" in said


BAD = {
    "unrelated": ("Hello,\nplease find attached the report.\n", r"^line 1 could not be read as an EXPLAIN plan"),
    "cut mid-line": ("Limit  (cost=0.29..1.20 rows=20 width=8) (actual time=0.02..0.1 rows=20 loops=1)\n"
                     "  ->  Index Scan using messages_pkey on messages  (cost=0.29..49",
                     r"^line 2 is cut off or garbled"),
    "cut in the tree": ("Hash Join  (cost=1.0..2.0 rows=1 width=4) (actual time=0.1..0.2 rows=1 loops=1)\n"
                        "  Hash Cond: (a.id = b.id)\n"
                        "  ->  Seq Scan on a  (cost=0.0..1.0 rows=1 width=4) (actual time=0.01..0.02 rows=1 loops=1)\n",
                        r"^the paste is truncated: the node at line 1 .* has 1 of its 2 inputs"),
    "header without plan": ("Result  (cost=0.01..0.02 rows=1 width=4)\n  InitPlan 1\n", r"InitPlan 1 at line 2 has no plan"),
    "footer says more": (" QUERY PLAN\n------------\n Result  (cost=0.00..0.01 rows=1 width=4)\n(3 rows)\n",
                         r"^the paste is truncated: psql counted 3 rows, 1 arrived; line 3"),
    "json cut": ('[{"Plan": {"Node Type": "Result",\n "Total Cost": 0.01', r"^line 2 could not be read as EXPLAIN JSON: the JSON ends"),
    "garbage in the tree": ("Result  (cost=0.00..0.01 rows=1 width=4)\n  this is not a plan line\n", r"^line 2 could not be read"),
    "empty": ("   \n\n", r"^the plan is empty"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_line_naming_the_line(case: str) -> None:
    text, pattern = BAD[case]
    with pytest.raises(PlanTextError) as err:
        read_plan(text)
    message = str(err.value)
    assert "\n" not in message and re.search(pattern, message), message


# ---- PostgreSQL 15 ------------------------------------------------------------------------------
def test_postgresql_15_text_reads_the_same_as_its_json(pg15: LocalCluster) -> None:  # noqa: F811
    with pg15.target().connect() as c:
        assert c.info.server_version // 10000 == 15
        c.execute("CREATE SCHEMA IF NOT EXISTS ai_app")
        c.execute("CREATE TABLE IF NOT EXISTS ai_app.conversations (id int PRIMARY KEY, title text)")
        c.execute("CREATE TABLE IF NOT EXISTS ai_app.messages (id int PRIMARY KEY, conversation_id int, token_count int,"
                  " role text, created_at timestamptz)")  # fmt: skip
        c.execute("INSERT INTO ai_app.conversations SELECT i, md5(i::text) FROM generate_series(1, 2000) i ON CONFLICT DO NOTHING")
        c.execute("INSERT INTO ai_app.messages SELECT i, 1 + i % 2000, i % 500, (ARRAY['user','assistant'])[1 + i % 2],"
                  " now() - i * interval '1 minute' FROM generate_series(1, 30000) i ON CONFLICT DO NOTHING")  # fmt: skip
        c.execute("ANALYZE")
        for sql in HARD.values():
            plan, text_plan, text = both(c, sql)
            assert_same(plan, text_plan, f"PG15 {sql[:40]}")
            assert_accounted(plan, f"PG15 {sql[:40]}")
        assert "(returns $" in text or "(returns $" in next(iter(n.get("Subplan Name") or "" for n in plan.nodes))
        for name, value in PARALLEL.items():
            c.execute("SELECT set_config(%s, %s, false)", (name, value))
        plan, text_plan, _ = both(c, "SELECT role, count(*) FROM ai_app.messages WHERE token_count > 10 GROUP BY role")
        assert_same(plan, text_plan, "PG15 parallel")
        assert any(n.node_type.startswith("Gather") for n in text_plan.nodes)


# ---- the command line, the notebook and the report -------------------------------------------
def test_explain_plan_file_from_a_file_and_stdin(conn: Any, tmp_path: Path) -> None:
    _, text_plan, text = both(conn, "SELECT * FROM ai_app.messages WHERE token_count > 900 ORDER BY created_at DESC LIMIT 10")
    f = tmp_path / "plan.txt"
    f.write_text(text)
    cmd = [sys.executable, "-m", "workbook", "explain", "--plan-file"]
    out = subprocess.run([*cmd, str(f), "--json"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [n["node_type"] for n in doc["nodes"]] == [n.node_type for n in text_plan.nodes]
    assert [n["parent_id"] for n in doc["nodes"]] == [None if n.parent is None else n.parent.id for n in text_plan.nodes]
    assert all(type(n["parent_id"]) is int for n in doc["nodes"][1:]), "node ids are whole numbers, not 0.0"
    assert doc["format"] == "text" and doc["relations"][0]["relation"].endswith("messages")
    assert "Filter" in " ".join(doc["relations"][0]["conditions"]) or doc["relations"][0]["conditions"]
    assert {f["rule"] for f in doc["findings"]} == {f.rule for f in findings(text_plan)}
    assert doc["advise"].startswith("workbook advise --sql ")
    out = subprocess.run([*cmd, "-"], input=text, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and "Seq Scan on messages" in out.stdout and "workbook advise --sql" in out.stdout, out.stderr
    bad = subprocess.run([*cmd, "-"], input="SELECT 1;\n", capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "line 1" in bad.stderr, bad.stderr
    missing = subprocess.run([*cmd, str(tmp_path / "nope.txt")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert missing.returncode != 0 and "nope.txt" in missing.stderr and missing.stderr.count("\n") == 1


def test_lab_explain_text_and_the_report_section(conn: Any, lab: LocalCluster, tmp_path: Path) -> None:
    from workbook.lab import Lab
    from workbook.report.pasted import render_plans
    from workbook.results import ResultsStore

    _, text_plan, text = both(conn, HARD["cte_initplan_subplan"])
    wb = Lab(target=lab.target(), store=ResultsStore(tmp_path / "home"), home=tmp_path / "home")
    plan = wb.explain_text(text)
    assert [n.label for n in plan.nodes] == [n.label for n in text_plan.nodes]
    page = render_plans([plan], title="pasted")
    assert "<svg" in page and "CTE Scan on busy" in page and "auto_explain" in page and "format: text" in page
    path = wb.report(tmp_path / "r.html", plans=[text])
    assert path.exists() and "CTE Scan on busy" in path.read_text()


def test_costs_off_timing_off_and_summary_off_read_too(conn: Any) -> None:
    sql = "SELECT c.id, count(*) FROM ai_app.conversations c JOIN ai_app.messages m ON m.conversation_id = c.id WHERE c.id < 40 GROUP BY c.id"
    for options in ("ANALYZE, COSTS OFF", "ANALYZE, TIMING OFF", "ANALYZE, SUMMARY OFF, BUFFERS OFF", "COSTS OFF"):
        text = "\n".join(r[0] for r in conn.execute(f"EXPLAIN ({options}) {sql}").fetchall())
        doc = conn.execute(f"EXPLAIN ({options}, FORMAT JSON) {sql}").fetchone()[0]
        a, b = read_plan(text), read_plan(json.dumps(doc))
        assert [(n.label, n.get("Plan Rows"), n.get("Actual Rows"), n.get("Actual Loops")) for n in a.nodes] == \
            [(n.label, n.get("Plan Rows"), n.get("Actual Rows"), n.get("Actual Loops")) for n in b.nodes], options
        if "TIMING OFF" in options:
            assert a.analyzed and all(n.inclusive_ms is None for n in a.nodes) and a.nodes[0].actual_rows
        if "SUMMARY OFF" in options:
            assert any(n.startswith("no 'Execution Time' line") for n in a.notes)


def test_older_servers_io_timing_lines_map_to_their_json_keys() -> None:
    # PostgreSQL 13-14 print "read=", 15 "shared/local read=", 16+ "shared read=": JSON keys differ the same way
    for line, keys in (("I/O Timings: read=1.250 write=0.500", {"I/O Read Time": 1.25, "I/O Write Time": 0.5}),
                       ("I/O Timings: shared/local read=1.250, temp write=0.100", {"I/O Read Time": 1.25, "Temp I/O Write Time": 0.1}),
                       ("I/O Timings: shared read=1.250, local write=0.100", {"Shared I/O Read Time": 1.25, "Local I/O Write Time": 0.1})):  # fmt: skip
        plan = read_plan(f"Seq Scan on t  (cost=0.00..35.50 rows=2550 width=4) (actual time=0.010..2.000 rows=2550 loops=1)\n"
                         f"  Buffers: shared read=12\n  {line}\nPlanning Time: 0.050 ms\nExecution Time: 2.100 ms")  # fmt: skip
        assert {k: plan.root.get(k) for k in keys} == keys and plan.shared_read == 12


def test_report_and_advise_take_a_plan_file(conn: Any, lab: LocalCluster, tmp_path: Path) -> None:
    _, text_plan, text = both(conn, "SELECT id FROM ai_app.messages WHERE token_count = 417 AND role = 'user'")
    f = tmp_path / "plan.log"
    f.write_text("2026-11-30 05:00:00.000 UTC [42] " + text.replace("\n", "\n\t") + "\n")
    base = [sys.executable, "-m", "workbook"]
    out = subprocess.run([*base, "report", "--plan-file", str(f), "--out", str(tmp_path / "p.html")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "1 plan(s)" in out.stdout, out.stderr
    assert "Seq Scan on messages" in (tmp_path / "p.html").read_text()
    bare = tmp_path / "bare.txt"
    bare.write_text(text.split("\n", 2)[2])  # the plan without its Query Text
    no_query = subprocess.run([*base, "advise", "--plan-file", str(bare)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert no_query.returncode != 0 and no_query.stderr.count("\n") == 1, no_query.stderr
    assert "holds no query text" in no_query.stderr and "messages (Filter: " in no_query.stderr
    advised = subprocess.run([*base, "--home", str(lab.home), "advise", "--plan-file", str(f), "--repeats", "3",
                              "--no-write-cost", "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert advised.returncode == 0, advised.stderr
    doc = json.loads(advised.stdout)
    assert "token_count" in json.dumps(doc) and "messages" in json.dumps(doc)


def test_an_auto_explain_notice_in_a_psql_session_is_read_up_to_the_result(lab: LocalCluster) -> None:
    session = _psql(lab, ["-q"], "LOAD 'auto_explain';\nSET auto_explain.log_min_duration = 0;\n"
                    "SET auto_explain.log_analyze = on;\nSET client_min_messages = log;\n"
                    "SELECT id FROM ai_app.messages WHERE token_count = 417 AND role = 'user' ORDER BY id LIMIT 3;\n", {},
                    terminal=True)  # fmt: skip
    plan = read_plan(session)  # the LOG notice, then the query's own result table
    assert plan.analyzed and plan.sql.startswith("SELECT id FROM ai_app.messages WHERE token_count = 417")
    assert [n.node_type for n in plan.nodes][0] == "Limit" and plan.execution_ms is not None


def test_explain_text_in_a_notebook_shows_the_plan_view(conn: Any, lab: LocalCluster, tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    _, _, text = both(conn, HARD["initplan_below"])
    (tmp_path / "plan.txt").write_text(text)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        f"from pathlib import Path\nfrom workbook.lab import attach_lab\nlab = attach_lab(home={str(lab.home)!r})\n"
        f"plan = lab.explain_text(Path({str(tmp_path / 'plan.txt')!r}).read_text())\nplan.summary()")]  # fmt: skip
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = nb.cells[0].outputs
    kinds = [k for o in outputs for k in o.get("data", {})]
    assert "image/svg+xml" in kinds and "text/markdown" in kinds, outputs
    said = next(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert "format: text" in said and "auto_explain" in said and "reads `" in said and "workbook advise --sql" in said
    assert "Hash" in next(o["data"]["text/plain"] for o in outputs if o.get("output_type") == "execute_result")
