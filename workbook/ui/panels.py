"""ipywidgets panels: an experiment is one click.

Panels hold widget state and call the library (the dataset, the experiment engine); they are
given a :class:`~workbook.cluster.Target` and a results store, never the Lab above them, and
compose no SQL of their own. Charts are rendered to SVG on the kernel side
(vl-convert), so they show the same in JupyterLab, in a headless run and offline, with no
JavaScript renderer or CDN involved.

Long steps run in a background thread when clicked, so the Cancel button stays live: a comparison
stops between timed turns and reports what it measured so far. Driven from code (tests,
``workbook report``), :meth:`ExperimentPanel.run` runs synchronously and returns the result.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError
from .background import Background

if TYPE_CHECKING:
    from ..cluster.target import Target
    from ..dataset import DatasetInfo
    from ..experiment import Comparison, Run
    from ..results import ResultsStore



def _parse_settings(text: str) -> list[tuple[str, str]]:
    out = []
    for raw in text.replace(";", "\n").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise WorkbookError(f"settings are NAME=VALUE, one per line; got {line!r}")
        out.append((key.strip(), value.strip()))
    return out


class ExperimentPanel(Background):
    """Variant, candidate indexes, settings, Run → plan with findings, before/after chart, DDL."""

    #: Cancel ends the comparison after the turn it is in
    cancel_text = "cancelling after the current turn..."

    def __init__(self, target: Target, store: ResultsStore | None, shape: str) -> None:
        import ipywidgets as w

        from ..dataset import indexes_for
        from ..dataset import shape as load_shape

        self.target, self.store = target, store
        self.qs = load_shape(shape)
        self.specs = {s.name: s for s in indexes_for(shape)}
        self.last: Comparison | Run | None = None
        self.header = w.HTML(f"<h3>{html.escape(self.qs.title)}</h3><p>{html.escape(self.qs.lesson)}</p>")
        self.variant = w.Dropdown(options=list(self.qs.variants), description="variant")
        self.tier = w.ToggleButtons(options=["hot", "cold"], description="tenant")
        self.index_boxes = {name: w.Checkbox(value=False, description=name, indent=False) for name in self.specs}
        self.indexes = w.VBox(list(self.index_boxes.values()))
        self.settings = w.Textarea(placeholder="work_mem=64MB\nenable_seqscan=off", description="settings",
                                   layout=w.Layout(width="420px", height="60px"))  # fmt: skip
        self.sql = w.Textarea(value=self.qs.variant().sql, description="SQL", layout=w.Layout(width="100%", height="140px"))
        self.repeats = w.IntSlider(value=20, min=3, max=200, description="repeats")
        self.suggest_button = w.Button(description="Suggest indexes", icon="lightbulb-o",
                                       tooltip="advise(): candidates from this query's plan, verified by what-if measurement")  # fmt: skip
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = w.Button(description="Cancel", icon="stop", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, description="")
        self.status = w.HTML("")
        self.error = w.HTML("")
        self.verdict = w.HTML("")
        self.chart = w.HTML("")
        self.plan = w.HTML("")
        self.plan_chart = w.HTML("")
        self.ddl = w.HTML("")

        self.variant.observe(self._variant_changed, names="value")
        self.run_button.on_click(lambda _: self.run(background=True))
        self.cancel_button.on_click(lambda _: self.cancel())
        self.suggest_button.on_click(lambda _: self.suggest())
        for box in self.index_boxes.values():
            box.observe(lambda _: self._show_ddl(), names="value")
        self.widget = w.VBox([
            self.header,
            w.HBox([self.variant, self.tier]),
            w.HTML("<b>candidate indexes</b> (built as what-if indexes: real, measured, rolled back)"),
            self.indexes, self.suggest_button, self.settings, self.sql, self.repeats,
            w.HBox([self.run_button, self.cancel_button, self.progress, self.status]),
            self.error, self.verdict, self.chart, self.plan, self.plan_chart, self.ddl,
        ])  # fmt: skip
        self.widget.add_class("workbook-experiment-panel")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ---- state -----------------------------------------------------------------------
    def _variant_changed(self, change: dict[str, Any]) -> None:
        self.sql.value = self.qs.variant(change["new"]).sql

    def tick(self, *names: str) -> ExperimentPanel:
        """Tick candidate indexes by name (what a click on their checkboxes does)."""
        for name in names:
            if name not in self.index_boxes:
                raise WorkbookError(f"index {name!r} is not a candidate for {self.qs.name!r}; candidates: {list(self.index_boxes)}")
            self.index_boxes[name].value = True
        return self

    def suggest(self) -> list[str]:
        """Add the indexes advise() finds for the current SQL as checkboxes; return their names."""
        import ipywidgets as w

        from ..experiment import advise

        self.error.value = ""
        self.status.value = "asking advise() (what-if measurements)..."
        try:
            qs, variant = self._shape()
            with self.target.connect() as conn:
                params = qs.sample(conn, self.tier.value)
            advice = advise(self.target, qs.variant(variant).statements[0], params, repeats=8, measure_write_cost=False)
        except Exception as exc:
            self.error.value = f"<div class='workbook-error' style='color:#b00'><b>error:</b> {html.escape(str(exc))}</div>"
            self.status.value = "advice failed: nothing was changed"
            return []
        added = []
        for cand in advice.suggestions:
            if cand.spec.name not in self.index_boxes:
                self.specs[cand.spec.name] = cand.spec
                box = w.Checkbox(value=False, description=cand.spec.name, indent=False)
                box.observe(lambda _: self._show_ddl(), names="value")
                self.index_boxes[cand.spec.name] = box
                added.append(cand.spec.name)
        self.indexes.children = tuple(self.index_boxes.values())
        self.status.value = html.escape(advice.reason)
        return added

    def _show_ddl(self) -> None:
        ticked = [self.specs[n] for n, b in self.index_boxes.items() if b.value]
        lines = [s.create(concurrently=True).as_string(None) for s in ticked]
        self.ddl.value = "" if not lines else "<b>to keep it:</b><pre class='workbook-ddl'>" + html.escape(";\n".join(lines)) + ";</pre>"

    def _shape(self) -> Any:
        """The shape to run: the catalog's, or the SQL as edited in the panel."""
        from ..dataset import ShapeVariant

        original = self.qs.variant(self.variant.value)
        if self.sql.value.strip() == original.sql.strip():
            return self.qs, original.name
        steps = tuple(s.strip().rstrip(";").strip() for s in self.sql.value.split("-- for each row:"))
        edited = ShapeVariant("edited", steps)  # refused here when it is not one allowed statement per step
        return dataclasses.replace(self.qs, kind=edited.kind, variants={"edited": edited}), "edited"

    # ---- running -------------------------------------------------------------------------
    def run(self, *, background: bool = False) -> Comparison | Run | None:
        """Measure with the ticked indexes and settings against the plain baseline."""
        result: Comparison | Run | None = self._start(background=background, name="workbook-panel")
        return result

    def _progress(self, done: int, total: int) -> None:
        self.progress.max = total
        self.progress.value = done

    def _run(self) -> Comparison | Run | None:
        from ..experiment import Arm, Setting, WhatIfIndex, compare, run_shape
        from .charts import before_after, plan_view, svg

        self.error.value = ""
        self.run_button.disabled, self.cancel_button.disabled = True, False
        self.status.value = "measuring..."
        try:
            qs, variant = self._shape()
            knobs: list[Any] = [WhatIfIndex(self.specs[n]) for n, b in self.index_boxes.items() if b.value]
            knobs += [Setting(k, v) for k, v in _parse_settings(self.settings.value)]
            common = dict(tier=self.tier.value, repeats=self.repeats.value, progress=self._progress,
                          should_stop=lambda: self._stop)  # fmt: skip
            if knobs:
                treatment = Arm(" + ".join(k.label for k in knobs), variant, tuple(knobs))
                result: Any = compare(self.target, qs, treatment, Arm("baseline", variant), store=self.store, **common)
                self.verdict.value = f"<h4 class='workbook-verdict'>{html.escape(result.verdict.text)}</h4>"
                self.chart.value = svg(before_after(result))
                plans = [("before", result.baseline.plan), ("after", result.treatment.plan)]
                found = result.treatment.findings
                shown = result.treatment.plan
            else:
                result = run_shape(self.target, qs, variant=variant, store=self.store, **common)
                self.verdict.value = (f"<h4 class='workbook-verdict'>median {result.median_ms:.3f} ms, p95 "
                                      f"{result.p95_ms:.3f} ms over {len(result.samples_ms)} runs</h4>")  # fmt: skip
                self.chart.value = ""
                plans = [("plan", result.plan)]
                found = result.findings
                shown = result.plan
            rows = "".join(f"<div><b>{k}:</b> <code class='workbook-plan-{k}'>{html.escape(p.summary())}</code></div>"
                           for k, p in plans if p is not None)  # fmt: skip
            notes = "".join(f"<li><b>{html.escape(f.rule)}</b>: {html.escape(f.message)} — <i>try {html.escape(f.knob)}</i></li>"
                            for f in found)  # fmt: skip
            self.plan.value = f"<div class='workbook-plan'>{rows}</div>" + (f"<ul class='workbook-findings'>{notes}</ul>" if notes else "")
            self.plan_chart.value = svg(plan_view(shown)) if shown is not None else ""
            self.last = result
            self.status.value = "done" + (" (cancelled early)" if self._stop else "")
            return result
        except Exception as exc:  # shown in the panel: a click must never fail silently in a thread
            text = str(exc) if isinstance(exc, WorkbookError) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            self.error.value = f"<div class='workbook-error' style='color:#b00'><b>error:</b> {html.escape(text)}</div>"
            self.status.value = "failed: nothing was changed"
            return None
        finally:
            self.run_button.disabled, self.cancel_button.disabled = False, True


class DatasetPanel:
    """Scale and seed, Load with progress, and the size of every table."""

    def __init__(self, target: Target, *, on_load: Callable[[DatasetInfo], None] | None = None) -> None:
        import ipywidgets as w

        from ..dataset import dataset_info

        self.target, self.on_load = target, on_load
        with target.connect() as conn:
            self.info: DatasetInfo | None = dataset_info(conn)
        info = self.info
        self.scale = w.BoundedFloatText(value=info.scale if info else 0.05, min=0.001, max=100, step=0.01, description="scale")
        self.seed = w.BoundedIntText(value=info.seed if info else 42, min=0, max=2**31 - 1, description="seed")
        self.load_button = w.Button(description="Load", button_style="warning", icon="database")
        self.progress = w.IntProgress(value=0, min=0, max=1)
        self.status = w.HTML("")
        self.table = w.HTML("")
        self.load_button.on_click(lambda _: self.load())
        self.widget = w.VBox([w.HBox([self.scale, self.seed, self.load_button]), w.HBox([self.progress, self.status]), self.table])
        self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def refresh(self) -> None:
        from ..dataset import table_sizes

        info = self.info
        head = f"<p>SF {info.scale:g}, seed {info.seed}</p>" if info else "<p>no dataset loaded</p>"
        self.table.value = head + table_sizes(self.target)[["table", "rows", "size"]].to_html(index=False)

    def load(self) -> None:
        done: dict[str, int] = {}

        def report(table: str, rows: int, expected: int) -> None:
            done[table] = rows
            self.status.value = f"loading {html.escape(table)}: {rows:,} rows"
            self.progress.value = min(sum(done.values()), self.progress.max)

        from ..dataset import Generator
        from ..dataset import load as load_dataset

        try:
            gen = Generator(self.seed.value, self.scale.value)
            self.progress.max = sum(s.expected_rows for s in gen.tables())
            self.progress.value = 0
            info = self.info = load_dataset(self.target, generator=gen, progress=report)
            if self.on_load is not None:
                self.on_load(info)
            self.status.value = f"loaded {sum(info.rows.values()):,} rows in {info.load_seconds:.1f} s"
        except WorkbookError as exc:
            self.status.value = f"<span style='color:#b00'>error: {html.escape(str(exc))}</span>"
        self.refresh()
