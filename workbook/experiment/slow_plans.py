"""Slow statements' plans, as the server ran them: ``auto_explain`` during a workload, its log read back.

:func:`capture_slow_plans` is a context manager around any workload (``workbook bench``, a
lesson's mix). For its duration the current database gets, by ``ALTER DATABASE ... SET`` (so every
*new* session of the workload has them, on the primary and, through the replicated catalog, on
every replica)::

    session_preload_libraries = auto_explain   (added to what was there)
    auto_explain.log_min_duration = <threshold_ms>   auto_explain.log_format = json
    auto_explain.log_analyze = on   auto_explain.log_timing = off (or on)   auto_explain.log_buffers = on
    auto_explain.log_nested_statements = off   auto_explain.sample_rate = <rate>
    auto_explain.log_parameter_max_length = 0 (16+: no parameter values in the log)

and afterwards exactly the previous per-database settings are put back, also when the workload
fails. The previous settings are recorded in the database itself (``workbook.slow_plans_restore``,
with the pid of the capture's session) before anything is changed, so a capture killed half-way is
undone by the next one, and a second capture while one runs is refused.

Where the log is read (:mod:`workbook.experiment.server_log`): the local cluster's node log file
directly, from the offset it had when the capture started; elsewhere through SQL
(``pg_read_binary_file``, with files rotated to meanwhile) when the role may. A managed server's
log is usually not readable at all: then the capture does not run and says why
(``Capture.reason``); the workload runs anyway.

Each logged plan (``LOG:  duration: 12.3 ms  plan:`` followed by the JSON, tab-indented in the
stderr format, or inside one jsonlog/csvlog record) is parsed with
:func:`~workbook.experiment.plan.parse_plan`, its statement mapped to its query shape the way
``pg_stat_statements`` statements are (:func:`~workbook.experiment.workload.fingerprint`), its text
redacted everywhere in the plan (the target's DSNs and passwords, ``password = '...'`` literals;
the log gets no parameter values as such, though a custom plan's filters show the values it was
planned for), and stored in the results store's ``slow_plans`` table under a key made of node,
log time, pid, duration and text: reading the same log twice stores each plan once.

What it costs: with ``log_analyze`` every statement of every session is instrumented (rows and
buffers per node), not only the slow ones — auto_explain cannot know in advance which will be
slow. :func:`overhead` measures it, interleaved, against sessions without auto_explain (the
observability lesson's ``slow_plans`` step shows it). Measured on the shared 2-core VM, scale 0.05:
a scan + aggregate of 45k rows (~1.3-5 ms) 1.1-1.24x slower with timing off and 1.7-2.1x with
timing on; a primary-key lookup (~0.05 ms) and a 17 ms scan showed no measurable difference in
most runs (single-client timings swing, so read the verdicts, not one number). ``sample_rate``
instruments only that share of statements.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError
from .plan import Plan, parse_plan
from .server_log import FileLog, SqlLog, open_log, parse_log

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

    from ..cluster.target import Target
    from ..results.store import ResultsStore

MARKER = "workbook.slow_plans_restore"
APP = "workbook-slow-plans"
#: application names of the workbook's own sessions around a load (sampling a mix's parameters, bookkeeping):
#: their statements are not the workload's, whatever they read
OWN_APPS = frozenset({APP, "workbook-traffic-admin", "workbook-traffic-sampler"})
_PASSWORD_LITERAL = re.compile(r"(?i)\b(password|passwd|secret)(\s*(?:=|:=|\bto\b)?\s*)'(?:[^']|'')*'")


def _settings(threshold_ms: float, sample_rate: float, timing: bool, buffers: bool, server_version: int) -> dict[str, str]:
    s = {
        "auto_explain.log_min_duration": f"{threshold_ms:g}ms" if threshold_ms else "0",
        "auto_explain.log_format": "json",
        "auto_explain.log_analyze": "on",
        "auto_explain.log_timing": "on" if timing else "off",
        "auto_explain.log_buffers": "on" if buffers else "off",
        "auto_explain.log_nested_statements": "off",
        "auto_explain.sample_rate": f"{sample_rate:g}",
        "auto_explain.log_settings": "on",
    }
    if server_version >= 160000:
        s["auto_explain.log_parameter_max_length"] = "0"
    return s


# --------------------------------------------------------------------------- what a capture found
@dataclass
class SlowPlan:
    """One statement auto_explain logged: when, where, how long, its text and plan, its query shape."""

    plan_id: str
    captured_at: dt.datetime | None
    node: str
    pid: int | None
    duration_ms: float
    query: str
    document: dict[str, Any] = field(repr=False)  # auto_explain's JSON: "Query Text", "Plan" ...
    shape: str | None = None
    internal: bool = False

    @property
    def plan(self) -> Plan:
        return parse_plan(self.document, sql=self.query)

    def record(self, capture_id: str, threshold_ms: float, source: str) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "capture_id": capture_id, "captured_at": self.captured_at, "node": self.node,
                "pid": self.pid, "duration_ms": self.duration_ms, "shape": self.shape, "query": self.query,
                "plan": self.document, "plan_summary": self.plan.summary(), "internal": self.internal,
                "threshold_ms": threshold_ms, "source": source}  # fmt: skip


@dataclass
class Capture:
    """What one capture did: whether it ran (and why not), its settings, and the plans it read."""

    threshold_ms: float
    source: str = "workbook"
    ran: bool = False
    reason: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)  # whose logs were read
    notes: list[str] = field(default_factory=list)  # a node skipped, a rotated log, unparsed entries
    plans: list[SlowPlan] = field(default_factory=list)
    unparsed: int = 0
    stored: int | None = None  # rows new to the results store (None: not stored)
    capture_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    def summary(self) -> dict[str, Any]:
        """Scalars for a report or ``--json``: ran, reason, threshold, counts."""
        return {"ran": self.ran, "reason": self.reason or None, "threshold_ms": self.threshold_ms,
                "captured": len(self.plans), "workload_statements": sum(not p.internal for p in self.plans),
                "unparsed": self.unparsed, "stored_new": self.stored, "nodes": ", ".join(self.nodes),
                "notes": "; ".join(self.notes) or None}  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        return [p.record(self.capture_id, self.threshold_ms, self.source) for p in self.plans]

    def frame(self, *, internal: bool = False) -> pd.DataFrame:
        """One row per captured statement, slowest first (the workbook's own statements left out unless ``internal``)."""
        import pandas as pd

        cols = ["captured_at", "node", "duration_ms", "shape", "plan_summary", "query", "plan_id"]
        rows = [{**r, "query": " ".join(r["query"].split())} for r in self.records() if internal or not r["internal"]]
        return pd.DataFrame(rows, columns=cols).sort_values("duration_ms", ascending=False, ignore_index=True)

    def slowest(self) -> SlowPlan | None:
        mine = [p for p in self.plans if not p.internal] or self.plans
        return max(mine, key=lambda p: p.duration_ms) if mine else None

    def save(self, store: ResultsStore) -> int:
        self.stored = store.append_slow_plans(self.records())
        return self.stored


def redact_statement(text: str, dsns: tuple[str, ...] = ()) -> str:
    """A logged statement with the target's DSNs and passwords, and ``password = '...'`` literals, masked."""
    from ..cluster.target import REDACTED, redact_text

    return _PASSWORD_LITERAL.sub(lambda m: f"{m[1]}{m[2]}'{REDACTED}'", redact_text(text, *dsns))


def _redact_strings(value: Any, dsns: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact_statement(value, dsns)
    if isinstance(value, dict):
        return {k: _redact_strings(v, dsns) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_strings(v, dsns) for v in value]
    return value


def to_slow_plans(entries: list[dict[str, Any]], node: str, dsns: tuple[str, ...] = ()) -> list[SlowPlan]:
    """Parsed log entries as :class:`SlowPlan`: redacted, mapped to their query shape."""
    from .workload import _INTERNAL, fingerprint, shape_fingerprints

    shapes = shape_fingerprints()
    out = []
    for e in entries:
        doc = dict(e["doc"])
        doc.pop("Query Parameters", None)  # never stored: values may be secrets
        doc = _redact_strings(doc, dsns)  # the text, and the literals in filters and conditions
        query = str(doc.get("Query Text", ""))
        stamp = e["logged_at"].isoformat() if e["logged_at"] else ""
        key = hashlib.sha256(f"{node}|{stamp}|{e['pid']}|{e['ms']}|{query}".encode()).hexdigest()[:24]
        out.append(SlowPlan(key, e["logged_at"], node, e["pid"], e["ms"], query, doc,
                            shape=shapes.get(fingerprint(query)),
                            internal=bool(_INTERNAL.search(query)) or e.get("app") in OWN_APPS))  # fmt: skip
    return out


# --------------------------------------------------------------------------- turning auto_explain on and off
def _db_settings(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The current database's own settings (``ALTER DATABASE ... SET``, for every role)."""
    row = conn.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
        " WHERE d.datname = current_database() AND s.setrole = 0").fetchone()  # fmt: skip
    return dict(item.split("=", 1) for item in (row[0] if row and row[0] else []))


def _set(conn: psycopg.Connection[Any], name: str, value: str | None) -> None:
    from psycopg import sql

    db = sql.Identifier(conn.info.dbname)
    guc = sql.SQL(".").join(sql.Identifier(p) for p in name.split("."))
    if value is None:
        conn.execute(sql.SQL("ALTER DATABASE {} RESET {}").format(db, guc))
    elif name == "session_preload_libraries":  # a list: one literal per library, or the list is one odd name
        items = sql.SQL(", ").join(sql.Literal(x) for x in _list_items(value))
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(db, guc, items))
    else:
        conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(db, guc, sql.Literal(value)))


def _list_text(items: list[str]) -> str:
    return ", ".join(x if re.fullmatch(r"[\w.$/-]+", x) else '"' + x.replace('"', '""') + '"' for x in items)


def _list_items(value: str) -> list[str]:
    """The names in a list setting as pg_db_role_setting shows it (``foo, "odd name", auto_explain``)."""
    items = re.findall(r'\s*("(?:[^"]|"")*"|[^,]+?)\s*(?:,|$)', value)
    return [x[1:-1].replace('""', '"') if x.startswith('"') else x for x in items if x]


def _restore(conn: psycopg.Connection[Any], previous: dict[str, str | None]) -> None:
    for name, value in previous.items():
        _set(conn, name, value)
    _set(conn, MARKER, None)


def left_on(conn: psycopg.Connection[Any]) -> bool:
    """Whether a capture's record of the previous settings is still in the database (a capture is
    running, or one was killed and left auto_explain switched on)."""
    return MARKER in _db_settings(conn)


def restore_leftover(target: Target) -> dict[str, str | None] | None:
    """Undo what a killed capture left (its recorded previous settings); None when nothing was left.

    Refused while the capture that wrote the record is still running (its session is alive)."""
    with target.connect(application_name=APP) as conn:
        left = _db_settings(conn).get(MARKER)
        if left is None:
            return None
        rec = json.loads(left)
        alive = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND application_name = %s",
                             (rec.get("pid"), APP)).fetchone()  # fmt: skip
        if alive:
            raise WorkbookError(f"another slow-plan capture is running on this database (session pid {rec.get('pid')}); "
                                "wait for it to finish")  # fmt: skip
        _restore(conn, rec["previous"])
        return dict(rec["previous"])


def _why_not(conn: psycopg.Connection[Any], target: Target) -> str:
    """Why auto_explain cannot be switched on for this database, or ''."""
    import psycopg

    if not target.allow_writes:
        return ("the target is read-only: switching auto_explain on needs ALTER DATABASE ... SET "
                "(pass --allow-writes / allow_writes=True; it is undone afterwards)")  # fmt: skip
    superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not (superuser and superuser[0]):
        return (f"role {conn.info.user!r} is not a superuser: session_preload_libraries and auto_explain.* are "
                "superuser settings (on a managed service, enable auto_explain in its parameter group)")  # fmt: skip
    try:
        with target.connect(application_name=APP) as probe:
            probe.execute("LOAD 'auto_explain'")
    except psycopg.Error as exc:
        return f"the server has no auto_explain library: {str(exc).splitlines()[0]}"
    return ""


def check_threshold(threshold_ms: object, what: str = "threshold_ms") -> float:
    """A threshold in milliseconds from 0 to one hour, or a one-line error naming ``what``."""
    if not isinstance(threshold_ms, (int, float)) or isinstance(threshold_ms, bool) or not 0 <= threshold_ms <= 3_600_000:
        raise WorkbookError(f"{what} must be a number of milliseconds from 0 to 3600000, got {threshold_ms!r}")
    return float(threshold_ms)


def applied_threshold(threshold_ms: float) -> float:
    """The threshold auto_explain applies: ``log_min_duration`` counts whole milliseconds (the server
    rounds 3.44 to 3, and would round 0.4 to 0, which logs every statement), so a positive threshold
    becomes at least 1 ms; the capture records this value, not the one asked for."""
    return 0.0 if threshold_ms == 0 else float(max(1, round(threshold_ms)))


@contextmanager
def capture_slow_plans(
    target: Target,
    *,
    threshold_ms: float = 100.0,
    sample_rate: float = 1.0,
    timing: bool = False,
    buffers: bool = True,
    store: ResultsStore | None = None,
    source: str = "workbook",
    log_access: str = "auto",
) -> Iterator[Capture]:
    """auto_explain on for the current database while the ``with`` block runs its workload; the plans
    of statements slower than ``threshold_ms`` read from the log afterwards (see the module doc).
    auto_explain counts whole milliseconds: the threshold applied, and recorded, is
    :func:`applied_threshold` of the one given.

    Yields a :class:`Capture`, filled in when the block ends (``plans``, ``stored``). When it cannot
    run (read-only or managed target, no superuser, log out of reach) ``ran`` is False, ``reason``
    says why, nothing is changed, and the block still runs.
    """
    threshold_ms = applied_threshold(check_threshold(threshold_ms))
    if not isinstance(sample_rate, (int, float)) or not 0 < sample_rate <= 1:
        raise WorkbookError(f"sample_rate must be above 0 and at most 1, got {sample_rate!r}")
    if log_access not in ("auto", "file", "sql"):
        raise WorkbookError(f"log_access must be auto, file or sql, got {log_access!r}")
    cap = Capture(threshold_ms=float(threshold_ms), source=source)
    dsns = tuple(e.dsn for e in target.endpoints)
    readers: dict[str, FileLog | SqlLog] = {}
    with target.connect(application_name=APP) as holder:  # held open: its pid marks the capture as alive
        cap.reason = _why_not(holder, target)
        if not cap.reason:
            restore_leftover(target)
            for ep in target.endpoints:
                reader, why = open_log(target, ep.name, log_access, app=APP)
                if reader is not None:
                    readers[ep.name] = reader
                elif ep is target.primary:
                    cap.reason = why
                else:
                    cap.notes.append(f"{ep.name} not captured: {why}")
        if cap.reason:
            yield cap
            return
        cap.settings = _settings(cap.threshold_ms, float(sample_rate), timing, buffers, holder.info.server_version)
        before = _db_settings(holder)
        libs = _list_items(before.get("session_preload_libraries", ""))
        wanted = {"session_preload_libraries": _list_text(libs if "auto_explain" in libs else [*libs, "auto_explain"]),
                  **cap.settings}  # fmt: skip
        previous = {k: before.get(k) for k in wanted}
        _set(holder, MARKER, json.dumps({"pid": holder.info.backend_pid, "previous": previous}))
        try:
            for k, v in wanted.items():
                _set(holder, k, v)
            cap.ran = True
            yield cap
        finally:
            _restore(holder, previous)
    cap.nodes = list(readers)
    for node, reader in readers.items():
        text, notes = reader.read_new()
        cap.notes += [f"{node}: {n}" for n in notes]
        entries, bad = parse_log(text, reader.fmt)
        cap.unparsed += bad
        cap.plans += to_slow_plans(entries, node, dsns)
    if cap.unparsed:
        cap.notes.append(f"{cap.unparsed} logged plan(s) could not be parsed (cut off or not JSON)")
    cap.plans.sort(key=lambda p: -p.duration_ms)
    if store is not None:
        cap.save(store)


# --------------------------------------------------------------------------- what it costs
#: the arms :func:`overhead` times against a session without auto_explain: (timing, buffers)
OVERHEAD_ARMS = {
    "log_analyze, buffers, timing off": (False, True),  # what a capture uses by default
    "log_analyze, timing off, no buffers": (False, False),
    "log_analyze, buffers, timing on": (True, True),
}


def overhead(target: Target, statements: dict[str, str], *, repeats: int = 30, warmup: int = 5) -> pd.DataFrame:
    """Each statement timed, interleaved, in a session without auto_explain and in sessions with it
    (``log_analyze`` on, the threshold above anything so nothing is logged: the instrumentation
    alone) for each of :data:`OVERHEAD_ARMS`. One row per statement and arm: median, overhead in
    percent of the plain median, and the verdict (auto_explain's session is the treatment)."""
    import pandas as pd

    from .pinning import same_cpu
    from .timing import median, time_interleaved, verdict
    from .wire import statement_runner

    if repeats < 2:
        raise WorkbookError(f"repeats must be at least 2, got {repeats!r}")
    rows: list[dict[str, Any]] = []
    conns = [target.connect(application_name=APP) for _ in range(len(OVERHEAD_ARMS) + 1)]
    try:
        for conn, (timing, buffers) in zip(conns[1:], OVERHEAD_ARMS.values(), strict=True):
            conn.execute("LOAD 'auto_explain'")
            for k, v in _settings(3_600_000, 1.0, timing, buffers, conn.info.server_version).items():
                conn.execute("SELECT set_config(%s, %s, false)", (k, v))
        for label, q in statements.items():
            with same_cpu(conns):
                base, *arms = time_interleaved([statement_runner(c, q) for c in conns], repeats=repeats, warmup=warmup)
            rows.append({"statement": label, "arm": "without auto_explain", "median_ms": round(median(base), 4)})
            for arm, samples in zip(OVERHEAD_ARMS, arms, strict=True):
                cmp = verdict(base, samples)
                rows.append({"statement": label, "arm": arm, "median_ms": round(median(samples), 4),
                             "overhead_pct": round((1 / cmp.ratio - 1) * 100, 1), "verdict": cmp.text})  # fmt: skip
    finally:
        for c in conns:
            c.close()
    return pd.DataFrame(rows, columns=["statement", "arm", "median_ms", "overhead_pct", "verdict"])


# --------------------------------------------------------------------------- showing what is stored
def describe_stored(frame: pd.DataFrame, limit: int = 10) -> tuple[str, dict[str, Any]]:
    """Stored slow plans (``ResultsStore.slow_plans()``) as text and as a JSON-ready dict, slowest first."""
    rows = frame.head(limit).to_dict("records")
    doc = {"captures": sorted({str(r["capture_id"]) for r in frame.to_dict("records")}), "statements": int(len(frame)),
           "plans": [{k: v for k, v in r.items() if k != "plan"} for r in rows]}  # fmt: skip
    if not rows:
        return ("no slow plans stored yet; capture some: workbook bench --mix read --slow-plans 50 "
                "(or the observability lesson's slow_plans step)"), doc  # fmt: skip
    counts = frame.fillna({"shape": "(not a catalog shape)"}).groupby("shape")["duration_ms"].agg(["size", "max"])
    lines = [f"{len(frame)} statements over their threshold ({rows[0]['threshold_ms']:g} ms), by query shape:"]
    lines += [f"  {shape}: {int(r['size'])}, slowest {float(r['max']):,.1f} ms"
              for shape, r in counts.sort_values("max", ascending=False).iterrows()]  # fmt: skip
    lines.append("the slowest:")
    for r in rows:
        when = r["captured_at"].strftime("%Y-%m-%d %H:%M:%S") if r["captured_at"] is not None else "?"
        lines.append(f"{r['duration_ms']:>10,.1f} ms  {when}  {r['node']}  {r['shape'] or '(not a catalog shape)'}"
                     f"  [{r['plan_id'][:10]}]\n              {r['plan_summary']}\n              "
                     f"{' '.join(str(r['query']).split())[:110]}")  # fmt: skip
    lines.append("one plan node by node: workbook slow-plans --plan ID")
    return "\n".join(lines), doc


def describe_plan(frame: pd.DataFrame, plan_id: str) -> tuple[str, dict[str, Any]]:
    """One stored plan (``plan_id`` or a unique prefix of it): its nodes as text, and the record."""
    hits = frame[frame["plan_id"].astype(str).str.startswith(plan_id)] if len(frame) and plan_id else frame.iloc[0:0]
    if len(hits) != 1:
        raise WorkbookError(f"{'no' if not len(hits) else 'more than one'} stored slow plan has the id {plan_id!r}; "
                            "see the ids in: workbook slow-plans --all")  # fmt: skip
    r = {str(k): v for k, v in hits.iloc[0].to_dict().items()}
    plan = parse_plan(r["plan"], sql=str(r["query"]))
    nodes = plan.frame()
    lines = [f"{r['duration_ms']:,.1f} ms on {r['node']}, {r['shape'] or '(not a catalog shape)'}",
             " ".join(str(r["query"]).split())[:400],
             f"{'node':<60} {'est. rows':>10} {'rows':>10} {'misestimate':>11} {'hit/read':>14} {'removed':>9}"]  # fmt: skip
    for n in nodes.to_dict("records"):
        mis = "-" if n["misestimate"] is None or n["misestimate"] != n["misestimate"] else f"{n['misestimate']:.1f}x"
        rows = "-" if n["actual_rows"] is None else f"{n['actual_rows']:,.0f}"
        lines.append(f"{('  ' * n['depth'] + n['node'])[:60]:<60} {n['estimated_rows']:>10,.0f} {rows:>10} {mis:>11} "
                     f"{str(n['shared_hit']) + '/' + str(n['shared_read']):>14} {n['rows_removed_by_filter']:>9,}")  # fmt: skip
    return "\n".join(lines), r
