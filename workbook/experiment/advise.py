"""Index advice: candidates read from the query's plan, each verified by a what-if measurement.

1. **Read the query.** ``EXPLAIN (VERBOSE)`` (not executed) names every relation the query reads
   and the predicates, join conditions and sort keys the server itself resolved, on any database,
   through views and CTEs, with aliases mapped to tables.
2. **Propose** per table: B-tree with equality columns first (the more distinct first), then the
   ORDER BY columns or one range column; an expression B-tree for ``col ->> 'key' = ...``; GIN
   ``jsonb_path_ops`` for ``@>`` and default ``jsonb_ops`` for ``?``; HNSW for ``ORDER BY
   embedding <=> ...`` (with the operator's class); a B-tree on join keys. Candidates an existing
   index already covers are skipped.
3. **Verify** each: build it in a transaction that is rolled back (:class:`WhatIfIndex`), check
   the planner uses it, then time the query with and without it in interleaved turns on two
   connections, and measure the index's size, build time and write cost
   (:func:`workbook.experiment.costs.index_costs`).
4. **Rank** the ones that are measurably faster by ``log(speedup) − ½·log(write slow-down) −
   0.05·log2(1 + size in MB)``; one scoring ≤ 0 costs more than it buys and is dropped. Every
   dropped candidate says why; with no suggestion, the reason says why.

On a read-only target nothing can be built: the candidates come back unverified, and the reason
says how to measure them.

**Parameterised statements** (``$1``, ``$2`` ... as ``pg_stat_statements`` and prepared
statements hold them): the candidates come from ``EXPLAIN (GENERIC_PLAN)`` on PostgreSQL 16+ (a
plan that holds for any value); on 13–15 from the plan of the statement with values put in. The
values (:func:`bind_parameters`) are what timing needs on every version: each ``$n``'s type is
asked of the server (the statement is prepared, described and deallocated; nothing runs), and its
value is sampled from the column it is compared with — the most common value in ``pg_stats``,
else the middle of its histogram, else one row's value, else a plain value of the type
(``LIMIT $n`` gets 20, ``OFFSET $n`` 0).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..dataset.indexes import IndexSpec
from ..errors import WorkbookError
from ..statement import as_read, check_statement
from .costs import index_costs
from .knobs import WhatIfIndex
from .pinning import same_cpu
from .plan import Plan, PlanNode, explain
from .timing import PLAN_CACHE_WARMUP, time_interleaved, verdict
from .wire import statement_runner

if TYPE_CHECKING:
    import psycopg

    from ..cluster.target import Target

_IDENT = r'(?:"[^"]+"|[A-Za-z_][\w$]*)'
_COL = rf"(?:({_IDENT})\.)?({_IDENT})"
_JSON_KEY = re.compile(rf"\({_COL} ->> '((?:[^']|'')*)'::text\) = ")
_CONTAINS = re.compile(rf"\({_COL} @> ")
_EXISTS = re.compile(rf"\({_COL} \?[|&]? ")
_COMPARE = re.compile(rf"\({_COL} (=|<|<=|>|>=) (?:ANY \()?")
_BETWEEN_REVERSED = re.compile(rf" (=|<|<=|>|>=) {_COL}\)")
_VECTOR_OPS = {"<->": "vector_l2_ops", "<=>": "vector_cosine_ops", "<#>": "vector_ip_ops"}
_SORT_VECTOR = re.compile(rf"^\({_COL} (<->|<=>|<#>) ")
_SORT_COL = re.compile(rf"^{_COL}(?: (DESC|ASC))?(?: NULLS (?:FIRST|LAST))?$")


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


@dataclass
class _TableUse:
    schema: str
    table: str
    aliases: set[str] = field(default_factory=set)
    eq: list[str] = field(default_factory=list)
    range: list[str] = field(default_factory=list)
    sort: list[tuple[str, str]] = field(default_factory=list)  # (column, direction)
    json_keys: list[tuple[str, str]] = field(default_factory=list)  # (column, key)
    contains: list[str] = field(default_factory=list)
    exists: list[str] = field(default_factory=list)
    vector: list[tuple[str, str]] = field(default_factory=list)  # (column, opclass)
    joins: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class Candidate:
    table: str  # schema.table
    columns: list[str]  # key expressions as written in the DDL
    method: str
    why: str
    spec: IndexSpec = field(repr=False)
    ddl: str = ""
    verified: bool = False
    used: bool | None = None
    speedup: float | None = None
    ci: tuple[float, float] | None = None
    verdict: str | None = None
    verdict_kind: str | None = None
    plan_before: str | None = None
    plan_after: str | None = None
    size_bytes: int | None = None
    build_seconds: float | None = None
    write_ratio: float | None = None
    score: float | None = None
    rejected_because: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("spec")
        return out


@dataclass
class Advice:
    sql: str  # what was advised on: the query, or the read an UPDATE/DELETE does
    suggestions: list[Candidate]
    rejected: list[Candidate]
    reason: str
    baseline_plan: Plan | None = field(default=None, repr=False)
    statement: str = ""  # the statement as given

    def as_dict(self) -> dict[str, Any]:
        return {
            "sql": self.sql,
            "statement": self.statement or self.sql,
            "suggestions": [c.as_dict() for c in self.suggestions],
            "rejected": [c.as_dict() for c in self.rejected],
            "reason": self.reason,
            "baseline_plan": self.baseline_plan.summary() if self.baseline_plan else None,
        }


# --------------------------------------------------------------------------- reading the plan
def _uses(plan: Plan) -> dict[str, _TableUse]:
    """Per table: the predicates, sort keys and join keys the plan shows on it."""
    by_alias: dict[str, _TableUse] = {}
    tables: dict[str, _TableUse] = {}
    for node in plan.nodes:
        schema, rel = node.get("Schema"), node.get("Relation Name")
        if rel and schema and node.node_type not in ("ModifyTable",):
            use = tables.setdefault(f"{schema}.{rel}", _TableUse(schema, rel))
            use.aliases.add(node.alias or rel)
            by_alias[node.alias or rel] = use

    def owner(qualifier: str | None, node: PlanNode | None) -> _TableUse | None:
        if qualifier is not None:
            return by_alias.get(_unquote(qualifier))
        if node is not None and node.alias in by_alias:
            return by_alias[node.alias]
        return None

    for node in plan.nodes:
        scan_use = by_alias.get(node.alias) if node.alias else None
        for key in ("Filter", "Index Cond", "Recheck Cond"):
            expr = node.get(key)
            if not expr:
                continue
            for m in _JSON_KEY.finditer(expr):
                u = owner(m.group(1), node)
                if u:
                    u.json_keys.append((_unquote(m.group(2)), m.group(3).replace("''", "'")))
            for m in _CONTAINS.finditer(expr):
                u = owner(m.group(1), node)
                if u:
                    u.contains.append(_unquote(m.group(2)))
            for m in _EXISTS.finditer(expr):
                u = owner(m.group(1), node)
                if u:
                    u.exists.append(_unquote(m.group(2)))
            for m in _COMPARE.finditer(expr):
                u = owner(m.group(1), node)
                if u is None or (scan_use is not None and u is not scan_use):
                    continue
                (u.eq if m.group(3) == "=" else u.range).append(_unquote(m.group(2)))
            for m in _BETWEEN_REVERSED.finditer(expr):  # "(5 < t.col)" forms
                u = owner(m.group(2), node)
                if u is not None and (scan_use is None or u is scan_use):
                    (u.eq if m.group(1) == "=" else u.range).append(_unquote(m.group(3)))
        for key in ("Hash Cond", "Merge Cond", "Join Filter"):
            expr = node.get(key)
            if expr:
                for m in re.finditer(rf"{_COL} = {_COL}", expr):
                    for q, c in ((m.group(1), m.group(2)), (m.group(3), m.group(4))):
                        u = owner(q, None)
                        if u:
                            u.joins.append(_unquote(c))
        if node.node_type in ("Sort", "Incremental Sort") and node.get("Sort Key"):
            keys = node.get("Sort Key")
            vec = _SORT_VECTOR.match(keys[0])
            if vec:
                u = owner(vec.group(1), None) or (next(iter(tables.values())) if len(tables) == 1 else None)
                if u:
                    u.vector.append((_unquote(vec.group(2)), _VECTOR_OPS[vec.group(3)]))
                continue
            parsed = [_SORT_COL.match(k) for k in keys]
            if all(parsed):
                owners = {id(owner(p.group(1), None) or (next(iter(tables.values())) if len(tables) == 1 else None))  # type: ignore[union-attr]
                          for p in parsed}  # fmt: skip
                u = owner(parsed[0].group(1), None) or (next(iter(tables.values())) if len(tables) == 1 else None)  # type: ignore[union-attr]
                if u is not None and len(owners) == 1:
                    u.sort = [(_unquote(p.group(2)), p.group(3) or "ASC") for p in parsed]  # type: ignore[union-attr]
    return tables


def _dedupe(xs: list[str]) -> list[str]:
    return list(dict.fromkeys(xs))


def _distinct(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, float]:
    """Estimated distinct values per column (pg_stats; negative n_distinct is a fraction of rows)."""
    rows = conn.execute(
        "SELECT s.attname, s.n_distinct, c.reltuples FROM pg_stats s"
        " JOIN pg_class c ON c.relname = s.tablename JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname"
        " WHERE s.schemaname = %s AND s.tablename = %s",
        (schema, table),
    ).fetchall()
    return {r[0]: (float(r[1]) if r[1] >= 0 else -float(r[1]) * max(float(r[2]), 1.0)) for r in rows}


def _existing_btree_prefixes(conn: psycopg.Connection[Any], schema: str, table: str) -> list[list[str]]:
    rows = conn.execute(
        "SELECT array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)"
        "             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n)"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam"
        " WHERE n.nspname = %s AND c.relname = %s AND am.amname = 'btree' AND i.indpred IS NULL AND i.indisvalid",
        (schema, table),
    ).fetchall()
    return [[c for c in r[0]] for r in rows]


def _candidates(conn: psycopg.Connection[Any], uses: dict[str, _TableUse]) -> list[Candidate]:
    out: list[Candidate] = []
    seen: set[tuple[str, tuple[str, ...], str]] = set()

    def ident(col: str) -> str:
        return sql.Identifier(col).as_string(conn)

    def add(use: _TableUse, keys: list[str], method: str, why: str, plain: list[str] | None = None,
            opclass_keys: list[str] | None = None) -> None:  # fmt: skip
        sig = (use.name, tuple(keys), method)
        if sig in seen or not keys:
            return
        if method == "btree" and plain is not None:
            for existing in _existing_btree_prefixes(conn, use.schema, use.table):
                if existing[: len(plain)] == plain:
                    return  # an index already starts with these columns
        seen.add(sig)
        name = f"wb_advice_{use.table}_{'_'.join(re.sub(r'[^a-z0-9]+', '_', k.lower()).strip('_') for k in keys)}"[:63]
        spec = IndexSpec(name=name, table=use.table, keys=tuple(opclass_keys or keys), method=method, schema=use.schema)
        shown = [re.sub(r'"([a-z_][a-z0-9_$]*)"', r"\1", k) for k in keys]  # plain names where quotes are not needed
        out.append(Candidate(use.name, shown, method, why, spec, ddl=spec.create().as_string(conn)))

    for use in uses.values():
        nd = _distinct(conn, use.schema, use.table)
        eq = sorted(_dedupe(use.eq), key=lambda c: -nd.get(c, 0.0))
        rng = [c for c in _dedupe(use.range) if c not in eq]
        sort_cols = [c for c, _ in use.sort]
        mixed = len({d for _, d in use.sort}) > 1
        sort_keys = [f"{ident(c)} {d}" if mixed else ident(c) for c, d in use.sort]
        if eq and use.sort:
            add(use, [ident(c) for c in eq] + sort_keys, "btree",
                "equality columns first, then the ORDER BY: rows come out in order, no sort", eq + sort_cols)  # fmt: skip
        if eq and rng:
            add(use, [ident(c) for c in eq] + [ident(rng[0])], "btree",
                "equality columns first, then the range column", eq + rng[:1])  # fmt: skip
        if eq:
            add(use, [ident(c) for c in eq], "btree", "the equality predicates", eq)
        if not eq and rng:
            add(use, [ident(rng[0])], "btree", "the range predicate", rng[:1])
        if not eq and use.sort:
            add(use, sort_keys, "btree", "the sort (ORDER BY or GROUP BY): rows come out of the index in order", sort_cols)
        for col, key in _dedupe_pairs(use.json_keys):
            expr = sql.SQL("({} ->> {})").format(sql.Identifier(col), sql.Literal(key)).as_string(conn)
            add(use, [ident(c) for c in eq] + [expr], "btree", f"expression index for {col} ->> '{key}' = ...")
            if eq:
                add(use, [expr], "btree", f"expression index for {col} ->> '{key}' = ...")
        for col in _dedupe(use.contains):
            add(use, [ident(col)], "gin", f"containment (@>) on {col}: GIN jsonb_path_ops",
                opclass_keys=[f"{ident(col)} jsonb_path_ops"])  # fmt: skip
        for col in _dedupe(use.exists):
            add(use, [ident(col)], "gin", f"key existence (?) on {col}: GIN with the default jsonb_ops")
        for col, ops in _dedupe_pairs(use.vector):
            add(use, [ident(col)], "hnsw", f"nearest neighbours by {ops}: an HNSW graph",
                opclass_keys=[f"{ident(col)} {ops}"])  # fmt: skip
        for col in _dedupe(use.joins):
            add(use, [ident(col)], "btree", f"join key {col}: lets a nested loop look rows up", [col])
    return out


def _dedupe_pairs(xs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(xs))


# --------------------------------------------------------------------------- verifying
def advise(
    target: Target,
    query: str,
    params: dict[str, Any] | tuple[Any, ...] | None = None,
    *,
    repeats: int = 15,
    warmup: int = 2,
    max_candidates: int = 6,
    measure_write_cost: bool = True,
    timeout_s: float = 30.0,
) -> Advice:
    """Propose indexes for ``query`` and verify each by a what-if measurement (see module doc).

    For an ``UPDATE``/``DELETE`` the advice is for the read that finds its rows (``SELECT 1 FROM
    <its tables> WHERE <its condition>``), as the statement itself would use the index for that;
    the write never runs, so no row changes.
    """
    stmt = check_statement(query, what="the query to advise on")
    read = as_read(stmt)
    note = "" if read is stmt else f"advice for the read the {stmt.command} does to find its rows ({read.text}); "
    if repeats < 2:
        raise WorkbookError(f"repeats must be at least 2, got {repeats!r}")
    if timeout_s <= 0:
        raise WorkbookError(f"timeout_s must be positive, got {timeout_s!r}")
    generic: str | None = None
    query_text = read.text
    if params is None and parameter_numbers(read.text):
        with target.connect() as conn:
            binding = bind_parameters(conn, read.text, timeout_s=timeout_s)
        generic, query_text = read.text, binding.sql
        note += f"parameters sampled: {binding.describe()}; "
    advice = _advise(target, query_text, params, repeats=repeats, warmup=warmup, max_candidates=max_candidates,
                     measure_write_cost=measure_write_cost, timeout_s=timeout_s, generic=generic)  # fmt: skip
    advice.statement = stmt.text
    advice.reason = note + advice.reason
    return advice


# --------------------------------------------------------------------------- parameters ($1 ...)
_PARAM = re.compile(r"(?<![\w$])\$(\d+)(?![\w$])")
_OPS = r"(?:=|<>|!=|<=|>=|<|>|@>|<@|\?\||\?&|\?|<->|<=>|<#>|~~\*?|LIKE|ILIKE|IN)"
_LEFT_COL = r'((?:"[^"]+"|[A-Za-z_][\w$]*)(?:\.(?:"[^"]+"|[A-Za-z_][\w$]*))?)'
_TABLES = re.compile(r'\b(?:FROM|JOIN|UPDATE|INTO)\s+((?:"[^"]+"|[A-Za-z_][\w$]*)(?:\.(?:"[^"]+"|[A-Za-z_][\w$]*))?)', re.I)
_NUMERIC = ("smallint", "integer", "bigint", "numeric", "real", "double precision")
_PLAIN_VALUES = {"boolean": "true", "uuid": "00000000-0000-0000-0000-000000000000", "jsonb": "{}", "json": "{}",
                 "interval": "7 days", "date": "2024-01-01", "timestamp with time zone": "2024-01-01 00:00:00+00",
                 "timestamp without time zone": "2024-01-01 00:00:00"}  # fmt: skip


def parameter_numbers(query: str) -> list[int]:
    """The ``$n`` placeholders of ``query``, in order of number (not those inside quotes or comments)."""
    return sorted({int(t.text[1:]) for t in _param_tokens(query)})


def _param_tokens(query: str) -> list[Any]:
    from ..statement import tokenize

    return [t for t in tokenize(query) if t.kind == "param" and t.text[1:].isdigit()]


@dataclass
class Binding:
    """A parameterised statement with its ``$n`` replaced by typed literals, and where each came from."""

    generic: str
    sql: str
    values: dict[int, tuple[str, str, str]]  # n -> (type, value as text, where it came from)

    def describe(self) -> str:
        return ", ".join(f"${n} = {v!r}::{t} ({src})" for n, (t, v, src) in self.values.items())


def bind_parameters(conn: psycopg.Connection[Any], query: str, *, timeout_s: float = 30.0) -> Binding:
    """Typed values for the ``$n`` of ``query``, sampled from column statistics (see module doc)."""
    numbers = parameter_numbers(query)
    if not numbers:
        return Binding(query, query, {})
    types = _parameter_types(conn, query)
    tables = _referenced_tables(conn, query)
    values: dict[int, tuple[str, str, str]] = {}
    for n in numbers:
        typ = types.get(n, "text")
        value, source = _sample_value(conn, query, n, typ, tables)
        values[n] = (typ, value, source)

    parts, at = [], 0
    for tok in _param_tokens(query):
        typ, value, _ = values[int(tok.text[1:])]
        parts += [query[at : tok.start], f"{sql.Literal(value).as_string(conn)}::{typ}"]
        at = tok.end
    bound = "".join(parts) + query[at:]
    check_statement(bound, what="the statement with sampled values")
    return Binding(query, bound, values)


def _parameter_types(conn: psycopg.Connection[Any], query: str) -> dict[int, str]:
    """Each ``$n``'s type as the server infers it: prepare (nothing runs), describe, deallocate."""
    from psycopg import pq

    name = b"wb_advise_params"
    pgconn = conn.pgconn
    res = pgconn.prepare(name, query.encode(), None)
    if res.status != pq.ExecStatus.COMMAND_OK:
        msg = (res.error_message or b"").decode(errors="replace").strip()
        raise WorkbookError(f"the server cannot prepare the statement: {msg}")
    try:
        desc = pgconn.describe_prepared(name)
        oids = [desc.param_type(i) for i in range(desc.nparams)]
    finally:
        pgconn.exec_(b"DEALLOCATE wb_advise_params")
    names = dict(conn.execute("SELECT o, format_type(o, NULL) FROM unnest(%s::oid[]) o", (oids,)).fetchall()) if oids else {}
    return {i + 1: str(names.get(o, "text")) for i, o in enumerate(oids)}


def _referenced_tables(conn: psycopg.Connection[Any], query: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for m in _TABLES.finditer(query):
        row = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass(%s)", (m.group(1),)
        ).fetchone()  # fmt: skip
        if row and (row[0], row[1]) not in out:
            out.append((row[0], row[1]))
    return out


def _compared_column(query: str, n: int) -> str | None:
    """The column ``$n`` is compared with (``col = $n``, ``$n < col``, ``col = ANY($n)`` ...)."""
    p = rf"\${n}(?![\w$])"
    m = re.search(rf"{_LEFT_COL}\s*(?:::\s*\w+\s*)?{_OPS}\s*(?:ANY\s*)?\(?\s*{p}", query, re.I)
    if m is None:
        m = re.search(rf"{p}(?:::\s*[\w ]+?)?\s*{_OPS}\s*{_LEFT_COL}", query, re.I)
    if m is None:
        return None
    return _unquote(m.group(1).split(".")[-1])


def _sample_value(conn: psycopg.Connection[Any], query: str, n: int, typ: str,
                  tables: list[tuple[str, str]]) -> tuple[str, str]:  # fmt: skip
    if re.search(rf"\bLIMIT\s+\${n}(?![\w$])", query, re.I):
        return "20", "LIMIT"
    if re.search(rf"\bOFFSET\s+\${n}(?![\w$])", query, re.I):
        return "0", "OFFSET"
    col = _compared_column(query, n)
    if col is not None:
        for schema, table in tables:
            row = conn.execute(
                "SELECT (most_common_vals::text::text[])[1],"
                " (histogram_bounds::text::text[])[greatest(1, array_length(histogram_bounds::text::text[], 1) / 2)]"
                " FROM pg_stats WHERE schemaname = %s AND tablename = %s AND attname = %s",
                (schema, table, col),
            ).fetchone()
            if row and (row[0] is not None or row[1] is not None):
                which = "most common value" if row[0] is not None else "histogram middle"
                return str(row[0] if row[0] is not None else row[1]), f"{which} of {table}.{col}"
            has = conn.execute(
                "SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace s ON s.oid = c.relnamespace"
                " WHERE s.nspname = %s AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped", (schema, table, col)
            ).fetchone()  # fmt: skip
            if has:
                one = conn.execute(
                    sql.SQL("SELECT {}::text FROM {} WHERE {} IS NOT NULL LIMIT 1").format(
                        sql.Identifier(col), sql.Identifier(schema, table), sql.Identifier(col))
                ).fetchone()  # fmt: skip
                if one and one[0] is not None:
                    return str(one[0]), f"a row of {table}.{col}"
    if typ in _NUMERIC:
        return "1", "a plain value of the type"
    return _PLAIN_VALUES.get(typ, "x"), "a plain value of the type"


def generic_plan(conn: psycopg.Connection[Any], query: str, *, timeout_s: float = 30.0) -> Plan:
    """``EXPLAIN (GENERIC_PLAN, VERBOSE, FORMAT JSON)`` of a parameterised statement (PostgreSQL 16+)."""
    from .plan import parse_plan

    if conn.info.server_version < 160000:
        raise WorkbookError(f"EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16 or newer; this is {conn.info.server_version // 10000}")
    stmt = check_statement(query, what="the statement to EXPLAIN")
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{max(1, int(timeout_s * 1000))}ms",))
        row = conn.execute(f"EXPLAIN (GENERIC_PLAN, VERBOSE, FORMAT JSON) {stmt.text}").fetchone()
    assert row is not None
    return parse_plan(row[0], sql=query)


def _advise(
    target: Target, query: str, params: Any, *, repeats: int, warmup: int, max_candidates: int,
    measure_write_cost: bool, timeout_s: float, generic: str | None = None,
) -> Advice:  # fmt: skip
    with target.connect() as conn:
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
        estimate = explain(conn, query, params, analyze=False, timeout_s=timeout_s)
        proposing = estimate
        if generic is not None and conn.info.server_version >= 160000:
            proposing = generic_plan(conn, generic, timeout_s=timeout_s)
        uses = _uses(proposing)
        candidates = _candidates(conn, uses)[:max_candidates]
        if not uses:
            return Advice(query, [], [], "the query reads no table, so no index can help", estimate)
        if not candidates:
            return Advice(query, [], [], _nothing_to_index(estimate, uses), estimate)
        if not target.allow_writes:
            return Advice(
                query, candidates, [],
                "the target is read-only, so these candidates come from the plan and are NOT measured; "
                "run advise on a writable copy (--allow-writes) to verify them with what-if indexes",
                estimate,
            )  # fmt: skip
        baseline = explain(conn, query, params, timeout_s=timeout_s)
    suggestions: list[Candidate] = []
    rejected: list[Candidate] = []
    for cand in candidates:
        _verify(target, query, params, cand, baseline, repeats=repeats, warmup=warmup, timeout_s=timeout_s,
                write_cost=measure_write_cost)  # fmt: skip
        (suggestions if cand.rejected_because is None else rejected).append(cand)
    suggestions.sort(key=lambda c: -(c.score or 0.0))
    if suggestions:
        best = suggestions[0]
        reason = f"{len(suggestions)} of {len(candidates)} candidates are measurably faster; best: {best.ddl} ({best.verdict})"
    else:
        reason = "no candidate helps: " + "; ".join(f"{', '.join(c.columns)} ({c.method}): {c.rejected_because}" for c in rejected)
    return Advice(query, suggestions, rejected, reason, baseline)


def _nothing_to_index(plan: Plan, uses: dict[str, _TableUse]) -> str:
    scans = ", ".join(f"{node} on {t}" + (f" using {i}" if i else "") for node, t, i in plan.scans())
    searched = any(u.eq or u.range or u.sort or u.json_keys or u.contains or u.exists or u.vector or u.joins
                   for u in uses.values())  # fmt: skip
    if searched:
        return f"existing indexes already serve every predicate, join and ORDER BY of the query ({scans}); nothing to add"
    return (
        f"the query has no predicate, join or ORDER BY that an index could serve ({scans}): "
        "it reads whole tables, and no index makes reading everything cheaper"
    )


def _verify(
    target: Target, query: str, params: Any, cand: Candidate, baseline: Plan, *,
    repeats: int, warmup: int, timeout_s: float, write_cost: bool,
) -> None:  # fmt: skip
    knob = WhatIfIndex(cand.spec)
    cand.plan_before = baseline.summary()
    with target.connect() as base, target.connect() as treat:
        for c in (base, treat):
            c.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
        with knob.applied(treat), base.transaction(force_rollback=True):  # both sides inside a transaction
            cand.size_bytes, cand.build_seconds = knob.cost.size_bytes, knob.cost.build_seconds
            after = explain(treat, query, params, timeout_s=timeout_s)
            cand.plan_after = after.summary()
            cand.used = after.uses_index(cand.spec.name)
            if not cand.used:
                cand.verified = True
                cand.rejected_because = "the planner does not use it for this query"
                return

            runners = [statement_runner(c, query, params) for c in (base, treat)]  # prepared, timed at libpq
            with same_cpu([base, treat]):
                a, b = time_interleaved(runners, repeats=repeats, warmup=max(warmup, PLAN_CACHE_WARMUP + 1))  # past the plan switch
    v = verdict(a, b)
    cand.verified = True
    cand.speedup, cand.ci, cand.verdict, cand.verdict_kind = round(v.ratio, 3), (round(v.ci_low, 3), round(v.ci_high, 3)), v.text, v.kind
    if v.kind != "faster":
        cand.rejected_because = v.text
        return
    if write_cost:
        cost = index_costs(target, cand.spec, rounds=4, reps=20)
        cand.write_ratio = cost.write_ratio
    size_mb = (cand.size_bytes or 0) / 2**20
    cand.score = round(
        math.log(v.ratio) - 0.5 * math.log(max(cand.write_ratio or 1.0, 1e-3)) - 0.05 * math.log2(1 + size_mb), 4
    )
    if cand.score <= 0:
        cand.rejected_because = (
            f"reads {v.text}, but inserts take {cand.write_ratio:.2f}x as long and it needs {size_mb:.1f} MB: "
            "it costs more than it buys"
        )
