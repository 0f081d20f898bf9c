"""The workload as the server saw it: ``pg_stat_statements`` top statements, each mapped back to
its query shape, and index advice for several statements together.

* :func:`top_statements` reads ``pg_stat_statements`` for the current database, ordered by total
  time, calls, mean time or rows, leaving out the workbook's own bookkeeping (``EXPLAIN``,
  ``set_config``, catalog reads, transaction control). Each statement is mapped to the catalog
  shape (``datasets/ai_app/queries``) whose SQL it is once constants, ``$n`` and ``%(name)s``
  placeholders, comments, case and spacing are ignored.
* :func:`advise_workload` proposes candidates from each statement's plan (the generic plan of a
  ``$n`` statement on PostgreSQL 16+, see :mod:`workbook.experiment.advise`), merges identical
  candidates (one index proposed by several statements is one candidate), then verifies each with
  a what-if index against **every** statement that proposed it: used by the planner, timed with
  and without in interleaved turns. The chosen set is greedy by time saved, weighted by each
  statement's share of the workload's total time; a statement already served by a chosen index
  is not counted again. Write cost is not measured here (``workbook advise SQL`` measures it
  for one statement).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError
from ..statement import as_read, check_statement
from .advise import Candidate, _candidates, _uses, bind_parameters, generic_plan, parameter_numbers
from .knobs import WhatIfIndex
from .pinning import same_cpu
from .plan import explain
from .timing import PLAN_CACHE_WARMUP, time_interleaved, verdict
from .wire import statement_runner

if TYPE_CHECKING:
    import pandas as pd

    from ..cluster.target import Target

ORDERS = {"total": "total_exec_time", "calls": "calls", "mean": "mean_exec_time", "rows": "rows"}
_INTERNAL = re.compile(
    r"^\s*(EXPLAIN|SET|SHOW|BEGIN|COMMIT|ROLLBACK|END|SAVEPOINT|RELEASE|DEALLOCATE|PREPARE|DISCARD|RESET|VACUUM|ANALYZE|"
    r"CREATE|DROP|ALTER|COPY|LISTEN|TRUNCATE|GRANT|REVOKE|DO|CALL|LOCK)\b"
    r"|pg_catalog\.|\bpg_stat|\bpg_class\b|\bpg_namespace\b|\bpg_index\b|\bpg_attribute\b|\bpg_locks\b|set_config\(|"
    r"current_setting\(|pg_blocking_pids|pg_database|pg_settings|pg_sleep|pg_backend_pid|version\(\)|pg_is_in_recovery|"
    r"txid_|pg_current_wal|pg_last_wal|information_schema|\bdataset_info\b|\bto_regclass\(|\bpg_extension\b|"
    r"/\*\s*workbook:|\bpg_prepared_statements\b",  # the workbook's own bookkeeping (the dataset checksum, timed plans)
    re.I,
)  # fmt: skip


def fingerprint(text: str) -> str:
    """A statement's text with constants, placeholders, comments, case and spacing taken out."""
    t = re.sub(r"--[^\n]*", " ", text)
    t = re.sub(r"/\*.*?\*/", " ", t, flags=re.S)
    t = re.sub(r"'(?:[^']|'')*'", "?", t)
    t = re.sub(r"::\s*\w+(?:\s+(?:precision|varying|with(?:out)?\s+time\s+zone))?(?:\[\])?", "", t)  # casts
    t = re.sub(r"%\(\w+\)s|\$\d+|(?<!:):\w+|\b\d+(?:\.\d+)?\b", "?", t)
    t = re.sub(r"\s+", " ", t).strip().rstrip(";").strip().lower()
    return re.sub(r"\s*([(),=<>+*/-])\s*", r"\1", t)


def shape_fingerprints() -> dict[str, str]:
    """fingerprint -> "shape" or "shape:variant", for every catalog statement."""
    from ..dataset.shapes import load_shapes

    out: dict[str, str] = {}
    for name, qs in load_shapes().items():
        for vname, v in qs.variants.items():
            label = name if vname == qs.default_variant else f"{name}:{vname}"
            for k, stmt in enumerate(v.statements):
                out.setdefault(fingerprint(stmt), label + (f" (step {k + 1})" if len(v.statements) > 1 else ""))
    return out


def reset_statements(target: Target) -> None:
    """Empty ``pg_stat_statements`` (all databases), so the next workload is all it holds."""
    with target.connect(application_name="workbook-observe") as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def top_statements(target: Target, *, order: str = "total", limit: int = 10, internal: bool = False) -> pd.DataFrame:
    """The current database's top statements by ``order`` (total, calls, mean, rows), with their shapes."""
    import pandas as pd

    if order not in ORDERS:
        raise WorkbookError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if limit < 1:
        raise WorkbookError(f"limit must be at least 1, got {limit!r}")
    with target.connect(application_name="workbook-observe") as conn:
        _require_extension(conn)
        rows = conn.execute(
            "SELECT s.queryid, s.query, s.calls, s.total_exec_time, s.mean_exec_time, s.rows,"
            " s.shared_blks_hit, s.shared_blks_read"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            f" WHERE d.datname = current_database() ORDER BY {ORDERS[order]} DESC"
        ).fetchall()
        role = conn.info.user
    shapes = shape_fingerprints()
    out: list[dict[str, Any]] = []
    hidden, hidden_ms = 0, 0.0
    for qid, query, calls, total, mean, nrows, hit, read in rows:
        if query == HIDDEN_TEXT:  # another role's statement, to a role without pg_read_all_stats
            hidden, hidden_ms = hidden + 1, hidden_ms + float(total)
            continue
        if (not internal and _INTERNAL.search(query)) or len(out) >= limit:
            continue  # past the limit the rows are read on only to count what is hidden
        out.append({
            "queryid": qid, "shape": shapes.get(fingerprint(query)), "calls": int(calls),
            "total_ms": round(float(total), 3), "mean_ms": round(float(mean), 4), "rows": int(nrows),
            "hit_ratio": round(hit / (hit + read), 4) if hit + read else None, "query": query,
        })  # fmt: skip
    cols = ["queryid", "shape", "calls", "total_ms", "mean_ms", "rows", "hit_ratio", "query"]
    frame = pd.DataFrame(out, columns=cols)
    # a statement of no catalog shape is None (JSON null), not the NaN a string column would make of it
    frame["shape"] = pd.Series([r["shape"] for r in out], index=frame.index, dtype=object)
    frame.attrs["hidden"] = hidden
    frame.attrs["hidden_ms"] = round(hidden_ms, 3)
    frame.attrs["hidden_note"] = hidden_note(role, hidden, hidden_ms)
    return frame


HIDDEN_TEXT = "<insufficient privilege>"  # what pg_stat_statements shows for a statement the role may not see


def hidden_note(role: str, count: int, total_ms: float) -> str | None:
    """What a role without ``pg_read_all_stats`` does not see in ``pg_stat_statements``, and the grant that shows it."""
    if not count:
        return None
    return (f"{count:,} statement{'s' if count != 1 else ''} of other roles ({total_ms:,.0f} ms in total) "
            f"{'are' if count != 1 else 'is'} hidden from role {role!r}: pg_stat_statements shows their text only to "
            f"members of pg_read_all_stats (GRANT pg_read_all_stats TO {role}; on a managed service, the admin "
            "role usually has it)")  # fmt: skip


def _require_extension(conn: Any) -> None:
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()
    if row is None:
        raise WorkbookError(
            "pg_stat_statements is not installed in this database; add it to shared_preload_libraries, restart, "
            "and run CREATE EXTENSION pg_stat_statements (the local cluster has it)"
        )


# --------------------------------------------------------------------------- advice for a workload
@dataclass
class WorkloadIndex:
    """One candidate and what it does for each statement that proposed it."""

    candidate: Candidate
    statements: list[int]  # indexes into WorkloadAdvice.statements
    speedups: dict[int, float] = field(default_factory=dict)  # statement -> speedup, where measurably faster
    verdicts: dict[int, str] = field(default_factory=dict)
    saved_ms: float = 0.0  # workload time saved (weighted)

    def as_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {"ddl": c.ddl, "table": c.table, "columns": c.columns, "method": c.method, "why": c.why,
                "size_bytes": c.size_bytes, "build_seconds": c.build_seconds, "statements": self.statements,
                "speedups": {str(k): v for k, v in self.speedups.items()},
                "verdicts": {str(k): v for k, v in self.verdicts.items()}, "saved_ms": round(self.saved_ms, 3)}  # fmt: skip


@dataclass
class WorkloadAdvice:
    statements: list[dict[str, Any]]  # {"statement", "sql" (as timed), "weight_ms", "shape", "note"}
    chosen: list[WorkloadIndex]
    considered: list[WorkloadIndex]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"statements": self.statements, "chosen": [w.as_dict() for w in self.chosen],
                "considered": [w.as_dict() for w in self.considered], "reason": self.reason}  # fmt: skip

    def __str__(self) -> str:
        """What was advised, as the command line and the report say it: the reason, each statement,
        and each chosen index with the statements it serves and how much faster."""
        lines = [self.reason]
        for k, st in enumerate(self.statements):
            lines.append(f"  [{k}] {st['shape'] or '(not a catalog shape)'}: {' '.join(str(st['statement']).split())[:100]}")
            if str(st.get("note", "")).startswith("skipped"):
                lines.append(f"      {st['note']}")
        for w in self.chosen:
            serves = ", ".join(f"[{i}] {w.speedups[i]}x" for i in w.speedups)
            lines.append(f"  {w.candidate.ddl};\n      serves {serves}; size {w.candidate.size_bytes or 0:,} B")
        return "\n".join(lines)


def advise_from_stats(target: Target, *, top: int = 5, order: str = "total", **kwargs: Any) -> WorkloadAdvice:
    """:func:`advise_workload` on the ``top`` statements ``pg_stat_statements`` holds (reads and UPDATE/DELETE)."""
    stats = top_statements(target, order=order, limit=200)
    picked = []
    for r in stats.to_dict("records"):
        if re.match(r"\s*(INSERT|MERGE)\b", r["query"], re.I):
            continue  # an insert finds no rows: no index serves it
        picked.append(r)
        if len(picked) >= top:
            break
    if not picked:
        why = stats.attrs.get("hidden_note") or "run a workload first"
        return WorkloadAdvice([], [], [], f"pg_stat_statements holds no statement to advise on; {why}")
    return advise_workload(target, [r["query"] for r in picked], weights=[r["total_ms"] for r in picked],
                           shapes=[r["shape"] for r in picked], **kwargs)  # fmt: skip


def advise_workload(
    target: Target,
    statements: list[str],
    *,
    weights: list[float] | None = None,
    shapes: list[str | None] | None = None,
    repeats: int = 7,
    warmup: int = 2,
    max_candidates: int = 6,
    timeout_s: float = 30.0,
) -> WorkloadAdvice:
    """Indexes for several statements together, each verified with a what-if index (see module doc)."""
    if not statements:
        raise WorkbookError("advise_workload needs at least one statement")
    if repeats < 2:
        raise WorkbookError(f"repeats must be at least 2, got {repeats!r}")
    weights = list(weights) if weights is not None else [1.0] * len(statements)
    shapes = list(shapes) if shapes is not None else [None] * len(statements)
    import psycopg

    info: list[dict[str, Any]] = []
    merged: dict[tuple[str, tuple[str, ...], str], WorkloadIndex] = {}
    with target.connect(application_name="workbook-advise") as conn:
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
        for i, text in enumerate(statements):
            entry: dict[str, Any] = {"statement": text, "sql": None, "weight_ms": weights[i], "shape": shapes[i],
                                     "note": "", "plan": None}  # fmt: skip
            info.append(entry)
            try:
                read = as_read(check_statement(text, what=f"statement {i + 1}"))
                timed, proposing = read.text, None
                if parameter_numbers(read.text):
                    b = bind_parameters(conn, read.text, timeout_s=timeout_s)
                    timed, entry["note"] = b.sql, f"parameters sampled: {b.describe()}"
                    if conn.info.server_version >= 160000:
                        proposing = generic_plan(conn, read.text, timeout_s=timeout_s)
                if proposing is None:
                    proposing = explain(conn, timed, analyze=False, timeout_s=timeout_s)
            except (WorkbookError, psycopg.Error) as exc:
                entry["note"] = f"skipped: {str(exc).splitlines()[0]}"
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                continue
            entry["sql"], entry["plan"] = timed, proposing.summary()
            for cand in _candidates(conn, _uses(proposing)):
                sig = (cand.spec.table, tuple(cand.spec.keys), cand.method)
                merged.setdefault(sig, WorkloadIndex(cand, [])).statements.append(i)
    if not target.allow_writes:
        return WorkloadAdvice(info, [], list(merged.values()),
                              "the target is read-only: candidates from the plans, NOT measured; use --allow-writes on a copy")  # fmt: skip
    total = sum(weights) or 1.0
    ranked = sorted(merged.values(), key=lambda w: -sum(weights[i] for i in w.statements))[:max_candidates]
    for w in ranked:
        _verify_for(target, w, info, repeats=repeats, warmup=warmup, timeout_s=timeout_s)
    chosen: list[WorkloadIndex] = []
    served: set[int] = set()
    for w in sorted(ranked, key=lambda w: -w.saved_ms):
        gain = sum(weights[i] * (1 - 1 / s) for i, s in w.speedups.items() if i not in served)
        if gain > 0:
            chosen.append(w)
            served.update(w.speedups)
    for w in ranked:
        w.saved_ms = round(w.saved_ms, 3)
    if chosen:
        saved = sum(w.saved_ms for w in chosen)
        reason = (f"{len(chosen)} index(es) serve {len(served)} of {len(statements)} statements; about "
                  f"{100 * min(saved, total) / total:.0f}% of their total time saved")  # fmt: skip
    else:
        reason = f"none of {len(ranked)} candidates is measurably faster for the statements that proposed it"
    return WorkloadAdvice(info, chosen, ranked, reason)


def _verify_for(target: Target, w: WorkloadIndex, info: list[dict[str, Any]], *, repeats: int, warmup: int,
                timeout_s: float) -> None:  # fmt: skip
    knob = WhatIfIndex(w.candidate.spec)
    with target.connect(application_name="workbook-advise") as base, target.connect(application_name="workbook-advise") as treat:
        for c in (base, treat):
            c.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
        with knob.applied(treat), base.transaction(force_rollback=True):
            w.candidate.size_bytes, w.candidate.build_seconds = knob.cost.size_bytes, knob.cost.build_seconds
            for i in w.statements:
                q = info[i]["sql"]
                if not explain(treat, q, analyze=False, timeout_s=timeout_s).uses_index(w.candidate.spec.name):
                    w.verdicts[i] = "not used by the planner"
                    continue
                with same_cpu([base, treat]):
                    a, b = time_interleaved([statement_runner(c, q) for c in (base, treat)], repeats=repeats,
                                            warmup=max(warmup, PLAN_CACHE_WARMUP + 1))  # past the plan switch
                v = verdict(a, b)
                w.verdicts[i] = v.text
                if v.kind == "faster":
                    w.speedups[i] = round(v.ratio, 3)
                    w.saved_ms += float(info[i]["weight_ms"]) * (1 - 1 / v.ratio)
    w.candidate.verified = True
