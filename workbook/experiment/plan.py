"""Query plans: run ``EXPLAIN (ANALYZE, BUFFERS, SETTINGS, WAL, VERBOSE, FORMAT JSON)`` and parse it.

:func:`explain` always runs the statement inside a transaction (or a savepoint, when the caller
is already in one) that is **rolled back**, so an ``INSERT``/``UPDATE``/``DELETE`` shows its
real plan and leaves every row as it was. A statement timeout bounds a runaway query.

:class:`Plan` holds the tree of :class:`PlanNode` and a DataFrame view (one row per node):
estimated vs actual rows (both × loops), the misestimate factor, inclusive and exclusive time,
buffers, spills and parallel workers. The parser reads the JSON of PostgreSQL 13 to 18: keys that
a version lacks are simply absent (``Shared I/O Read Time`` is ``I/O Read Time`` before 16,
``Actual Rows`` became fractional in 18, ``Disabled`` and ``Index Searches`` are new in 18).

Time accounting follows the convention of explain.depesz.com and PEV2: a node's inclusive time is
``Actual Total Time × Actual Loops``; inside a parallel plan the loops are spread over the
processes, so it is divided by their number (the loops of the Gather's input per Gather loop:
workers launched + the leader when it took part); exclusive time is inclusive minus the time of
what ran inside the node's clock, never below zero. What ran inside a node's clock is its inputs
and its SubPlans, and also: a CTE's plan runs when a ``CTE Scan`` pulls rows from it, so its time
is inside the scans' clocks (charged to them in plan order), not its owner's; an InitPlan runs
when its value is first needed, inside the clock of the node whose expressions name it
(``$0`` before PostgreSQL 17, ``(InitPlan 1).col1`` after; a Gather's ``Params Evaluated``; for
a node inside a parallel plan, the Gather that evaluated it before starting its workers), which
may lie below the node it hangs from. Every executed node's time is thus counted once, and the
exclusive times add up to the root's inclusive time.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ReadOnlyTarget, WorkbookError
from ..statement import check_statement, fetch_rows, session_read_only

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    import psycopg
    import psycopg.sql

DEFAULT_TIMEOUT_S = 60.0
# nodes that read all of their input before they return a row: a Limit above them cannot stop what is below
_BLOCKING = frozenset({"Sort", "Hash", "HashSetOp"})


class QueryFailed(WorkbookError):
    """The server rejected or aborted the statement (syntax error, timeout ...); nothing changed."""


@dataclass
class PlanNode:
    """One node of an executed (or estimated) plan."""

    id: int
    node_type: str
    raw: dict[str, Any] = field(repr=False)
    children: list[PlanNode] = field(default_factory=list, repr=False)
    parent: PlanNode | None = field(default=None, repr=False)
    depth: int = 0
    parallel_divisor: int = 1  # processes sharing this node's loops (inside Gather: workers + leader)
    runs_elsewhere: bool = False  # a CTE or InitPlan whose time is inside another node's clock than its parent's
    owned_ms: float = 0.0  # time of CTEs/InitPlans hanging elsewhere that ran inside this node's clock

    # ---- identity
    @property
    def relation(self) -> str | None:
        rel = self.raw.get("Relation Name")
        if rel is None:
            return None
        schema = self.raw.get("Schema")
        return f"{schema}.{rel}" if schema else rel

    @property
    def alias(self) -> str | None:
        return self.raw.get("Alias")

    @property
    def index(self) -> str | None:
        return self.raw.get("Index Name")

    @property
    def label(self) -> str:
        """``Index Scan using i on messages m``-style one-liner, as EXPLAIN's text format prints."""
        parts = [("Parallel " if self.raw.get("Parallel Aware") else "") + self.node_type]
        if self.raw.get("Strategy") and self.node_type == "Aggregate":  # named as the text format names it
            prefix = {"Sorted": "Group", "Hashed": "Hash", "Mixed": "Mixed"}.get(self.raw["Strategy"], "")
            parts = [f"{prefix}Aggregate"]
        if self.index:
            parts.append(f"using {self.index}")
        if self.raw.get("Relation Name"):
            parts.append(f"on {self.raw['Relation Name']}")
            if self.alias and self.alias != self.raw["Relation Name"]:
                parts.append(self.alias)
        elif self.raw.get("CTE Name"):
            parts.append(f"on {self.raw['CTE Name']}")
        if self.raw.get("Subplan Name"):
            parts.insert(0, f"[{self.raw['Subplan Name']}]")
        return " ".join(parts)

    # ---- rows
    @property
    def loops(self) -> int:
        return int(self.raw.get("Actual Loops", 1 if "Actual Rows" in self.raw else 0))

    @property
    def executed(self) -> bool:
        return "Actual Loops" in self.raw and self.loops > 0

    @property
    def estimated_rows(self) -> float:
        """The planner's rows per loop times the loops that ran (what it expected in total)."""
        return float(self.raw.get("Plan Rows", 0)) * max(self.loops, 1)

    @property
    def actual_rows(self) -> float | None:
        if "Actual Rows" not in self.raw:
            return None
        return float(self.raw["Actual Rows"]) * self.loops

    @property
    def stopped_early(self) -> bool:
        """Whether the executor stopped pulling rows from this node before it ran out.

        A node under a ``Limit`` that reached its count (with no node between them that reads all its input first: a
        Sort, a Hash, a hashed or plain Aggregate), the inner side of a semi or anti join (it stops
        at the first match), either side of a Merge Join (it stops when the other side ends) and
        an ``EXISTS`` subplan (it stops at its first row) return fewer rows than they would have:
        the planner's estimate is for a complete run, so fewer actual rows is not a misestimate.
        """
        if self.node_type == "Hash":
            return False  # it hands the whole table it built to its join at once
        child: PlanNode = self
        node = self.parent
        if self.raw.get("Parent Relationship") == "SubPlan" and self.raw.get("Subplan Name"):
            name = str(self.raw["Subplan Name"])
            if any(name in str(v) and "EXISTS" in str(v).upper() for a in self._ancestors() for v in a.raw.values()):
                return True
        while node is not None:
            nt = node.node_type
            if nt == "Limit":
                # a Limit that returned fewer rows than it planned (which is at most its count) never
                # reached its count: its input ran out, nothing under it was stopped
                return not (node.executed and float(node.raw["Actual Rows"]) < float(node.raw.get("Plan Rows", 0)))
            if nt in ("Nested Loop", "Merge Join", "Hash Join"):
                semi = str(node.raw.get("Join Type", "")) in ("Semi", "Anti", "Right Semi", "Right Anti")
                inner = len(node.children) > 1 and child is node.children[1]
                if nt == "Merge Join" or (semi and inner and nt == "Nested Loop"):
                    return True
            hashed = node.raw.get("Strategy") in ("Hashed", "Plain", "Mixed") and nt in ("Aggregate", "SetOp")
            if nt in _BLOCKING or hashed:
                return False  # it read all of its input before returning anything
            child, node = node, node.parent
        return False

    def _ancestors(self) -> list[PlanNode]:
        out, node = [], self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    @property
    def misestimate(self) -> float | None:
        """How many times off the row estimate was (≥ 1), per loop; None when not executed, or
        when the node returned fewer rows only because the executor stopped it early."""
        if not self.executed:
            return None
        est = max(float(self.raw.get("Plan Rows", 0)), 1.0)
        act = max(float(self.raw["Actual Rows"]), 1.0)
        if act < est and self.stopped_early:
            return None
        return max(est, act) / min(est, act)

    @property
    def misestimate_direction(self) -> str | None:
        if self.misestimate is None:
            return None
        est, act = float(self.raw.get("Plan Rows", 0)), float(self.raw["Actual Rows"])
        return "under" if act > est else "over" if act < est else "exact"

    # ---- time (milliseconds)
    @property
    def inclusive_ms(self) -> float | None:
        if not self.executed or "Actual Total Time" not in self.raw:
            return None
        return float(self.raw["Actual Total Time"]) * self.loops / self.parallel_divisor

    @property
    def exclusive_ms(self) -> float | None:
        inc = self.inclusive_ms
        if inc is None:
            return None
        kids = sum(c.inclusive_ms or 0.0 for c in self.children if not c.runs_elsewhere)
        return max(inc - kids - self.owned_ms, 0.0)

    # ---- what the node did
    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def spilled(self) -> bool:
        """A sort, hash or aggregate that wrote to disk instead of staying in ``work_mem``."""
        if self.raw.get("Sort Space Type") == "Disk" or "external" in str(self.raw.get("Sort Method", "")):
            return True
        if int(self.raw.get("Hash Batches", 1) or 1) > 1:
            return True
        if int(self.raw.get("Disk Usage", 0) or 0) > 0 or int(self.raw.get("HashAgg Batches", 1) or 1) > 1:
            return True
        return False

    @property
    def workers_launched(self) -> int | None:
        value = self.raw.get("Workers Launched")
        return None if value is None else int(value)

    def walk(self) -> list[PlanNode]:
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out


@dataclass
class Plan:
    """A parsed EXPLAIN: the node tree plus the statement-level figures."""

    root: PlanNode
    raw: dict[str, Any] = field(repr=False)
    sql: str = ""
    params: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # what reading it showed (format, estimates only ...)

    @property
    def analyzed(self) -> bool:
        return "Execution Time" in self.raw

    @property
    def execution_ms(self) -> float | None:
        v = self.raw.get("Execution Time")
        return None if v is None else float(v)

    @property
    def planning_ms(self) -> float | None:
        v = self.raw.get("Planning Time")
        return None if v is None else float(v)

    @property
    def total_cost(self) -> float:
        return float(self.root.raw.get("Total Cost", 0.0))

    @property
    def settings(self) -> dict[str, str]:
        """Settings that differ from the built-in defaults (``EXPLAIN (SETTINGS)``)."""
        return dict(self.raw.get("Settings") or {})

    @property
    def jit(self) -> dict[str, Any] | None:
        return self.raw.get("JIT")

    @property
    def jit_ms(self) -> float:
        jit = self.jit or {}
        timing = jit.get("Timing") or {}
        total = timing.get("Total")
        if isinstance(total, dict):  # PG 15+: {"Total": {"Time": ...}} in some builds
            total = total.get("Time")
        return float(total or 0.0)

    @property
    def nodes(self) -> list[PlanNode]:
        return self.root.walk()

    @property
    def shared_hit(self) -> int:
        return int(self.root.raw.get("Shared Hit Blocks", 0) or 0)

    @property
    def shared_read(self) -> int:
        return int(self.root.raw.get("Shared Read Blocks", 0) or 0)

    @property
    def cache_state(self) -> str:
        """``warm`` when every page came from shared buffers, else how many were read."""
        hit, read = self.shared_hit, self.shared_read
        if hit + read == 0:
            return "no buffers touched"
        if read == 0:
            return "warm"
        return f"partly cold ({read} of {hit + read} pages read outside shared buffers)"

    def scans(self) -> list[tuple[str, str | None, str | None]]:
        """``(node type, relation, index)`` of every node that reads a relation."""
        return [(n.node_type, n.relation, n.index) for n in self.nodes if n.relation]

    def uses_index(self, name: str) -> bool:
        return any(n.index == name or name in str(n.raw.get("Index Name", "")) for n in self.nodes)

    def summary(self) -> str:
        """The access path in one line: ``Limit > Sort > Seq Scan on messages``."""
        return " > ".join(n.label for n in self.nodes if n.parent is None or n.node_type != "Result")[:400]

    def frame(self) -> pd.DataFrame:
        """One row per node, in depth-first order (shown with units in a notebook: workbook.ui.tables)."""
        import pandas as pd

        from ..ui.tables import table

        rows = []
        for n in self.nodes:
            r = n.raw
            rows.append(
                {
                    "id": n.id,
                    "parent_id": None if n.parent is None else n.parent.id,
                    "depth": n.depth,
                    "node": n.label,
                    "node_type": n.node_type,
                    "relation": n.relation,
                    "index": n.index,
                    "parent_relationship": r.get("Parent Relationship"),
                    "subplan": r.get("Subplan Name"),
                    "estimated_rows": n.estimated_rows,
                    "actual_rows": n.actual_rows,
                    "loops": n.loops,
                    "misestimate": n.misestimate,
                    "misestimate_direction": n.misestimate_direction,
                    "stopped_early": n.stopped_early,
                    "inclusive_ms": n.inclusive_ms,
                    "exclusive_ms": n.exclusive_ms,
                    "shared_hit": int(r.get("Shared Hit Blocks", 0) or 0),
                    "shared_read": int(r.get("Shared Read Blocks", 0) or 0),
                    "temp_read": int(r.get("Temp Read Blocks", 0) or 0),
                    "temp_written": int(r.get("Temp Written Blocks", 0) or 0),
                    "rows_removed_by_filter": int(r.get("Rows Removed by Filter", 0) or 0) * max(n.loops, 1),
                    "heap_fetches": int(r.get("Heap Fetches", 0) or 0) * max(n.loops, 1),
                    "spilled": n.spilled,
                    "workers_planned": r.get("Workers Planned"),
                    "workers_launched": r.get("Workers Launched"),
                    "total_cost": float(r.get("Total Cost", 0.0)),
                    "filter": r.get("Filter"),
                    "index_cond": r.get("Index Cond"),
                    "sort_key": ", ".join(r.get("Sort Key") or []) or None,
                }
            )
        df = pd.DataFrame(rows)
        for col in ("parent_id", "workers_planned", "workers_launched"):
            df[col] = df[col].astype("Int64")  # whole numbers with gaps: not floats (1.0) in JSON or on screen
        return table(df)

    def to_json(self) -> str:
        return json.dumps(self.raw)


def plan_diff(before: Plan, after: Plan) -> list[dict[str, Any]]:
    """What changed between two plans of the same query, node by node, with what each cost.

    Nodes are matched by their label (``Index Scan using i on t``) in plan order; a node only in
    ``before`` was ``removed``, only in ``after`` ``added``, in both ``kept``. Each row carries the
    node's exclusive time and rows before and after (None where it did not exist).
    """
    def keyed(plan: Plan) -> dict[str, PlanNode]:
        out: dict[str, PlanNode] = {}
        for n in plan.nodes:
            key, k = n.label, 2
            while key in out:  # the same label twice (a self-join): number them in plan order
                key, k = f"{n.label} #{k}", k + 1
            out[key] = n
        return out

    a, b = keyed(before), keyed(after)
    rows = []
    for key in [*a, *(k for k in b if k not in a)]:
        x, y = a.get(key), b.get(key)
        rows.append({
            "node": key, "change": "kept" if x and y else "removed" if x else "added",
            "self_ms_before": x.exclusive_ms if x else None, "self_ms_after": y.exclusive_ms if y else None,
            "rows_before": x.actual_rows if x else None, "rows_after": y.actual_rows if y else None,
        })  # fmt: skip
    return rows


def parse_plan(document: Any, *, sql: str = "", params: dict[str, Any] | None = None) -> Plan:
    """Parse EXPLAIN's FORMAT JSON output (the list, its first element, or its text)."""
    if isinstance(document, (str, bytes)):
        document = json.loads(document)
    if isinstance(document, list):
        if not document:
            raise WorkbookError("empty EXPLAIN output")
        document = document[0]
    if not isinstance(document, dict) or "Plan" not in document:
        raise WorkbookError("not EXPLAIN (FORMAT JSON) output: no 'Plan' key")
    counter = iter(range(1_000_000))

    def build(raw: dict[str, Any], parent: PlanNode | None, depth: int, divisor: int) -> PlanNode:
        node = PlanNode(next(counter), str(raw.get("Node Type", "?")), raw, parent=parent, depth=depth)
        node.parallel_divisor = divisor
        child_divisor = divisor
        if node.node_type in ("Gather", "Gather Merge"):
            child_divisor = _processes(raw)
        for child in raw.get("Plans") or []:
            node.children.append(build(child, node, depth + 1, child_divisor))
        return node

    root = build(document["Plan"], None, 0, 1)
    _charge_subplans(root)
    return Plan(root=root, raw=document, sql=sql, params=params)


def _processes(gather: dict[str, Any]) -> int:
    """How many processes ran a Gather's input: its loops per Gather loop when they say so, else
    the workers launched plus the leader (unless ``Single Copy``)."""
    launched = int(gather.get("Workers Launched", gather.get("Workers Planned", 0)) or 0)
    planned = max(1, launched + (0 if gather.get("Single Copy") else 1))
    inputs = [c for c in gather.get("Plans") or [] if c.get("Parent Relationship") not in ("InitPlan", "SubPlan")]
    loops, child_loops = int(gather.get("Actual Loops", 0) or 0), int((inputs[0] if inputs else {}).get("Actual Loops", 0) or 0)
    if loops and child_loops and child_loops % loops == 0 and 1 <= child_loops // loops <= launched + 1:
        return child_loops // loops
    return planned


def _param_pattern(subplan_name: str) -> re.Pattern[str] | None:
    """How expressions name an InitPlan's value: ``$0`` (``InitPlan 1 (returns $0)``, before 17) or
    ``(InitPlan 1).col1`` (17+)."""
    m = re.match(r"^InitPlan (\d+)(?: \(returns (.*)\))?$", subplan_name)
    if m is None:
        return None
    params = re.findall(r"\$\d+", m[2] or "")
    names = [re.escape(p) + r"(?!\d)" for p in params] + [rf"\(InitPlan {m[1]}\)"]
    return re.compile("|".join(names))


def _mentions(node: PlanNode, pattern: re.Pattern[str]) -> bool:
    for key, value in node.raw.items():
        if key in ("Plans", "Subplan Name", "Node Type", "Workers"):
            continue
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str) and pattern.search(t) for t in texts):
            return True
    return False


def _charge_subplans(root: PlanNode) -> None:
    """Mark CTEs and InitPlans whose time ran inside another node's clock than their parent's."""
    nodes = root.walk()
    for sub in nodes:
        name = str(sub.raw.get("Subplan Name") or "")
        if sub.raw.get("Parent Relationship") != "InitPlan" or sub.parent is None or not sub.executed:
            continue
        inc = sub.inclusive_ms or 0.0
        if name.startswith("CTE "):
            scans = [n for n in nodes if n.node_type == "CTE Scan" and n.raw.get("CTE Name") == name[4:] and n.executed]
            if not scans:
                continue
            sub.runs_elsewhere = True
            left = inc
            for scan in scans:  # the first scans pulled the CTE's rows: its time is inside their clocks
                take = min(left, max((scan.inclusive_ms or 0.0) - scan.owned_ms, 0.0))
                scan.owned_ms += take
                left -= take
            scans[-1].owned_ms += left  # rounding: the time is accounted once, whatever is left
            continue
        pattern = _param_pattern(name)
        if pattern is None:
            continue
        owner = sub.parent
        if _mentions(owner, pattern):
            continue  # evaluated by the node it hangs from: the default accounting
        inside = {id(n) for n in sub.walk()}
        user = next((n for n in owner.walk()[1:] if id(n) not in inside and _mentions(n, pattern)), None)
        while user is not None and user.parallel_divisor > 1 and user.parent is not None:
            user = user.parent  # a worker's parameter was evaluated by the leader's Gather before it started them
        if user is not None and user is not owner:
            sub.runs_elsewhere = True
            user.owned_ms += inc


def explain(
    conn: psycopg.Connection[Any],
    sql: str,
    params: dict[str, Any] | tuple[Any, ...] | None = None,
    *,
    analyze: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    verbose: bool = True,
    prepared: tuple[str, Sequence[psycopg.sql.Composable]] | None = None,
) -> Plan:
    """EXPLAIN a statement, executing it (``analyze``) inside a transaction that is rolled back.

    ``prepared``: the statement is a runner's prepared statement, as (name, arguments) from
    :meth:`workbook.experiment.wire.PlanSource.execute_args`, explained as ``EXPLAIN ... EXECUTE
    name(...)`` with the runner's own values, so the plan is
    the one PostgreSQL's plan cache gives that statement now: after five executions it may be a
    generic plan, not the one these values would get on their own. The plan's ``raw["Workbook"]``
    then says which it was (``plan_cache``: "generic" or "custom", and the statement's counts).

    Raises :class:`QueryFailed` with the server's message (syntax error, unknown column,
    statement timeout ...); the connection is left usable and nothing is changed.
    """
    import psycopg

    options = ["FORMAT JSON"]
    if analyze:
        options = ["ANALYZE", "BUFFERS", "WAL", *options]
    options.insert(0, "SETTINGS")
    if verbose:
        options.insert(0, "VERBOSE")
    version = conn.info.server_version
    if version < 130000:
        raise WorkbookError(f"PostgreSQL {version // 10000} is too old: EXPLAIN (WAL) needs 13 or newer")
    stmt = check_statement(sql, what="the statement to EXPLAIN")
    if not stmt.is_read and session_read_only(conn):
        raise ReadOnlyTarget(
            f"the statement writes ({stmt.why_write}), and this session is read-only; nothing was sent. "
            "Pass --allow-writes (allow_writes=True) for a scratch database: EXPLAIN ANALYZE rolls the write back"
        )
    text = f"EXPLAIN ({', '.join(options)}) {stmt.text}"
    if timeout_s <= 0:
        raise WorkbookError(f"timeout_s must be positive, got {timeout_s!r}")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{max(1, int(timeout_s * 1000))}ms",))
            if stmt.is_read:  # a read runs READ ONLY: the server refuses any write it might hide
                conn.execute("SELECT set_config('transaction_read_only', 'on', true)")
            if prepared is None:
                rows = fetch_rows(conn, text, params)
            else:
                rows, cache = _explain_execute(conn, *prepared, options)
    except psycopg.errors.QueryCanceled as exc:
        raise QueryFailed(
            f"the statement ran past the {timeout_s:g} s statement timeout and was cancelled (nothing changed); "
            "add an index, narrow the query, or raise timeout_s"
        ) from exc
    except psycopg.Error as exc:
        message = _server_message(exc, offset=len(text) - len(stmt.text))
        raise QueryFailed(f"the server rejected the statement (nothing changed): {message}") from exc
    if len(rows) != 1:
        raise QueryFailed(f"EXPLAIN returned {len(rows)} rows instead of one plan (nothing changed)")
    doc = rows[0][0]
    if prepared is not None:  # which plan the plan cache gave, kept with the plan (and stored with it)
        doc = [{**(doc[0] if isinstance(doc, list) else doc), "Workbook": cache}]
    return parse_plan(doc, sql=stmt.text, params=params if isinstance(params, dict) else None)


def _explain_execute(
    conn: psycopg.Connection[Any], name: str, args: Sequence[psycopg.sql.Composable], options: list[str]
) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """``EXPLAIN (options) EXECUTE name(args)``, and what the plan cache did: the statement's generic
    and custom plan counts (PostgreSQL 14+) before and after, so which kind the explained execution
    ran is known, not guessed."""
    from psycopg import sql

    from .wire import check

    counts = "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = %s"
    has_counts = conn.info.server_version >= 140000
    before = conn.execute(counts, (name,)).fetchone() if has_counts else None
    command = sql.SQL("EXPLAIN ({}) EXECUTE {}{}").format(
        sql.SQL(", ").join(sql.SQL(o) for o in options), sql.Identifier(name),
        sql.SQL("({})").format(sql.SQL(", ").join(args)) if args else sql.SQL(""),
    ).as_bytes(conn)  # fmt: skip
    result = check(conn, conn.pgconn.exec_params(command, []))  # extended protocol: one statement, as always
    doc = json.loads(result.get_value(0, 0).decode())
    cache: dict[str, Any] = {"source": "EXPLAIN ANALYZE EXECUTE of the timed prepared statement", "statement": name}
    after = conn.execute(counts, (name,)).fetchone() if has_counts else None
    if before and after:
        cache["plan_cache"] = "generic" if after[0] > before[0] else "custom"
        cache["generic_plans"], cache["custom_plans"] = int(before[0]), int(before[1])
    return [(doc,)], cache


def _server_message(exc: Exception, offset: int = 0) -> str:
    """The server's error text; a position is given in the user's statement, not the EXPLAIN around it."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    text = primary or " ".join(str(exc).split())
    pos = getattr(diag, "statement_position", None)
    if pos and primary and int(pos) > offset:
        return f"{text} (at character {int(pos) - offset} of the statement)"
    return text


def log_factor(x: float | None) -> float:
    """log10 of a misestimate factor, for colour scales (0 when unknown)."""
    return 0.0 if not x else math.log10(x)
