"""Bring your own plan: read ``EXPLAIN`` output pasted from production, text or JSON.

:func:`read_plan` takes what an engineer has in hand and returns the same :class:`~.plan.Plan` the
workbook builds from the plans it runs itself:

- ``EXPLAIN`` **text** of PostgreSQL 13 to 18 (:func:`parse_text`): nodes, costs, actual
  time/rows/loops (fractional rows in 18), ``never executed``, buffers, I/O timings, WAL, workers
  and their ``Worker N:`` lines, InitPlan/SubPlan/CTE, JIT, settings, triggers, planning and
  execution time. It is read into the JSON document ``EXPLAIN (FORMAT JSON)`` would have printed
  (same keys; text leaves out zero counters, so absent keys mean zero) and handed to
  :func:`~.plan.parse_plan`: one tree builder, one time accounting, whatever the format.
- ``EXPLAIN (FORMAT JSON)`` output.
- either of them framed by ``psql``: aligned (border 0, 1, 2), unaligned, expanded, ASCII or
  unicode lines, ``+``/``↵`` at the end of a cell's lines, ``format=wrapped`` lines cut at the
  terminal's width (``.``/``…`` markers), the ``QUERY PLAN`` header and ``(N rows)`` footer, the
  prompt and the ``EXPLAIN`` statement typed before it (kept as the plan's query);
- an ``auto_explain`` entry of a server log (``... LOG:  duration: 12.3 ms  plan:`` and the
  tab-indented lines after it, text or JSON), whose ``Query Text:`` becomes the plan's query.

Bad input is refused with one line that names the line that could not be read: unrelated text, a
paste cut off in the middle of a line or of the tree (a join with one input, a header with no
plan, fewer lines than psql's ``(N rows)`` footer counted). A plan without ``ANALYZE`` is read and
says so in :attr:`Plan.notes <.plan.Plan.notes>`: estimates and costs only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import WorkbookError
from .plan import Plan, parse_plan


class PlanTextError(WorkbookError):
    """The pasted text is not (all of) an EXPLAIN plan; the message names the line."""


@dataclass
class _Line:
    no: int  # 1-based line number in the pasted text
    text: str


def read_plan(text: str) -> Plan:
    """A plan from pasted EXPLAIN output (text or JSON, bare, psql-framed or from an auto_explain log)."""
    if not isinstance(text, str):
        raise PlanTextError(f"expected the plan as text, got {type(text).__name__}")
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = [_Line(i + 1, s.rstrip()) for i, s in enumerate(text.split("\n"))]
    if not any(ln.text.strip() for ln in lines):
        raise PlanTextError("the plan is empty: paste the output of EXPLAIN (ANALYZE, BUFFERS) ...")
    notes: list[str] = []
    sql, duration = "", None
    logged = _auto_explain(lines)
    if logged is not None:
        lines, sql, duration = logged
        notes.append("read from an auto_explain log entry" + (f" ({duration:g} ms)" if duration is not None else ""))
    else:
        lines, sql = _unframe(_unquote_rows(lines))
    lines = _trim(lines)
    if not lines:
        raise PlanTextError("no plan lines found after removing psql's header and footer")
    first = lines[0].text.strip()
    if first.startswith(("[", "{")):
        plan = _parse_json(lines, sql)
        notes.insert(0, "format: JSON")
    else:
        plan = _build(_parse_lines(lines), sql)
        notes.insert(0, "format: text")
    if duration is not None and plan.root.get("Actual Loops") is not None and "Execution Time" not in plan.raw:
        plan.raw["Execution Time"] = duration  # auto_explain's duration is the executor's time
    if not sql and isinstance(plan.raw.get("Query Text"), str):
        plan.sql = plan.raw["Query Text"]
    if plan.root.get("Actual Loops") is not None and plan.execution_ms is None:
        notes.append("no 'Execution Time' line: the paste may end early (or EXPLAIN ran with SUMMARY OFF)")
    if plan.root.get("Actual Loops") is None:
        notes.append(
            "estimates only (EXPLAIN without ANALYZE): rows are the planner's guesses and there are no times; "
            "what can still be read: the access paths, the indexes used, the costs and the filters. "
            "Run EXPLAIN (ANALYZE, BUFFERS) for measurements"
        )
    plan.notes = notes + plan.notes
    return plan


def parse_text(text: str) -> Plan:
    """A plan from bare ``EXPLAIN`` text output (no psql frame, no log prefix)."""
    lines = _trim([_Line(i + 1, s.rstrip()) for i, s in enumerate(text.replace("\r\n", "\n").split("\n"))])
    if not lines:
        raise PlanTextError("the plan is empty")
    return _build(_parse_lines(lines), "")


def _build(document: dict[str, Any], sql: str) -> Plan:
    return parse_plan(document, sql=sql)


def _trim(lines: list[_Line]) -> list[_Line]:
    out = list(lines)
    while out and not out[0].text.strip():
        out.pop(0)
    while out and not out[-1].text.strip():
        out.pop()
    return out


# ---- JSON ------------------------------------------------------------------------------------
def _parse_json(lines: list[_Line], sql: str) -> Plan:
    texts = [ln.text for ln in lines]
    try:
        doc = json.loads("\n".join(texts))
    except json.JSONDecodeError:
        stripped = [re.sub(r"\s*\+$", "", t) for t in texts]  # psql's newline markers, without a header
        try:
            doc = json.loads("\n".join(stripped))
        except json.JSONDecodeError as exc:
            line = lines[min(exc.lineno, len(lines)) - 1]
            at_end = exc.pos >= len("\n".join(stripped).rstrip()) - 1
            what = "the JSON ends before the plan is complete (a truncated paste?)" if at_end else exc.msg
            raise PlanTextError(f"line {line.no} could not be read as EXPLAIN JSON: {what}: {line.text.strip()[:80]!r}") from None
    try:
        return parse_plan(doc, sql=sql)
    except WorkbookError as exc:
        raise PlanTextError(f"line {lines[0].no}: {exc}") from None


# ---- auto_explain log entries -----------------------------------------------------------------
_LOGGED = re.compile(r"(?:(?:LOG|INFO|NOTICE|WARNING|DEBUG\d?):\s+|^)duration: (?P<ms>\d+(?:\.\d+)?) ms\s+plan:\s*(?P<rest>.*)$")
_NEW_ENTRY = re.compile(r"^(?:\d{4}-\d\d-\d\d[ T]|(?:LOG|ERROR|STATEMENT|DETAIL|HINT|CONTEXT|WARNING|FATAL):\s)")


def _auto_explain(lines: list[_Line]) -> tuple[list[_Line], str, float | None] | None:
    """The first auto_explain entry: its plan lines, query text and duration; None when there is none."""
    start = next((i for i, ln in enumerate(lines) if _LOGGED.search(ln.text)), None)
    if start is None:
        return None
    m = _LOGGED.search(lines[start].text)
    assert m is not None
    body: list[_Line] = [_Line(lines[start].no, m["rest"])] if m["rest"].strip() else []
    rest = lines[start + 1:]
    tabbed = bool(rest) and rest[0].text.startswith("\t")
    for ln in rest:
        if tabbed:
            if not ln.text.startswith("\t"):
                break
            body.append(_Line(ln.no, ln.text[1:]))
        else:  # a notice printed by a client: it ends where the log entry or the client's output does
            if _NEW_ENTRY.match(ln.text) or not ln.text.strip() or _FOOTER.match(ln.text.strip()):
                break
            if re.fullmatch(r"[-+]+|[─┼]+", ln.text.strip()) and body:  # a result table's header follows the plan
                body.pop()
                break
            body.append(ln)
    sql, plan_lines = _query_text(body)
    return plan_lines, sql, float(m["ms"])


_NODE_LINE = re.compile(r"  \(cost=[-\d.]+\.\.[-\d.]+ rows=|\(actual (?:time|rows)=|\(never executed\)")


def _query_text(body: list[_Line]) -> tuple[str, list[_Line]]:
    """Split ``Query Text: ...`` (possibly several lines) and ``Query Parameters:`` from the plan."""
    if not body or not body[0].text.startswith("Query Text: "):
        return "", body
    query = [body[0].text[len("Query Text: "):]]
    i = 1
    while i < len(body) and not _NODE_LINE.search(body[i].text) and not body[i].text.startswith("Query Parameters: "):
        query.append(body[i].text)
        i += 1
    if i == len(body):  # no node line with costs or actuals: the query was one line
        query, i = query[:1], 1
    while i < len(body) and body[i].text.startswith("Query Parameters: "):
        i += 1
    return "\n".join(query).strip(), body[i:]


# ---- psql frames -----------------------------------------------------------------------------
_FOOTER = re.compile(r"^\((\d+) rows?\)$")
_WRAP = (".", "…")
_PROMPT = re.compile(r"^[\w.\-]*[=\-(\"'][#>] ?(?P<sql>.*)$")
_RECORD = re.compile(r"^-\[ RECORD \d+ \]-*$|^[┌├└]?─\[ RECORD \d+ \]─*")


def _unframe(lines: list[_Line]) -> tuple[list[_Line], str]:
    """Remove psql's frame (header, borders, markers, footer) and prompt; return the cells' lines and
    the EXPLAIN'd statement when the prompt line was pasted too."""
    sql = ""
    head = next((i for i, ln in enumerate(lines) if ln.text.strip(" |│") == "QUERY PLAN"), None)
    if head is not None:
        typed = [(m["sql"] if (m := _PROMPT.match(ln.text)) else ln.text) for ln in lines[:head]]
        found = re.search(r"(?is)\bexplain\b.*", " ".join(typed))  # the prompt's or psql -e's echo
        sql = _explained_sql(found[0]) if found else ""
    expected: int | None = None
    for ln in lines[head or 0:]:
        m = _FOOTER.match(ln.text.strip())
        if m:
            expected = int(m[1])
    if any(_RECORD.match(ln.text) for ln in lines):
        out = _expanded(lines)
    elif head is None:
        out = [ln for ln in lines if not _FOOTER.match(ln.text.strip()) and not re.match(r"^Time: [\d.]+ ms", ln.text)]
        out = _dedent_psql(out)
    else:
        out = _aligned(lines, head)
    if expected is not None:
        rows = len(out)
        if rows < expected:
            last = out[-1] if out else lines[head or 0]
            raise PlanTextError(
                f"the paste is truncated: psql counted {expected} rows, {rows} arrived; line {last.no} "
                f"is the last one read: {last.text.strip()[:80]!r}"
            )
    return out, sql


def _unquote_rows(lines: list[_Line]) -> list[_Line]:
    """Rows copied as CSV (psql --csv, pgAdmin, DBeaver): fields with commas, quotes or newlines quoted."""
    body = [ln for ln in lines if ln.text.strip()]
    if not body:
        return lines
    head = 1 if body[0].text in ("QUERY PLAN", '"QUERY PLAN"') else 0  # flush left: not an aligned frame
    rows = body[head:]
    if not rows or rows[0].text.lstrip().startswith(("[", "{", "-", "─")):
        return lines  # JSON (its lines start with quotes) or a frame's rule: not CSV
    if head == 0 and not rows[0].text.startswith('"'):
        return lines
    if not any(ln.text.lstrip().startswith('"') for ln in rows):
        return lines
    import csv

    first = lines.index(rows[0])
    reader = csv.reader([ln.text for ln in lines[first:]])
    out: list[_Line] = []
    try:
        for record in reader:
            no = lines[first].no + reader.line_num - 1
            for k, part in enumerate("\n".join(record).split("\n")):
                out.append(_Line(no + k, part))
    except csv.Error:
        return lines
    return out


def _explained_sql(typed: str) -> str:
    m = re.match(r"(?is)^\s*explain\s*(\((?:[^()]|\([^()]*\))*\)|(?:analy[sz]e|verbose|buffers)\s+)*(?P<q>.*?);?\s*$", typed)
    return m["q"].strip() if m and m["q"].strip() else ""


def _dedent_psql(lines: list[_Line]) -> list[_Line]:
    """Tuples-only aligned output: every line starts with psql's one-space margin."""
    body = [ln for ln in lines if ln.text.strip()]
    if body and all(ln.text.startswith(" ") for ln in body):
        return [_Line(ln.no, ln.text[1:]) for ln in lines]
    return lines


def _expanded(lines: list[_Line]) -> list[_Line]:
    out: list[_Line] = []
    for ln in lines:
        if _RECORD.match(ln.text) or _FOOTER.match(ln.text.strip()):
            continue
        m = re.match(r"^(?:QUERY PLAN)?\s*[|│] ?(?P<cell>.*)$", ln.text)
        if m:
            out.append(_Line(ln.no, re.sub(r"\s*[+↵]$", "", m["cell"])))
    return out


def _aligned(lines: list[_Line], head: int) -> list[_Line]:
    """Aligned and wrapped formats: the cell's columns are known from the header's separator line."""
    header = lines[head].text
    boxed = header.lstrip().startswith(("|", "│"))
    if head + 1 >= len(lines):
        return []
    rows_from = head + 2
    sep = lines[head + 1].text
    if boxed:
        width = len(sep.strip()) - 4
        left, marker_at = 2, width + 2
    elif set(sep.strip()) <= {"-", "─"} and sep.strip():
        first = next((ln.text for ln in lines[rows_from:] if ln.text.strip()), "")
        border1 = first.startswith(" ") or first[:1] in _WRAP
        width = len(sep) - (2 if border1 else 0)
        left, marker_at = (1, width + 1) if border1 else (0, width)
    else:  # unaligned: header, then the cell's lines as they are
        return [ln for ln in lines[head + 1:] if not _FOOTER.match(ln.text.strip())]
    out: list[_Line] = []
    wrapped = False
    for ln in lines[rows_from:]:
        t = ln.text
        stripped = t.strip()
        if _FOOTER.match(stripped) or (boxed and stripped[:1] in ("+", "└", "├")):
            if _FOOTER.match(stripped):
                break
            continue
        cell = t[left:marker_at]
        marker = t[marker_at] if len(t) > marker_at else " "
        if wrapped and out:
            out[-1] = _Line(out[-1].no, out[-1].text + cell)
        else:
            out.append(_Line(ln.no, cell))
        wrapped = marker in _WRAP
    return [_Line(ln.no, ln.text.rstrip()) for ln in out]


# ---- the text format -------------------------------------------------------------------------
_HEADER = re.compile(
    r"^(?P<name>\S.*?)"
    r"(?:  \(cost=(?P<c0>-?[\d.]+)\.\.(?P<c1>-?[\d.]+) rows=(?P<rows>\d+) width=(?P<width>\d+)\))?"
    r"(?: ?\((?:actual (?:time=(?P<t0>[\d.]+)\.\.(?P<t1>[\d.]+) )?rows=(?P<arows>[\d.]+) loops=(?P<loops>\d+)"
    r"|(?P<never>never executed))\))?$"
)
_SUBPLAN = re.compile(r"^(?P<kind>InitPlan|SubPlan) \d+(?: \(returns .*\))?$|^CTE (?P<cte>.+)$")
_WORKER = re.compile(r"^Worker (?P<n>\d+):  (?P<rest>.*)$")
_ACTUAL = re.compile(r"^(?:actual (?:time=(?P<t0>[\d.]+)\.\.(?P<t1>[\d.]+) )?rows=(?P<rows>[\d.]+) loops=(?P<loops>\d+)|(?P<never>never executed))$")
_IDENT = r'(?:"(?:[^"]|"")*"|[^\s."]+)'
_QUALIFIED = rf"{_IDENT}(?:\.{_IDENT})*"
_SCANS = (
    "Seq Scan", "Sample Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan", "Tid Scan",
    "Tid Range Scan", "Subquery Scan", "Function Scan", "Table Function Scan", "Values Scan", "CTE Scan",
    "Named Tuplestore Scan", "WorkTable Scan", "Foreign Scan",
)  # fmt: skip
_SCAN = re.compile(
    rf"^(?P<type>{'|'.join(sorted(_SCANS, key=len, reverse=True))})(?P<back> Backward)?"
    rf"(?: using (?P<index>{_IDENT}))?(?: on (?P<target>{_QUALIFIED})(?: (?P<alias>{_IDENT}))?)?$"
)
_MODIFY = re.compile(rf"^(?P<op>Insert|Update|Delete|Merge) on (?P<target>{_QUALIFIED})(?: (?P<alias>{_IDENT}))?$")
_JOIN = re.compile(r"^(?P<kind>Nested Loop|Hash|Merge)(?: (?P<type>Left|Right|Full|Semi|Anti|Right Semi|Right Anti))?(?: Join)?$")
_AGG = {"Aggregate": "Plain", "GroupAggregate": "Sorted", "HashAggregate": "Hashed", "MixedAggregate": "Mixed"}
_OTHER = frozenset({
    "Result", "ProjectSet", "Append", "Merge Append", "Recursive Union", "BitmapAnd", "BitmapOr", "Limit", "Sort",
    "Incremental Sort", "Group", "Unique", "Hash", "Materialize", "Memoize", "Gather", "Gather Merge", "WindowAgg",
    "LockRows", "ModifyTable",
})  # fmt: skip
_INPUTS = {"Nested Loop": 2, "Hash Join": 2, "Merge Join": 2, "Hash": 1, "Sort": 1, "Incremental Sort": 1, "Limit": 1,
           "Gather": 1, "Gather Merge": 1, "Materialize": 1, "Memoize": 1, "Aggregate": 1, "Unique": 1, "WindowAgg": 1,
           "LockRows": 1, "Group": 1, "Bitmap Heap Scan": 1, "Subquery Scan": 1, "Recursive Union": 2}  # fmt: skip
_INT = {"Rows Removed by Filter", "Rows Removed by Index Recheck", "Rows Removed by Join Filter", "Heap Fetches",
        "Workers Planned", "Workers Launched", "Index Searches", "Subplans Removed", "Planned Partitions",
        "Tuples Inserted", "Conflicting Tuples", "Query Identifier", "Functions"}  # fmt: skip
_LIST = {"Output", "Sort Key", "Presorted Key", "Group Key", "Hash Key", "Params Evaluated"}
_BOOL = {"Single Copy", "Inner Unique", "Disabled", "Async Capable"}


def _unquote(ident: str | None) -> str | None:
    if ident is None:
        return None
    return ident[1:-1].replace('""', '"') if ident.startswith('"') and ident.endswith('"') else ident


def _split_qualified(name: str) -> tuple[str | None, str]:
    parts = re.findall(_IDENT, name)
    parts = [_unquote(p) or "" for p in parts]
    return (".".join(parts[:-1]) or None, parts[-1]) if len(parts) > 1 else (None, parts[0] if parts else name)


def _node_fields(name: str) -> dict[str, Any] | None:
    """JSON keys of a node from its text name (``Parallel Index Scan Backward using i on s.t x``); None if unknown."""
    out: dict[str, Any] = {}
    if name.startswith("Parallel "):
        out["Parallel Aware"], name = True, name[len("Parallel "):]
    if name.startswith("Async "):
        out["Async Capable"], name = True, name[len("Async "):]
    for mode in ("Partial", "Finalize"):
        if name.startswith(mode + " "):
            out["Partial Mode"], name = mode, name[len(mode) + 1:]
    if name in _AGG:
        out.setdefault("Partial Mode", "Simple")
        return {"Node Type": "Aggregate", "Strategy": _AGG[name], **out}
    m = re.match(r"^(?P<hash>Hash)?SetOp (?P<cmd>Intersect All|Intersect|Except All|Except)$", name)
    if m:
        return {"Node Type": "SetOp", "Strategy": "Hashed" if m["hash"] else "Sorted", "Command": m["cmd"], **out}
    m = _JOIN.match(name)
    if m and (m["kind"] != "Hash" or " Join" in name) and (m["kind"] != "Merge" or " Join" in name):
        kind = "Nested Loop" if m["kind"] == "Nested Loop" else f"{m['kind']} Join"
        return {"Node Type": kind, "Join Type": m["type"] or "Inner", **out}
    m = _MODIFY.match(name)
    if m:
        schema, rel = _split_qualified(m["target"])
        out.update({"Node Type": "ModifyTable", "Operation": m["op"], "Relation Name": rel,
                    "Alias": _unquote(m["alias"]) or rel})  # fmt: skip
        if schema:
            out["Schema"] = schema
        return out
    m = re.match(rf"^Custom Scan \((?P<provider>[^)]*)\)(?: on (?P<target>{_QUALIFIED})(?: (?P<alias>{_IDENT}))?)?$", name)
    if m:
        out.update({"Node Type": "Custom Scan", "Custom Plan Provider": m["provider"]})
        if m["target"]:
            schema, rel = _split_qualified(m["target"])
            out.update({"Relation Name": rel, "Alias": _unquote(m["alias"]) or rel, **({"Schema": schema} if schema else {})})
        return out
    m = _SCAN.match(name)
    if m:
        kind = m["type"]
        out["Node Type"] = kind
        if m["back"]:
            out["Scan Direction"] = "Backward"
        elif kind in ("Index Scan", "Index Only Scan"):
            out["Scan Direction"] = "Forward"
        if m["index"]:
            out["Index Name"] = _unquote(m["index"])
        target, alias = m["target"], _unquote(m["alias"])
        if target is None:
            return out
        schema, obj = _split_qualified(target)
        if kind == "Bitmap Index Scan":
            out["Index Name"] = obj
        elif kind in ("CTE Scan", "WorkTable Scan"):
            out.update({"CTE Name": obj, "Alias": alias or obj})
        elif kind == "Function Scan":
            out.update({"Function Name": obj, "Alias": alias or obj, **({"Schema": schema} if schema else {})})
        elif kind == "Table Function Scan":
            out.update({"Table Function Name": obj, "Alias": alias or obj})
        elif kind == "Named Tuplestore Scan":
            out.update({"Tuplestore Name": obj, "Alias": alias or obj})
        elif kind in ("Subquery Scan", "Values Scan"):
            out["Alias"] = alias or obj
        else:
            out.update({"Relation Name": obj, "Alias": alias or obj, **({"Schema": schema} if schema else {})})
        return out
    if name in _OTHER:
        return {"Node Type": name, **out}
    return None


@dataclass
class _Entry:
    kind: str  # "node", "header", "worker", "block"
    raw: dict[str, Any]
    col: int  # where its properties (or, for a header, its plan's "->") start
    line: _Line
    name: str = ""


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _parse_lines(lines: list[_Line]) -> dict[str, Any]:
    """The JSON document of EXPLAIN text lines (already out of their psql frame)."""
    indent = [len(ln.text) - len(ln.text.lstrip(" ")) for ln in lines]
    base = indent[0]
    root = _node(lines[0], lines[0].text.strip(), first=True)
    doc: dict[str, Any] = {"Plan": root}
    stack: list[_Entry] = [_Entry("node", root, base + 2, lines[0])]
    in_statement = False
    for ln, col in zip(lines[1:], indent[1:], strict=True):
        s = ln.text.strip()
        if not s or _FOOTER.match(s):
            continue
        if "\t" in ln.text[:col + 1]:
            raise PlanTextError(f"line {ln.no} is indented with a tab; paste the plan as EXPLAIN printed it: {s[:80]!r}")
        if s.startswith("->"):
            if not s.startswith("->  "):
                raise PlanTextError(f"line {ln.no} could not be read as a plan node: {s[:80]!r}")
            while stack and stack[-1].col > col:
                stack.pop()
            if in_statement or not stack or stack[-1].col != col or stack[-1].kind not in ("node", "header"):
                raise PlanTextError(f"line {ln.no} does not fit the plan's indentation (a node with no parent above it): {s[:80]!r}")
            parent = stack[-1]
            node = _node(ln, s[4:], first=False)
            if parent.kind == "header":
                if parent.raw.get("_taken"):
                    raise PlanTextError(f"line {ln.no}: {parent.name} has two plans; the paste looks garbled: {s[:80]!r}")
                parent.raw["_taken"] = True
                owner = parent.raw["_owner"]
                kind = "InitPlan" if parent.name.startswith(("InitPlan", "CTE ")) else "SubPlan"
                node = {"Parent Relationship": kind, "Subplan Name": parent.name, **node}
                owner.setdefault("Plans", []).append(node)
            else:
                parent.raw.setdefault("Plans", []).append(node)
            node["_line"] = ln
            stack.append(_Entry("node", node, col + 6, ln))
            continue
        if col == base:  # statement level: the plan's tree is complete
            stack.clear()
            in_statement = True
            block = _statement(doc, s, ln)
            if block is not None:
                stack.append(_Entry("block", block, base + 2, ln))
            continue
        while stack and stack[-1].col > col:
            stack.pop()
        if not stack or stack[-1].col != col:
            raise PlanTextError(f"line {ln.no} does not fit the plan's indentation: {s[:80]!r}")
        top = stack[-1]
        if top.kind == "block":
            _block_line(top, s, ln)
            continue
        if top.kind == "header":
            raise PlanTextError(f"line {ln.no}: {top.name} is followed by {s[:60]!r} instead of its plan ('->  ...')")
        w = _WORKER.match(s)
        if w and top.kind == "node":
            worker: dict[str, Any] = {"Worker Number": int(w["n"])}
            top.raw.setdefault("Workers", []).append(worker)
            _worker_first(worker, w["rest"], ln)
            stack.append(_Entry("worker", worker, col + 2, ln))
            continue
        h = _SUBPLAN.match(s)
        if h and top.kind == "node":
            header = {"_owner": top.raw}
            stack.append(_Entry("header", header, col + 2, ln, name=s))
            continue
        _property(top.raw, s, ln)
    for entry in stack:
        if entry.kind == "header" and not entry.raw.get("_taken"):
            raise PlanTextError(f"the paste is truncated: {entry.name} at line {entry.line.no} has no plan under it")
    _check_inputs(root)
    _finish(root)
    return doc


def _check_inputs(node: dict[str, Any]) -> None:
    """A node with fewer inputs than its kind needs: the paste was cut inside the tree."""
    kids = [k for k in node.get("Plans", []) if k.get("Parent Relationship") not in ("InitPlan", "SubPlan")]
    need = _INPUTS.get(str(node.get("Node Type")), 0)
    if node.get("Node Type") == "Aggregate" and not kids and node.get("Strategy") == "Plain":
        need = 1
    if len(kids) < need:
        ln = node.get("_line")
        where = f"line {ln.no} ({ln.text.strip()[:60]!r})" if isinstance(ln, _Line) else "the first line"
        raise PlanTextError(f"the paste is truncated: the node at {where} has {len(kids)} of its {need} inputs")
    for k in node.get("Plans", []):
        _check_inputs(k)


def _finish(node: dict[str, Any]) -> None:
    """Drop the parser's bookkeeping; name each input's relationship to its parent as JSON does."""
    node.pop("_line", None)
    kids = node.get("Plans", [])
    regular = [k for k in kids if "Parent Relationship" not in k]
    for i, k in enumerate(regular):
        if node.get("Node Type") in ("Append", "Merge Append", "BitmapAnd", "BitmapOr", "Custom Scan"):
            k["Parent Relationship"] = "Member"
        elif node.get("Node Type") == "Subquery Scan":
            k["Parent Relationship"] = "Subquery"
        else:
            k["Parent Relationship"] = "Outer" if i == 0 else "Inner"
    for k in kids:
        _finish(k)


def _node(ln: _Line, text: str, *, first: bool) -> dict[str, Any]:
    m = _HEADER.match(text)
    fields = _node_fields(m["name"]) if m else None
    if m is None or fields is None:
        if re.search(r"\((?:cost|actual)=?", text):
            raise PlanTextError(f"line {ln.no} is cut off or garbled (a node's costs or actuals do not close): {text[:80]!r}")
        if first or m is None:
            raise PlanTextError(
                f"line {ln.no} could not be read as an EXPLAIN plan: {text[:80]!r} "
                "(expected a node such as 'Seq Scan on t  (cost=0.00..1.00 rows=1 width=4)')"
            )
        fields = {"Node Type": m["name"]}  # a node type this reader does not know yet: kept by its name
    node: dict[str, Any] = dict(fields)
    node.setdefault("Parallel Aware", False)
    if m["c0"] is not None:
        node.update({"Startup Cost": float(m["c0"]), "Total Cost": float(m["c1"]), "Plan Rows": int(m["rows"]),
                     "Plan Width": int(m["width"])})  # fmt: skip
    if m["loops"] is not None:
        if m["t0"] is not None:
            node.update({"Actual Startup Time": float(m["t0"]), "Actual Total Time": float(m["t1"])})
        node.update({"Actual Rows": _number(m["arows"]), "Actual Loops": int(m["loops"])})
    elif m["never"]:  # as JSON prints it (with timing on)
        node.update({"Actual Startup Time": 0.0, "Actual Total Time": 0.0, "Actual Rows": 0, "Actual Loops": 0})
    node["_line"] = ln
    return node


def _worker_first(worker: dict[str, Any], rest: str, ln: _Line) -> None:
    a = _ACTUAL.match(rest)
    if a:
        if a["never"]:
            worker.update({"Actual Rows": 0, "Actual Loops": 0})
            return
        if a["t0"] is not None:
            worker.update({"Actual Startup Time": float(a["t0"]), "Actual Total Time": float(a["t1"])})
        worker.update({"Actual Rows": _number(a["rows"]), "Actual Loops": int(a["loops"])})
        return
    _property(worker, rest, ln)


def _kb(text: str) -> int | float:
    return _number(text.strip().removesuffix("kB").strip())


def _segments(text: str) -> list[tuple[str, str]]:
    """``Batches: 1  Memory Usage: 24kB`` → [("Batches", "1"), ("Memory Usage", "24kB")]."""
    out = []
    for part in re.split(r"\s{2,}", text.strip()):
        key, _, value = part.partition(": ")
        out.append((key.strip(), value.strip()))
    return out


def _property(raw: dict[str, Any], s: str, ln: _Line) -> None:
    key, sep, value = s.partition(": ")
    if not sep:
        if s.endswith(":"):  # e.g. "Planning:" or "JIT:" inside a worker: kept as text
            raw[s[:-1]] = {}
            return
        raise PlanTextError(f"line {ln.no} could not be read as a plan line ('Key: value' or '->  node'): {s[:80]!r}")
    ntype = raw.get("Node Type")
    if key == "Buffers":
        raw.update(_buffers(value, ln))
    elif key == "I/O Timings":
        raw.update(_io_timings(value))
    elif key == "WAL":
        for k, v in re.findall(r"(records|fpi|bytes|buffers full)=(\d+)", value):
            raw[{"records": "WAL Records", "fpi": "WAL FPI", "bytes": "WAL Bytes", "buffers full": "WAL Buffers Full"}[k]] = int(v)
    elif key == "Heap Blocks":
        for k, v in re.findall(r"(exact|lossy)=(\d+)", value):
            raw[f"{k.capitalize()} Heap Blocks"] = int(v)
    elif key in ("Sort Method", "Buckets", "Batches", "Hits", "Storage", "Planned Partitions", "Memory"):
        _composite(raw, s, ntype)
    elif key in ("Full-sort Groups", "Pre-sorted Groups"):
        raw[key] = dict(_segments(s))
    elif key in _INT and re.fullmatch(r"-?[\d.]+", value):
        raw[key] = _number(value)
    elif key in _LIST:
        raw.setdefault(key, []).extend(_split_list(value))
    elif key in _BOOL:
        raw[key] = value == "true"
    else:
        raw[key] = value


def _split_list(text: str) -> list[str]:
    """Split at top-level commas (not inside parentheses, brackets or quotes)."""
    out: list[str] = []
    cur: list[str] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if cur:
        out.append("".join(cur).strip())
    return out


def _composite(raw: dict[str, Any], s: str, ntype: Any) -> None:
    for key, value in _segments(s):
        original = re.match(r"^(\d+) \(originally (\d+)\)$", value)
        if key == "Sort Method":
            raw["Sort Method"] = value
        elif key in ("Memory", "Disk") and "Sort Method" in raw and "used=" not in value:
            raw.update({"Sort Space Used": _kb(value), "Sort Space Type": key})
        elif key == "Memory":  # PG 17's planning memory: "used=..kB  allocated=..kB"
            for k, v in re.findall(r"(used|allocated)=([\d.]+)kB", s):
                raw[f"Memory {k.capitalize()}"] = _number(v)
            return
        elif key == "Buckets":
            raw["Hash Buckets"] = int(original[1]) if original else int(value)
            raw["Original Hash Buckets"] = int(original[2]) if original else int(value)
        elif key == "Batches" and ntype == "Hash":
            raw["Hash Batches"] = int(original[1]) if original else int(value)
            raw["Original Hash Batches"] = int(original[2]) if original else int(value)
        elif key == "Batches":
            raw["HashAgg Batches"] = int(value)
        elif key in ("Memory Usage", "Peak Memory Usage"):
            raw["Peak Memory Usage"] = _kb(value)
        elif key in ("Disk Usage", "Maximum Storage"):
            raw[key] = _kb(value)
        elif key in ("Hits", "Misses", "Evictions", "Overflows"):
            raw[f"Cache {key}"] = int(value)
        elif key == "Planned Partitions":
            raw[key] = int(value)
        else:
            raw[key] = value


def _buffers(value: str, ln: _Line) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in value.split(", "):
        words = part.split()
        if not words or words[0] not in ("shared", "local", "temp"):
            raise PlanTextError(f"line {ln.no}: buffers not understood: {value[:80]!r}")
        for pair in words[1:]:
            k, _, v = pair.partition("=")
            if not v.isdigit():
                raise PlanTextError(f"line {ln.no} is cut off or garbled (buffers): {value[:80]!r}")
            out[f"{words[0].capitalize()} {k.capitalize()} Blocks"] = int(v)
    return out


def _io_timings(value: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in value.split(", "):
        words = part.split()
        kind = words[0] if words and "=" not in words[0] else ""
        for pair in words[1 if kind else 0:]:
            k, _, v = pair.partition("=")
            prefix = f"{kind.capitalize()} I/O" if kind not in ("", "shared/local") else "I/O"  # 13-15 name them "I/O ..."
            out[f"{prefix} {k.capitalize()} Time"] = float(v)
    return out


_TRIGGER = re.compile(r"^Trigger (?P<name>.+?)(?: for constraint (?P<cons>.+?))?(?: on (?P<rel>\S+))?: time=(?P<time>[\d.]+) calls=(?P<calls>\d+)$")


def _statement(doc: dict[str, Any], s: str, ln: _Line) -> dict[str, Any] | None:
    """A statement-level line; returns the dict that the block's following lines fill."""
    if s in ("Planning:", "JIT:"):
        block: dict[str, Any] = {}
        doc[s[:-1]] = block
        return block
    key, sep, value = s.partition(": ")
    if key in ("Planning Time", "Execution Time") and value.endswith(" ms"):
        doc[key] = float(value[:-3])
    elif key == "Settings":
        doc["Settings"] = {k.strip(): v.strip().strip("'") for k, _, v in (p.partition(" = ") for p in _split_list(value))}
    elif key == "Query Identifier":
        doc[key] = int(value)
    elif key == "Serialization":
        doc[key] = value
    elif s.startswith("Trigger "):
        t = _TRIGGER.match(s)
        if t is None:
            raise PlanTextError(f"line {ln.no} could not be read as a trigger line: {s[:80]!r}")
        doc.setdefault("Triggers", []).append({
            "Trigger Name": t["name"], **({"Constraint Name": t["cons"]} if t["cons"] else {}),
            **({"Relation": t["rel"]} if t["rel"] else {}), "Time": float(t["time"]), "Calls": int(t["calls"])})  # fmt: skip
    else:
        raise PlanTextError(f"line {ln.no} could not be read as a plan line (after the plan's tree): {s[:80]!r}")
    return None


def _block_line(entry: _Entry, s: str, ln: _Line) -> None:
    raw = entry.raw
    key, _, value = s.partition(": ")
    if key == "Timing":  # JIT: "Generation 0.5 ms (Deform 0.1 ms), Inlining 0.0 ms, ..., Total 7.5 ms"
        raw["Timing"] = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) ms", value)}
    elif key == "Options":
        raw["Options"] = {k: v == "true" for k, v in re.findall(r"(\w+) (true|false)", value)}
    elif key == "Functions":
        raw["Functions"] = int(value)
    else:
        _property(raw, s, ln)


# ---- what a pasted plan leads to ---------------------------------------------------------------
_CONDITIONS = ("Index Cond", "Recheck Cond", "Filter", "Join Filter", "Hash Cond")


def query_of(plan: Plan) -> str:
    """The statement the plan is of, without its ``EXPLAIN (...)`` (empty when the paste did not hold it)."""
    return _explained_sql(plan.sql) if re.match(r"(?i)^\s*explain\b", plan.sql or "") else (plan.sql or "").strip()


def leads(plan: Plan) -> dict[str, Any]:
    """What ``advise`` can go on from: each relation read, how, with which conditions; and the
    ``workbook advise --sql`` command when the paste held the query (auto_explain's Query Text,
    or the statement echoed at psql's prompt)."""
    import shlex

    rels: dict[str, dict[str, Any]] = {}
    for n in plan.nodes:
        if not n.relation:
            continue
        r = rels.setdefault(n.relation, {"relation": n.relation, "nodes": [], "conditions": []})
        r["nodes"].append(n.label)
        for key in _CONDITIONS:
            cond = n.get(key)
            if cond and f"{key}: {cond}" not in r["conditions"]:
                r["conditions"].append(f"{key}: {cond}")
    query = query_of(plan)
    return {
        "relations": list(rels.values()),
        "query": query or None,
        "advise": f"workbook advise --sql {shlex.quote(' '.join(query.split()))}" if query else None,
    }


def _self_cost(node: Any) -> float:
    """A node's total cost minus its inputs' (an estimate's counterpart of exclusive time)."""
    kids = sum(float(c.get("Total Cost", 0) or 0) for c in node.children if c.get("Parent Relationship") not in ("InitPlan", "SubPlan"))
    return max(float(node.get("Total Cost", 0) or 0) - kids, 0.0)


def describe(plan: Plan) -> list[str]:
    """The command line's lines for a pasted plan: notes, nodes with self time and misestimates,
    relations with their conditions, and what to run next."""
    out = [f"note: {n}" for n in plan.notes]
    if plan.analyzed:
        planning = f", planning {plan.planning_ms:.3f} ms" if plan.planning_ms is not None else ""
        out.append(f"execution {plan.execution_ms:.3f} ms{planning}, cache {plan.cache_state}")
    else:
        out.append(f"total cost {plan.total_cost:,.2f} (estimates only)")
    for n in plan.nodes:
        if n.executed:
            mis = f"  rows est {n.estimated_rows:,.0f} actual {n.actual_rows or 0:,.0f}"
            if n.misestimate and n.misestimate >= 10:
                mis += f" ({n.misestimate:.0f}x {n.misestimate_direction}estimate)"
            out.append(f"{'  ' * n.depth}-> {n.label}  [{n.exclusive_ms or 0:.3f} ms self]{mis}")
        elif "Actual Loops" in n.raw:
            out.append(f"{'  ' * n.depth}-> {n.label}  [never executed]")
        else:
            out.append(f"{'  ' * n.depth}-> {n.label}  [cost {float(n.get('Total Cost', 0)):,.2f}, "
                       f"self {_self_cost(n):,.2f}, rows est {n.estimated_rows:,.0f}]")  # fmt: skip
    if not plan.analyzed and plan.total_cost > 0:
        top = max(plan.nodes, key=_self_cost)
        out.append(f"the planner expects most of the cost in {top.label} "
                   f"({_self_cost(top) / plan.total_cost:.0%} of {plan.total_cost:,.2f})")  # fmt: skip
    lead = leads(plan)
    for r in lead["relations"]:
        out.append(f"reads {r['relation']} ({', '.join(dict.fromkeys(r['nodes']))})"
                   + "".join(f"\n    {c}" for c in r["conditions"]))  # fmt: skip
    if lead["advise"]:
        out.append(f"next: to have indexes proposed and measured on your target: {lead['advise']}")
    elif lead["relations"]:
        out.append("next: the paste holds no query text; run `workbook advise --sql '<the query>'` with it to have "
                   "indexes proposed and measured on your target")  # fmt: skip
    return out


def advise_query(plan: Plan) -> str:
    """The query ``advise`` can measure from a plan you bring; refused in one line, with what the
    plan still tells, when the paste did not hold it."""
    query = query_of(plan)
    if query:
        return query
    rels = leads(plan)["relations"]
    told = "; ".join(f"{r['relation']}" + (f" ({', '.join(r['conditions'])})" if r["conditions"] else "") for r in rels)
    raise PlanTextError(
        "the plan holds no query text (auto_explain's 'Query Text:' or the statement psql echoed), so there is "
        f"nothing to measure; it reads {told or 'no table'}: give the query with --sql"
    )
