"""The notebook entry point: ``lab = workbook.open_lab()``.

A :class:`Lab` bundles what every lesson needs, passed explicitly (no hidden global): the
:class:`~workbook.cluster.Target`, the results store in the workbook home, and short-cuts to the
dataset, the experiment engine and the panels. ``open_lab()`` starts the local cluster or
attaches to the one running in the home (``WORKBOOK_HOME``, default ``./.workbook``; or your own
server with ``WORKBOOK_DSN``) and loads the sample dataset when none is loaded, at
``WORKBOOK_SCALE`` (default 0.05: seconds to load; CI and Binder run the notebooks at this size).
Every call is safe to re-run: a second ``open_lab()`` attaches and loads nothing.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import WorkbookError

if TYPE_CHECKING:
    from .cluster.target import Target
    from .dataset import DatasetInfo, IndexSpec, QueryShape
    from .experiment import Comparison, Knob, Plan
    from .lessons import LessonResult, LessonRun
    from .results import ResultsStore
    from .ui.panels import DatasetPanel, ExperimentPanel

@dataclass
class Lab:
    """A target with the dataset loaded, plus where results go."""

    target: Target
    store: ResultsStore
    home: Path
    info: DatasetInfo | None = field(default=None, repr=False)
    repeats: int = 30  # timed repetitions per side of each comparison the lab runs

    # ---- the dataset ------------------------------------------------------------------
    def shape(self, name: str) -> QueryShape:
        from .dataset import shape

        return shape(name)

    def index(self, name: str) -> IndexSpec:
        from .dataset import load_indexes

        catalog = load_indexes()
        if name not in catalog:
            raise WorkbookError(f"no candidate index {name!r}; known: {', '.join(catalog)}")
        return catalog[name]

    def indexes_for(self, shape: str) -> list[IndexSpec]:
        """The catalog's candidate indexes that serve ``shape``."""
        from .dataset import indexes_for

        return indexes_for(shape)

    def tables(self) -> Any:
        """Rows and on-disk size of each table of the dataset (a DataFrame, shown with units)."""
        from .dataset import table_sizes
        from .ui.tables import table

        return table(table_sizes(self.target))

    def ensure_dataset(self, scale: float | None = None, seed: int = 42, progress: Any = True) -> DatasetInfo:
        """The loaded dataset; loads it (at ``scale``, default ``WORKBOOK_SCALE``) if there is none."""
        if self.info is not None:
            return self.info
        if not self.target.allow_writes:
            raise WorkbookError(
                "no sample dataset on this read-only target; load it on a writable one (workbook load --allow-writes)"
            )
        from . import config

        return self.load(scale if scale is not None else config.default_scale(), seed, progress=progress)

    def load(self, scale: float, seed: int = 42, progress: Any = True) -> DatasetInfo:
        from .dataset import Generator, load

        self.info = load(self.target, generator=Generator(seed, scale), progress=progress)
        return self.info

    def reset(self) -> Any:
        """Put the dataset back as it was loaded (see :mod:`workbook.dataset.pristine`); ends its sessions."""
        from .dataset.pristine import reset

        return reset(self.target)

    # ---- experiments --------------------------------------------------------------------
    def explain(self, shape: str, variant: str | None = None, tier: str = "hot") -> Plan:
        from .experiment import explain_shape

        with self.target.connect() as conn:
            return explain_shape(conn, shape, variant, tier=tier)[0]

    def explain_text(self, text: str, *, show: bool = True) -> Plan:
        """A plan you bring (EXPLAIN text or JSON from production, psql-framed or an auto_explain log
        entry), read into the same Plan as the workbook's own; in a notebook it also shows the plan
        view, the findings and what ``advise`` can go on from. Needs no server."""
        from .experiment import findings
        from .experiment.plan_text import leads, read_plan

        plan = read_plan(text)
        if show and "ipykernel" in sys.modules:
            from IPython.display import Markdown, display

            from .ui import plan_view
            from .ui import show as show_chart

            show_chart(plan_view(plan))
            lines = [f"- {n}" for n in plan.notes] + [f"- **{f.rule}**: {f.message} — try {f.knob}" for f in findings(plan)]
            lead = leads(plan)
            lines += [f"- reads `{r['relation']}`: {'; '.join(r['conditions']) or 'no condition'}" for r in lead["relations"]]
            if lead["advise"]:
                lines.append(f"- next: `{lead['advise']}`")
            display(Markdown("\n".join(lines)))
        return plan

    def compare(self, shape: str, treatment: Any, baseline: Any = None, **kwargs: Any) -> Comparison:
        """:func:`workbook.experiment.compare` on this lab's target, stored in its results
        (``repeats``, a maximum, defaults to the lab's; a comparison whose difference is beyond
        doubt at an interim look stops there: ``stop_early``, see workbook.experiment.timing)."""
        from .experiment import compare

        kwargs.setdefault("repeats", self.repeats)
        kwargs.setdefault("stop_early", True)
        return compare(self.target, shape, treatment, baseline, store=self.store, **kwargs)

    def check(self, shape: str, index: str | None = None, variant: str | None = None, *, tier: str = "hot") -> str:
        """An exercise's checked answer: does the reader's index (a catalog name, built as a what-if)
        or variant make ``shape`` measurably faster than the plain baseline? One line, measured."""
        from .experiment import Arm, Variant

        if index is None and variant is None:
            raise WorkbookError("give an index name (index=...) or a variant (variant=...) to check")
        knobs: list[Any] = [self.what_if(index)] if index else []
        if variant:
            knobs.append(Variant(variant))
        c = self.compare(shape, Arm(" + ".join(k.label for k in knobs), None, tuple(knobs)), tier=tier)
        yours = index or variant
        if c.verdict.kind == "faster":
            return f"yes: {yours} makes {shape} {c.verdict.text} (plan: {c.treatment.plan.summary() if c.treatment.plan else '?'})"
        return f"not this one: {yours} on {shape} gives {c.verdict.text}; look at the plan and try another"

    def what_if(self, index: str) -> Knob:
        from .experiment import WhatIfIndex

        return WhatIfIndex(self.index(index))

    # ---- traffic ---------------------------------------------------------------------------
    def load_run(self, mix: Any, **kwargs: Any) -> Any:
        """Concurrent traffic on this lab's target (:func:`workbook.traffic.run_load`), stored in its results."""
        from .traffic import run_load

        run = run_load(self.target, mix, **kwargs)
        run.save(self.store)
        return run

    def sweep(self, mix: Any, clients: list[int], **kwargs: Any) -> Any:
        """Closed-loop runs at each client count and a USL fit (:func:`workbook.traffic.sweep`), stored."""
        from .traffic import sweep

        result = sweep(self.target, mix, clients, **kwargs)
        result.save(self.store)
        return result

    # ---- lessons ---------------------------------------------------------------------------
    def lesson(self, name: str) -> LessonRun:
        """Start lesson ``name`` on this lab: ``run.step(NAME)`` one cell at a time, ``run.result()`` at the end."""
        from .lessons import lesson

        return lesson(name).start(self)

    # ---- reports ---------------------------------------------------------------------------
    def report(self, path: str | os.PathLike[str], comparisons: list[Any] | None = None, *, title: str | None = None,
               lessons: str | list[str] | None = None, progress: Any = None,
               plans: list[Any] | None = None) -> Path:  # fmt: skip
        """Write one self-contained HTML report.

        ``lessons`` (names, or ``"all"``): run those lessons and report them, as ``workbook report
        --lessons`` does. ``plans`` (Plans or pasted EXPLAIN text): a report of those plans.
        Otherwise: the stored comparisons (all, or those given).
        """
        from .report import render_lessons, write_html, write_report

        dsns = [e.dsn for e in self.target.endpoints]
        if plans is not None:  # plans you bring (Plan objects or pasted EXPLAIN text): their own report
            from .experiment.plan_text import read_plan
            from .report.pasted import render_plans

            read = [p if not isinstance(p, str) else read_plan(p) for p in plans]
            return write_html(render_plans(read, title=title or "Plans you brought", dsns=dsns), path)
        if lessons is not None:
            results = self.run_lessons(lessons, progress=progress)
            return write_html(render_lessons(results, title=title or "Database optimization report", dsns=dsns), path)
        ids = None if comparisons is None else [c if isinstance(c, str) else c.comparison_id for c in comparisons]
        return write_report(self.store, path, ids=ids, title=title, dsns=dsns)

    def run_lessons(self, names: str | list[str] | None = None, *, progress: Any = None) -> list[LessonResult]:
        """Run the named lessons (default: the report's default set) and return their results."""
        from .lessons import chosen

        return [lesson.run(self, progress=progress) for lesson in chosen(names)]

    # ---- panels ---------------------------------------------------------------------------
    def panel(self, shape: str) -> ExperimentPanel:
        from .ui.panels import ExperimentPanel

        return ExperimentPanel(self.target, self.store, shape)

    def pool_panel(self) -> Any:
        """Clients, pool size, strategy (direct, psycopg_pool, SQLAlchemy, PgBouncer) → TPS/p95/errors."""
        from .ui.pool_panel import PoolPanel

        return PoolPanel(self.target, self.store)

    def replica_panel(self) -> Any:
        """Replica count, read routing, synchronous commit, clients → TPS/p95 and replica lag."""
        from .cluster import LocalCluster
        from .ui.replica_panel import ReplicaPanel

        cluster = LocalCluster(self.home) if self.target.kind == "local" else None
        return ReplicaPanel(self.target, self.store, cluster if cluster is not None and cluster.initialized else None)

    def dataset_panel(self) -> DatasetPanel:
        from .ui.panels import DatasetPanel

        return DatasetPanel(self.target, on_load=lambda info: setattr(self, "info", info))


def attach_lab(
    *, home: str | os.PathLike[str] | None = None, replicas: int | None = None, target: Target | None = None
) -> Lab:
    """Start or attach to the cluster (or use ``target``, or ``WORKBOOK_DSN``) and return the Lab; loads nothing."""
    from . import config
    from .cluster import LocalCluster, Target, resolve_home
    from .dataset import dataset_info
    from .leftovers import sweep_leftovers
    from .results import ResultsStore

    root = resolve_home(home)
    dsn = config.dsn()
    if target is not None:
        pass
    elif dsn:
        target = Target.from_dsn(dsn, config.replica_dsns(), allow_writes=config.allow_writes(),
                                 allow_plaintext=config.allow_plaintext())
    else:
        cluster = LocalCluster(root)
        cluster.up(replicas=replicas)
        target = cluster.target()
    # an index a killed `compare --real` left would skew every verdict: dropped (local) or reported
    sweep_leftovers(target, say=lambda line: print(line, file=sys.stderr))
    with target.connect() as conn:
        info = dataset_info(conn)
    return Lab(target=target, store=ResultsStore(root), home=root, info=info)


def open_lab(
    *,
    home: str | os.PathLike[str] | None = None,
    scale: float | None = None,
    seed: int = 42,
    replicas: int | None = None,
    progress: Any = True,
) -> Lab:
    """Start or attach to the cluster, load the dataset if missing, return the :class:`Lab`.

    With ``WORKBOOK_DSN`` set, your own server is used as it is (read-only unless
    ``WORKBOOK_ALLOW_WRITES=1``); a missing dataset there is an error, not a load.
    """
    lab = attach_lab(home=home, replicas=replicas)
    lab.ensure_dataset(scale, seed, progress=progress)
    return lab


def main_job(
    out: str | os.PathLike[str], *, home: str | os.PathLike[str] | None = None, target: Target | None = None,
    scale: float | None = None, lessons: str | list[str] | None = None, repeats: int = 30,
    progress: Any = None,
) -> tuple[Path, dict[str, float], list[LessonResult]]:  # fmt: skip
    """``workbook report``: cluster (or ``target``), dataset if missing, the lessons, the HTML.

    Returns the path, the seconds of each phase, and the lessons' results.
    """
    import time

    from .lessons import chosen
    from .report import render_lessons, write_html

    say = progress or (lambda _: None)
    picked = chosen(lessons)  # an unknown lesson is refused before anything starts
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    say("cluster: starting or attaching")
    lab = attach_lab(home=home, target=target)
    lab.repeats = repeats
    phases["cluster"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    say("dataset: loading if missing")
    lab.ensure_dataset(scale, progress=False)
    phases["load"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    results = [lesson.run(lab, progress=say) for lesson in picked]
    phases["lessons"] = time.perf_counter() - t2
    observed = _observed(lab.target)
    observed["slow_plans"] = lab.store.slow_plans(latest=True)  # auto_explain's latest capture, if any
    t3 = time.perf_counter()
    text = render_lessons(results, dsns=[e.dsn for e in lab.target.endpoints], timings=phases, observed=observed)
    path = write_html(text, out)
    phases["render"] = time.perf_counter() - t3
    say(f"report: {path}")
    return path, phases, results


def _observed(target: Target) -> dict[str, Any]:
    """The report's "what the server saw": top statements and health, or why they are missing."""
    from .experiment.health import health
    from .experiment.workload import top_statements

    out: dict[str, Any] = {}
    try:
        out["top"] = top_statements(target, limit=10)
        if out["top"].attrs.get("hidden_note"):
            out["note"] = out["top"].attrs["hidden_note"]
    except WorkbookError as exc:
        out["note"] = f"no top statements: {exc}"
    out["health"] = health(target)
    return out
