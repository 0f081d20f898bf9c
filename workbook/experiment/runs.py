"""Runs and comparisons: a query shape measured under knobs, and two arms set side by side.

:func:`measure` runs one or more **arms** (a variant plus knobs) of a shape. Each arm gets its own
connection with its session and what-if knobs applied, so the arms' timings interleave turn by
turn (see :mod:`workbook.experiment.timing`); on a local server the arms' server processes share
one CPU while timed (:mod:`workbook.experiment.pinning`), and the run records whether they did.
Knobs that change the database for everyone (a real index, statistics) cannot interleave: then
the arms run one after the other, each with its knobs applied and reverted, and the result says
``interleaved=False``.

After timing, each arm's plan is captured on the same warmed connection with ``EXPLAIN
(ANALYZE, BUFFERS ...) EXECUTE`` of the prepared statement that was timed (rolled back), with its
findings and cache state: PostgreSQL plans a prepared statement's first five executions for their
values (untimed here) and may switch to a generic plan from the sixth, so the plan shown is the
plan cache's choice, the one the timed executions ran; when it differs from the plan these values
would get on their own, the finding ``generic_plan`` says so (:func:`timed_plan`). Every run
carries its context: server version and settings, the dataset (seed, scale, checksum), the host,
and other sessions active at the time. Knobs are always reverted, also when the query fails.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from ..dataset.shapes import QueryShape
from ..dataset.shapes import shape as load_shape
from ..errors import WorkbookError
from ..statement import reads_only
from .findings import Finding, findings
from .knobs import Index, Knob, Variant, WhatIfIndex
from .pinning import same_cpu
from .plan import Plan, QueryFailed, _server_message, explain, parse_plan
from .timing import DEFAULT_THRESHOLD, PLAN_CACHE_WARMUP, Verdict, decided_early, median, p95, time_interleaved, verdict
from .wire import plan_source, rolled_back, wire_runner

if TYPE_CHECKING:
    from ..cluster.target import Target
    from ..results.store import ResultsStore

DEFAULT_TIMEOUT_S = 30.0


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _samples(value: Any) -> list[float]:
    """DuckDB hands a DOUBLE[] back as a list or a numpy array (whose truth value is ambiguous)."""
    return [] if value is None else [float(x) for x in value]
_SETTINGS = (
    "shared_buffers", "work_mem", "effective_cache_size", "random_page_cost", "seq_page_cost", "jit",
    "max_parallel_workers_per_gather", "default_statistics_target", "effective_io_concurrency", "maintenance_work_mem",
)  # fmt: skip


@dataclass
class Arm:
    """One side of an experiment: a label, the shape's variant, and the knobs applied."""

    label: str = "baseline"
    variant: str | None = None
    knobs: tuple[Knob, ...] = ()

    def resolved_variant(self, qs: QueryShape) -> str:
        named = [k.name for k in self.knobs if isinstance(k, Variant)]
        return qs.variant(named[-1] if named else self.variant).name


@dataclass
class Run:
    """One arm measured: its timings, its plan and findings, and the context."""

    run_id: str
    label: str
    shape: str
    variant: str
    tier: str
    sql: str
    params: list[dict[str, Any]]
    knobs: list[dict[str, Any]]
    samples_ms: list[float]
    plan: Plan | None
    findings: list[Finding]
    context: dict[str, Any]
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    arm: str | None = None
    comparison_id: str | None = None

    @property
    def median_ms(self) -> float | None:
        return median(self.samples_ms) if self.samples_ms else None

    @property
    def p95_ms(self) -> float | None:
        return p95(self.samples_ms) if self.samples_ms else None

    @property
    def cache(self) -> str:
        return self.plan.cache_state if self.plan is not None else "unknown"

    @classmethod
    def from_record(cls, row: dict[str, Any]) -> Run:
        """The run a results-store row holds: the inverse of :meth:`record`."""
        plan = parse_plan(_loads(row["plan"])) if row.get("plan") else None
        return cls(
            run_id=row["run_id"], label=row.get("label") or "", shape=row.get("shape") or "",
            variant=row.get("variant") or "", tier=row.get("tier") or "", sql=row.get("sql") or "",
            params=_loads(row.get("params")) or [], knobs=_loads(row.get("knobs")) or [],
            samples_ms=_samples(row.get("samples_ms")), plan=plan,
            findings=[Finding(**f) for f in (_loads(row.get("findings")) or [])],
            context=_loads(row.get("context")) or {}, created_at=row["created_at"], arm=row.get("arm"),
            comparison_id=row.get("comparison_id"),
        )  # fmt: skip

    def record(self) -> dict[str, Any]:
        """The run as a row of the results store (:meth:`from_record` reads it back)."""
        return {
            "run_id": self.run_id, "created_at": self.created_at, "comparison_id": self.comparison_id, "arm": self.arm,
            "shape": self.shape, "variant": self.variant, "tier": self.tier, "label": self.label, "sql": self.sql,
            "params": self.params, "knobs": self.knobs, "plan": self.plan.raw if self.plan else None,
            "plan_summary": self.plan.summary() if self.plan else None,
            "findings": [f.as_dict() for f in self.findings], "samples_ms": self.samples_ms,
            "median_ms": self.median_ms, "p95_ms": self.p95_ms, "cache": self.cache, "context": self.context,
        }  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        out = self.record()
        out["created_at"] = self.created_at.isoformat()
        out["scans"] = [list(s) for s in self.plan.scans()] if self.plan else []
        out.pop("plan")
        out.pop("samples_ms")
        out["repeats"] = len(self.samples_ms)
        return out


@dataclass
class Comparison:
    """Baseline and treatment of one shape, with the verdict and how it was measured."""

    comparison_id: str
    shape: str
    baseline: Run
    treatment: Run
    verdict: Verdict
    interleaved: bool
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def plan_changed(self) -> bool:
        a, b = self.baseline.plan, self.treatment.plan
        return a is not None and b is not None and a.summary() != b.summary()

    @property
    def knobs(self) -> list[dict[str, Any]]:
        return self.treatment.knobs

    @property
    def stopped_note(self) -> str:
        """" of at most 20 (decided at an interim look)" when the sequential rule ended it early, else ""."""
        stop = self.extra.get("stopped_early")
        return f" of at most {stop['of']} (decided at an interim look)" if stop else ""

    def summary(self) -> str:
        b, t = self.baseline, self.treatment
        lines = [
            f"{self.shape}: {t.label} vs {b.label}: {self.verdict.text}",
            f"  median {b.median_ms:.3f} ms -> {t.median_ms:.3f} ms; p95 {b.p95_ms:.3f} -> {t.p95_ms:.3f} ms;"
            f" {len(t.samples_ms)} {'interleaved' if self.interleaved else 'sequential'} repetitions{self.stopped_note};"
            f" cache {t.cache}",
        ]
        if b.plan and t.plan:
            lines.append(f"  plan before: {b.plan.summary()}")
            lines.append(f"  plan after:  {t.plan.summary()}")
        for f in t.findings:
            lines.append(f"  finding: {f.message} -> {f.knob}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def record(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "comparison_id": self.comparison_id, "created_at": self.created_at, "shape": self.shape,
            "baseline_run": self.baseline.run_id, "treatment_run": self.treatment.run_id, "ratio": v.ratio,
            "ci_low": v.ci_low, "ci_high": v.ci_high, "verdict": v.text, "verdict_kind": v.kind,
            "interleaved": self.interleaved, "knobs": self.knobs, "extra": self.extra,
            "context": self.treatment.context,
        }  # fmt: skip

    @classmethod
    def from_record(cls, row: dict[str, Any], baseline: dict[str, Any], treatment: dict[str, Any]) -> Comparison:
        """The comparison a results-store row (and its two runs' rows) holds: the inverse of :meth:`record`."""
        v = Verdict(row["ratio"], row["ci_low"], row["ci_high"], row["verdict_kind"], row["verdict"])
        return cls(row["comparison_id"], row["shape"], Run.from_record(baseline), Run.from_record(treatment), v,
                   bool(row["interleaved"]), created_at=row["created_at"], extra=_loads(row.get("extra")) or {})  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "comparison_id": self.comparison_id, "shape": self.shape, "verdict": self.verdict.as_dict(),
            "interleaved": self.interleaved, "plan_changed": self.plan_changed,
            "baseline": self.baseline.as_dict(), "treatment": self.treatment.as_dict(), **self.extra,
        }  # fmt: skip


# --------------------------------------------------------------------------- context
def measurement_context(
    conn: psycopg.Connection[Any], target: Target, store: ResultsStore | None = None
) -> dict[str, Any]:
    """What could skew a measurement, recorded with it (no password ever: host, port, db only)."""
    import psutil

    from ..cluster.target import dsn_params
    from ..dataset.checksum import checksum
    from ..dataset.loader import SCHEMA, dataset_info

    settings = dict(
        conn.execute("SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", (list(_SETTINGS),)).fetchall()
    )
    others = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    ).fetchone()[0]  # type: ignore[index]
    params = dsn_params(target.primary.dsn)
    out: dict[str, Any] = {
        "server_version": conn.execute("SHOW server_version").fetchone()[0],  # type: ignore[index]
        "settings": settings,
        "other_active_sessions": int(others),
        "target": {"kind": target.kind, "host": params.get("host") or params.get("hostaddr") or "local",
                   "port": params.get("port"), "dbname": params.get("dbname")},  # fmt: skip
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(),
                 "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
                 "load_average_1m": round(os.getloadavg()[0], 2)},  # fmt: skip
        "dataset": None,
    }
    info = dataset_info(conn)
    if info is not None:
        ds: dict[str, Any] = {"seed": info.seed, "scale": info.scale, "generator_version": info.generator_version}
        if store is not None:
            row = conn.execute(
                f"SELECT (SELECT system_identifier FROM pg_control_system())::text || ':' || loaded_at::text FROM {SCHEMA}.dataset_info"
            ).fetchone()
            key = str(row[0]) if row else ""
            ds["checksum"] = store.cached_checksum(key, lambda: checksum(conn).value)
        out["dataset"] = ds
    return out


# --------------------------------------------------------------------------- measuring
def _as_shape(qs: QueryShape | str) -> QueryShape:
    return load_shape(qs) if isinstance(qs, str) else qs


CLIENTS = ("libpq", "psycopg")


def shape_runner(
    conn: psycopg.Connection[Any],
    qs: QueryShape,
    variant: str,
    params: list[dict[str, Any]],
    client: str = "libpq",
) -> Callable[[], object]:
    """What one timed execution is: the variant, prepared, cycling ``params`` (a write inside a
    transaction that is rolled back).

    ``client="libpq"`` (the default) times the statement as pgbench does: parameters dumped
    beforehand, ``PQexecPrepared``, the whole result received, no Python rows (see
    :mod:`workbook.experiment.wire`). ``client="psycopg"`` times the full driver path on one
    reused cursor, rows built as Python tuples: what a Python application also pays, ~15-20 µs a call.
    """
    if client == "libpq":
        return wire_runner(conn, qs, variant, params)
    if client != "psycopg":
        raise WorkbookError(f"client must be one of {CLIENTS}, got {client!r}")
    counter = [0]
    write = qs.kind == "write"
    cursor = conn.cursor()  # one per arm: a new cursor per call would add ~10 us of Python to every sample

    def run() -> object:
        p = params[counter[0] % len(params)]
        counter[0] += 1
        if write:  # rolled back on the wire: through psycopg a ROLLBACK would also drop its prepared statements
            with rolled_back(conn):
                return qs.run(conn, p, variant, prepare=True, cursor=cursor)
        return qs.run(conn, p, variant, prepare=True, cursor=cursor)

    return run


def measure(
    target: Target,
    qs: QueryShape | str,
    arms: Sequence[Arm],
    *,
    tier: str = "hot",
    repeats: int = 30,
    warmup: int = 3,
    param_sets: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    client: str = "libpq",
    store: ResultsStore | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    params: Sequence[dict[str, Any]] | None = None,
    decided: Callable[[list[list[float]]], bool] | None = None,
) -> tuple[list[Run], bool]:
    """Measure each arm; returns the runs and whether they were interleaved.

    ``param_sets`` parameter sets are drawn for ``tier`` and cycled identically in every arm.
    ``client`` is what a timed call includes (:func:`shape_runner`): ``"libpq"`` the database
    and the wire, ``"psycopg"`` also the Python driver's work. Runs are stored in ``store`` when
    one is given (as single runs; :func:`compare` stores its own as a comparison). ``params``
    gives the parameter sets instead of sampling them (e.g. one page depth of a pagination shape).
    ``decided`` is the interim look of an interleaved measurement (:func:`~workbook.experiment.timing.time_interleaved`).
    """
    qs = _as_shape(qs)
    given = list(params) if params is not None else None
    _refuse_unmeasurable(target, qs, arms, given, repeats, client)
    variants = [arm.resolved_variant(qs) for arm in arms]
    all_knobs = [k for arm in arms for k in arm.knobs]
    sequential = any(k.scope == "database" for k in all_knobs)
    timing: dict[str, Any] = dict(repeats=repeats, warmup=warmup, seed=seed, progress=progress, should_stop=should_stop,
                  decided=None if sequential else decided)  # arms timed one after the other cannot be compared mid-way
    try:
        with ExitStack() as stack:
            conns = []
            for _ in arms:
                conn = stack.enter_context(target.connect())
                conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(timeout_s * 1000)}ms",))
                conns.append(conn)
            pinning = stack.enter_context(same_cpu(conns))  # per-CPU noise must not follow one arm
            with target.connect() as aux:  # sampling and context on a connection of their own: the arms' are alike
                params = [dict(p) for p in given] if given else [qs.sample(aux, tier, k) for k in range(max(1, param_sets))]
                ctx = measurement_context(aux, target, store)
                ctx["client"] = client
                ctx["cpu_pinning"] = pinning
            # the untimed check plus the warm-up take every parameter set's statement past the five executions
            # PostgreSQL plans for their values before it may switch to a generic plan: timed is the steady state
            timing["warmup"] = max(warmup, (PLAN_CACHE_WARMUP + 1) * len(params) - 1)
            runners = [shape_runner(c, qs, v, params, client) for c, v in zip(conns, variants)]
            time_arms = _time_one_by_one if sequential else _time_interleaved
            samples, plans = time_arms(qs, arms, conns, runners, variants, params[0], timeout_s, timing)
    except psycopg.OperationalError as exc:  # the server went away (or a session was terminated) mid-measurement
        real = sorted({k.spec.name for k in all_knobs if isinstance(k, Index)})
        left = f"; check the real index knobs {real} by hand: they could not be reverted" if real else ""
        raise WorkbookError(
            f"lost the connection to the server while measuring {qs.name} ({' '.join(str(exc).split())}); "
            f"its session settings and what-if indexes ended with their sessions{left}"
        ) from exc
    runs = [
        Run(
            run_id=uuid.uuid4().hex, label=arm.label, shape=qs.name, variant=variants[i], tier=tier,
            sql=qs.variant(variants[i]).sql, params=params, knobs=[k.describe() for k in arm.knobs],
            samples_ms=samples[i], plan=plans[i], findings=findings(p) if (p := plans[i]) else [], context=ctx,
        )  # fmt: skip
        for i, arm in enumerate(arms)
    ]
    if store is not None and len(arms) == 1:
        store.append([r.record() for r in runs])
    return runs, not sequential


def _refuse_unmeasurable(
    target: Target, qs: QueryShape, arms: Sequence[Arm], given: list[dict[str, Any]] | None, repeats: int, client: str
) -> None:
    """Every reason a measurement cannot run, raised before a connection is opened."""
    if given is not None and not given:
        raise WorkbookError("params is empty: give at least one parameter set, or None to sample them")
    if repeats < 2:
        raise WorkbookError(f"repeats must be at least 2 (a median and an interval need samples), got {repeats!r}")
    if client not in CLIENTS:
        raise WorkbookError(f"client must be one of {CLIENTS}, got {client!r}")
    all_knobs = [k for arm in arms for k in arm.knobs]
    if qs.kind == "write":
        target.require_writes(f"timing the write shape {qs.name!r} (its writes are rolled back)")
    if any(k.scope in ("database", "transaction") for k in all_knobs):
        target.require_writes("an index or statistics knob")
    if qs.kind == "write" and any(isinstance(k, WhatIfIndex) for k in all_knobs):
        raise WorkbookError(
            f"a what-if index holds a SHARE lock that blocks the other arm's writes, so the write shape {qs.name!r} "
            "cannot be timed against it; measure an index's write cost with workbook.experiment.index_costs()"
        )
    whatif_names = [k.spec.name for k in all_knobs if isinstance(k, WhatIfIndex)]
    if len(whatif_names) != len(set(whatif_names)):
        raise WorkbookError(
            f"two arms build what-if indexes with the same name ({sorted(whatif_names)!r}); the second would wait for "
            "the first's transaction to end: give each arm's copy its own name (dataclasses.replace(spec, name=...))"
        )


_Timed = tuple[list[list[float]], list["Plan | None"]]


def _time_one_by_one(
    qs: QueryShape, arms: Sequence[Arm], conns: list[Any], runners: list[Callable[[], object]], variants: list[str],
    params: dict[str, Any], timeout_s: float, timing: dict[str, Any],
) -> _Timed:  # fmt: skip
    """Knobs that change the database for everyone: each arm with its knobs applied, then reverted."""
    samples: list[list[float]] = [[] for _ in arms]
    plans: list[Plan | None] = [None] * len(arms)
    for i, arm in enumerate(arms):
        with ExitStack() as knobs:
            for k in arm.knobs:
                knobs.enter_context(k.applied(conns[i]))
            if qs.kind == "read":  # timed reads run read-only, as the server enforces it
                knobs.enter_context(reads_only(conns[i]))
            _check(runners[i], qs, variants[i], timeout_s)
            samples[i] = time_interleaved([runners[i]], **timing)[0]
            plans[i] = timed_plan(conns[i], runners[i], qs, variants[i], params, timeout_s)
    return samples, plans


def _time_interleaved(
    qs: QueryShape, arms: Sequence[Arm], conns: list[Any], runners: list[Callable[[], object]], variants: list[str],
    params: dict[str, Any], timeout_s: float, timing: dict[str, Any],
) -> _Timed:  # fmt: skip
    """Session and what-if knobs: every arm applied on its own connection, timed turn by turn."""
    all_knobs = [k for arm in arms for k in arm.knobs]
    with ExitStack() as knobs:
        whatif = any(k.scope == "transaction" for k in all_knobs)
        for i, arm in enumerate(arms):
            if whatif and not any(k.scope == "transaction" for k in arm.knobs):
                # the same conditions on both sides: every arm runs inside a rolled-back transaction
                knobs.enter_context(conns[i].transaction(force_rollback=True))
            for k in arm.knobs:
                knobs.enter_context(k.applied(conns[i]))
            if qs.kind == "read":  # timed reads run read-only, as the server enforces it
                knobs.enter_context(reads_only(conns[i]))
        for i in range(len(arms)):
            _check(runners[i], qs, variants[i], timeout_s)
        samples = time_interleaved(runners, **timing)
        plans: list[Plan | None] = [timed_plan(conns[i], runners[i], qs, variants[i], params, timeout_s)
                                    for i in range(len(arms))]  # fmt: skip
    return samples, plans


def _check(run: Callable[[], object], qs: QueryShape, variant: str, timeout_s: float) -> None:
    """Run once untimed; a failing statement becomes a QueryFailed naming the shape and variant."""
    try:
        run()
    except psycopg.errors.QueryCanceled as exc:
        raise QueryFailed(
            f"{qs.name} ({variant}) ran past the {timeout_s:g} s statement timeout and was cancelled; nothing changed"
        ) from exc
    except psycopg.Error as exc:
        raise QueryFailed(f"{qs.name} ({variant}) failed on the server (nothing changed): {_server_message(exc)}") from exc


def timed_plan(
    conn: psycopg.Connection[Any], run: Callable[[], object], qs: QueryShape, variant: str, params: dict[str, Any],
    timeout_s: float,
) -> Plan:  # fmt: skip
    """The plan the timed executions ran: the runner's own prepared statement explained with
    ``EXPLAIN ANALYZE EXECUTE`` on its warmed connection, so it is the plan cache's choice (a
    generic plan from the sixth execution on, when PostgreSQL finds it no dearer) and not a fresh
    plan for these values. When that generic plan differs from the one these values would get,
    ``raw["Workbook"]["custom_plan"]`` says what the other would be (finding ``generic_plan``).
    A runner without a prepared statement of its own (``client="psycopg"``) is explained as before."""
    source = plan_source(run)
    prepared = source.execute_args() if source is not None else None
    if prepared is None:  # psycopg's own statement, or the server no longer has ours
        plan = explain_shape(conn, qs, variant, params, timeout_s=timeout_s)[0]
        if source is not None:
            plan.raw["Workbook"] = {"plan_cache": "unknown", "source": "EXPLAIN ANALYZE with these values: the timed "
                                    "prepared statement was gone (deallocated, or renamed by a pooler)"}  # fmt: skip
        return plan
    stmt = qs.variant(variant).statements[0]
    plan = explain(conn, stmt, params, timeout_s=timeout_s, prepared=prepared)
    cache = plan.raw.get("Workbook") or {}
    if cache.get("plan_cache") == "generic":
        custom = explain(conn, stmt, params, analyze=False, timeout_s=timeout_s)
        if plan_signature(custom) != plan_signature(plan):
            cache["custom_plan"] = custom.summary()
    return plan


def plan_signature(plan: Plan) -> list[tuple[str, str | None, str | None]]:
    """What makes two plans different plans: each node's type, relation and index, in order."""
    return [(n.node_type, n.relation, n.index) for n in plan.nodes]


def explain_shape(
    conn: psycopg.Connection[Any],
    qs: QueryShape | str,
    variant: str | None = None,
    params: dict[str, Any] | None = None,
    *,
    tier: str = "hot",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[Plan, dict[str, Any]]:
    """EXPLAIN ANALYZE a shape's variant (its first statement for a per-row variant), rolled back.

    ``params`` default to a sample for ``tier``; returns the plan and the parameters used.
    """
    qs = _as_shape(qs)
    params = params if params is not None else qs.sample(conn, tier)
    return explain(conn, qs.variant(variant).statements[0], params, timeout_s=timeout_s), params


def run_shape(
    target: Target,
    qs: QueryShape | str,
    *,
    variant: str | None = None,
    knobs: Sequence[Knob] = (),
    label: str | None = None,
    store: ResultsStore | None = None,
    **kwargs: Any,
) -> Run:
    """Measure one arm of a shape (timings + plan + findings) and store it."""
    arm = Arm(label or variant or "run", variant, tuple(knobs))
    runs, _ = measure(target, qs, [arm], store=store, **kwargs)
    return runs[0]


def compare(
    target: Target,
    qs: QueryShape | str,
    treatment: Arm | Knob | Sequence[Knob] | str,
    baseline: Arm | None = None,
    *,
    threshold: float | None = None,
    confidence: float = 0.95,
    store: ResultsStore | None = None,
    stop_early: bool = False,
    **kwargs: Any,
) -> Comparison:
    """Baseline vs treatment of one shape: interleaved when the knobs allow, with a verdict.

    ``treatment`` may be an :class:`Arm`, a knob, a list of knobs, or a variant name.
    ``stop_early``: ``repeats`` is a maximum, and an interleaved comparison stops at an interim
    look once its difference is beyond doubt (:func:`~workbook.experiment.timing.decided_early`);
    one that is not decided takes every repetition. ``extra["stopped_early"]`` says where it stopped.
    """
    qs = _as_shape(qs)
    if isinstance(treatment, str):
        treatment = Arm(treatment, treatment)
    elif isinstance(treatment, Knob):
        treatment = Arm(treatment.label, None, (treatment,))
    elif not isinstance(treatment, Arm):
        knobs = tuple(treatment)
        treatment = Arm(" + ".join(k.label for k in knobs), None, knobs)
    baseline = baseline or Arm("baseline")
    looks: list[int] = []

    def decided(samples: list[list[float]]) -> bool:
        done = decided_early(samples[0], samples[1], threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
        looks.append(len(samples[0])) if done else None
        return done

    if stop_early:
        kwargs["decided"] = decided
    (b, t), interleaved = measure(target, qs, [baseline, treatment], store=store, **kwargs)  # stored below, as a pair
    v = verdict(b.samples_ms, t.samples_ms, confidence=confidence) if threshold is None else \
        verdict(b.samples_ms, t.samples_ms, confidence=confidence, threshold=threshold)
    cid = uuid.uuid4().hex
    for run, arm in ((b, "baseline"), (t, "treatment")):
        run.arm, run.comparison_id = arm, cid
    extra: dict[str, Any] = {}
    if looks:
        extra["stopped_early"] = {"at": looks[-1], "of": kwargs.get("repeats", 30)}
    costs = [k.cost for k in treatment.knobs if hasattr(k, "cost")]
    if costs:
        extra["index_costs"] = [vars(c) for c in costs]
    comparison = Comparison(cid, qs.name, b, t, v, interleaved, extra=extra)
    if store is not None:
        store.append([b.record(), t.record()], comparison.record())
    return comparison
