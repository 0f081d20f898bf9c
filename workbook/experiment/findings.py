"""Findings: what an executed plan shows, in words, and the knob that may fix it.

Each rule reads the measured plan (rows, loops, buffers, spills, JIT) and fires only on evidence,
never on the plan's shape alone: a sequential scan that returns most of a table is fine, one that
throws away 98 % of 50,000 rows is a missing index. Thresholds are module constants so a lesson can
quote them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from .plan import Plan, PlanNode

SEQ_SCAN_MIN_ROWS = 5_000  # rows a sequential scan must read before we call it out
SEQ_SCAN_MAX_SELECTIVITY = 0.10  # ... keeping at most this share of them
MISESTIMATE_FACTOR = 10.0
MISESTIMATE_MIN_ROWS = 100  # the larger of estimate/actual, per loop: tiny nodes do not matter
HEAP_FETCH_SHARE = 0.10
HEAP_FETCH_MIN = 100
NESTED_LOOP_MIN_LOOPS = 1_000
FILTER_REMOVED_RATIO = 10.0
FILTER_REMOVED_MIN = 1_000
JIT_MIN_MS = 5.0
JIT_SHARE = 0.10


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "warning" (costs time now) or "info"
    node_id: int | None
    node: str
    message: str  # what the plan shows, with its numbers
    knob: str  # what may fix it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _n(x: float | None) -> str:
    return f"{int(round(x or 0)):,}"


def _seq_scan(node: PlanNode) -> Finding | None:
    if "Seq Scan" not in node.node_type or not node.executed or node.get("Filter") is None:
        return None
    kept = node.actual_rows or 0.0
    removed = float(node.get("Rows Removed by Filter", 0) or 0) * max(node.loops, 1)
    scanned = kept + removed
    if scanned < SEQ_SCAN_MIN_ROWS or kept / scanned > SEQ_SCAN_MAX_SELECTIVITY:
        return None
    return Finding(
        "seq_scan_selective_filter", "warning", node.id, node.label,
        f"{node.label} read {_n(scanned)} rows to keep {_n(kept)} ({kept / scanned:.1%}) with filter {node.get('Filter')}",
        f"an index on {node.relation} matching the filter columns (try advise() or a what-if index)",
    )  # fmt: skip


def _misestimate(node: PlanNode) -> Finding | None:
    factor = node.misestimate
    if factor is None or factor < MISESTIMATE_FACTOR:
        return None
    est, act = float(node.get("Plan Rows", 0)), float(node.get("Actual Rows", 0))
    if max(est, act) < MISESTIMATE_MIN_ROWS:
        return None
    way = "under" if act > est else "over"
    return Finding(
        "row_misestimate", "warning", node.id, node.label,
        f"{node.label}: the planner expected {_n(est)} rows per loop and got {_n(act)} ({factor:.0f}x {way}estimate)",
        "fresh statistics (ANALYZE), a higher statistics target, or extended statistics "
        "(CREATE STATISTICS ... (dependencies, mcv)) on correlated columns",
    )  # fmt: skip


def _spill(node: PlanNode) -> Finding | None:
    if not node.spilled:
        return None
    detail = []
    if node.get("Sort Space Type") == "Disk":
        detail.append(f"sort used {node.get('Sort Space Used')} kB on disk ({node.get('Sort Method')})")
    if int(node.get("Hash Batches", 1) or 1) > 1:
        detail.append(f"hash split into {node.get('Hash Batches')} batches (planned {node.get('Original Hash Batches')})")
    if int(node.get("Disk Usage", 0) or 0) > 0:
        detail.append(f"aggregate wrote {node.get('Disk Usage')} kB to disk")
    temp = int(node.get("Temp Written Blocks", 0) or 0)
    if temp:
        detail.append(f"{temp:,} temp blocks written")
    return Finding(
        "spill_to_disk", "warning", node.id, node.label,
        f"{node.label} spilled to disk: {'; '.join(detail) or 'external method'}",
        "more work_mem for this query (SET work_mem = '64MB'), or fewer rows reaching it",
    )  # fmt: skip


def _heap_fetches(node: PlanNode) -> Finding | None:
    if node.node_type != "Index Only Scan" or not node.executed:
        return None
    fetches = float(node.get("Heap Fetches", 0) or 0) * max(node.loops, 1)
    rows = node.actual_rows or 0.0
    if fetches < HEAP_FETCH_MIN or fetches < HEAP_FETCH_SHARE * max(rows, 1.0):
        return None
    return Finding(
        "index_only_heap_fetches", "warning", node.id, node.label,
        f"{node.label} visited the table {_n(fetches)} times for {_n(rows)} rows: "
        "pages not marked all-visible, so the index-only scan is not index-only",
        f"VACUUM {node.relation} (sets the visibility map); tune autovacuum for write-heavy tables",
    )  # fmt: skip


def _nested_loop(node: PlanNode) -> Finding | None:
    if node.node_type != "Nested Loop" or len(node.children) < 2 or not node.executed:
        return None
    inner = node.children[1]
    if inner.loops < NESTED_LOOP_MIN_LOOPS:
        return None
    return Finding(
        "nested_loop_many_loops", "warning", node.id, node.label,
        f"{node.label}: the inner side ({inner.label}) ran {inner.loops:,} times"
        f" ({_n(inner.inclusive_ms)} ms in total)",
        "an index on the inner join key, or better row estimates so the planner picks a hash join",
    )  # fmt: skip


def _filter_removed(node: PlanNode) -> Finding | None:
    if not node.executed or "Seq Scan" in node.node_type:
        return None  # sequential scans are judged by _seq_scan
    removed = float(node.get("Rows Removed by Filter", 0) or 0) + float(node.get("Rows Removed by Join Filter", 0) or 0)
    removed *= max(node.loops, 1)
    kept = node.actual_rows or 0.0
    if removed < FILTER_REMOVED_MIN or removed < FILTER_REMOVED_RATIO * max(kept, 1.0):
        return None
    what = node.get("Filter") or node.get("Join Filter")
    return Finding(
        "rows_removed_by_filter", "warning", node.id, node.label,
        f"{node.label} fetched {_n(removed + kept)} rows and discarded {_n(removed)} by {what}",
        "move the filter column into the index (a composite or partial index), so rows are not fetched to be thrown away",
    )  # fmt: skip


def _jit(plan: Plan) -> Finding | None:
    jit_ms, exec_ms = plan.jit_ms, plan.execution_ms or 0.0
    if jit_ms < JIT_MIN_MS or jit_ms < JIT_SHARE * max(exec_ms, 1e-9):
        return None
    return Finding(
        "jit_overhead", "warning", None, "JIT",
        f"JIT compilation took {jit_ms:.1f} ms of {exec_ms:.1f} ms execution ({jit_ms / max(exec_ms, 1e-9):.0%}):"
        f" {(plan.jit or {}).get('Functions', '?')} functions compiled for a query this short",
        "SET jit = off (or raise jit_above_cost): the planner's cost estimate overshot",
    )  # fmt: skip


def _generic_plan(plan: Plan) -> Finding | None:
    cache = plan.raw.get("Workbook") or {}
    if cache.get("plan_cache") != "generic" or not cache.get("custom_plan"):
        return None
    return Finding(
        "generic_plan", "info", None, "plan cache",
        "timed as a prepared statement, which PostgreSQL runs with this generic plan from its sixth execution on;"
        f" for these values alone it would choose another: {cache['custom_plan']}",
        "SET plan_cache_mode = force_custom_plan (per role or session), or send the statement unprepared, when the"
        " plan for each call's values is the better one: an application that prepares statements (psycopg after"
        " 5 executions, pgbench -M prepared) gets this generic plan",
    )  # fmt: skip


NODE_RULES = (_seq_scan, _misestimate, _spill, _heap_fetches, _nested_loop, _filter_removed)


def findings(plan: Plan) -> list[Finding]:
    """Every rule that fires on ``plan``: node rules in plan order, then plan-wide ones."""
    out: list[Finding] = []
    for node in plan.nodes:
        for rule in NODE_RULES:
            f = rule(node)
            if f is not None:
                out.append(f)
    if (plan.raw.get("Workbook") or {}).get("plan_cache") == "generic":  # estimated without the parameter values
        out = [replace(f, knob=f"{f.knob}, after comparing the plan for these values (plan_cache_mode ="
                               " force_custom_plan): this generic plan was estimated without the parameter values")
               if f.rule == "row_misestimate" else f for f in out]  # fmt: skip
    for whole in (_jit, _generic_plan):
        found = whole(plan)
        if found is not None:
            out.append(found)
    return out
