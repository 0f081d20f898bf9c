"""One self-contained HTML file from the results store: environment, verdicts, charts, plans, DDL.

Everything is inline: charts are SVG rendered in this process (vl-convert), styles are one
``<style>`` block, there is no script and no external URL, so the file opens offline and makes no
request. It is built only from stored runs (what was measured), and every text that could hold a
secret goes through :func:`~workbook.cluster.target.redact_text` with the DSNs the caller used,
on top of the store never holding one (contexts record host, port and database only).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..cluster.target import redact_text
from ..errors import WorkbookError
from ..experiment.findings import MISESTIMATE_FACTOR
from ..experiment.plan import Plan
from ..experiment.runs import Comparison, Run
from ..results.store import ResultsStore
from ..ui.tables import cell, frame_html

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0; } .sub { color: #666; margin-top: .2em; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .num { text-align: right; font-variant-numeric: tabular-nums; }
section.experiment { border-top: 2px solid #1f77b4; margin-top: 2em; padding-top: .5em; }
section.lesson { border-top: 4px solid #444; margin-top: 3em; } .claim { font-size: 1.1em; font-style: italic; }
.verdict { font-size: 1.25em; font-weight: 600; } .faster { color: #1a7f37; } .slower { color: #b00; }
.mis { background: #fde2e1; font-weight: 600; } code, pre { background: #f6f8fa; padding: 2px 4px; }
pre { padding: 8px; overflow-x: auto; } pre.ddl, pre.wrap { white-space: pre-wrap; overflow-wrap: anywhere; }
pre.plan-json { white-space: pre-wrap; overflow-wrap: anywhere; max-height: 16em; overflow-y: auto; font-size: 12px; }
.stopped { color: #666; font-style: italic; } tr.removed td { color: #b00; text-decoration: line-through; }
tr.added td { color: #1a7f37; font-weight: 600; } .not-recommended { color: #555; } .charts { display: flex; flex-wrap: wrap; gap: 1em; }
"""


def comparisons_from_store(store: ResultsStore, ids: list[str] | None = None) -> list[Comparison]:
    """Rebuild stored comparisons (all, or those in ``ids``, in that order)."""
    comps = store.comparisons()
    if comps.empty:
        return []
    runs = {r["run_id"]: {str(k): v for k, v in r.items()} for r in store.runs().to_dict("records")}
    rows = [{str(k): v for k, v in r.items()} for r in comps.to_dict("records")]
    if ids is not None:
        by_id = {r["comparison_id"]: r for r in rows}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise WorkbookError(f"no comparison {missing[0]!r} in {str(store.path)!r}")
        rows = [by_id[i] for i in ids]
    out = []
    for r in rows:
        out.append(Comparison.from_record(r, runs[r["baseline_run"]], runs[r["treatment_run"]]))
    return out


def _svg(chart: Any) -> str:
    from ..ui.charts import svg

    text = svg(chart)
    return text[text.find("<svg"):]  # drop the XML prolog: inline SVG in HTML


def _plan_table(plan: Plan) -> str:
    rows = []
    for n in plan.nodes:
        if n.misestimate is None:
            cell = "<td class='num stopped' title='the executor stopped this node early'>stopped early</td>" \
                if n.stopped_early else "<td class='num'>–</td>"
        else:
            cls = "num mis" if n.misestimate >= MISESTIMATE_FACTOR else "num"
            cell = f"<td class='{cls}'>{n.misestimate:,.1f}x {html.escape(n.misestimate_direction or '')}</td>"
        rows.append(
            f"<tr><td>{'&nbsp;' * 4 * n.depth}{html.escape(n.label)}</td><td class='num'>{n.estimated_rows:,.0f}</td>"
            f"<td class='num'>{(n.actual_rows or 0):,.0f}</td>{cell}"
            f"<td class='num'>{'–' if n.exclusive_ms is None else f'{n.exclusive_ms:.3f}'}</td><td class='num'>{n.get('Shared Hit Blocks', 0)}/{n.get('Shared Read Blocks', 0)}</td></tr>"
        )
    return ("<table><tr><th>node</th><th>est. rows</th><th>actual rows</th><th>misestimate</th><th>self ms</th>"
            "<th>buffers hit/read</th></tr>" + "".join(rows) + "</table>")  # fmt: skip


def _plan_diff(before: Plan, after: Plan) -> str:
    """Which nodes the change removed, added or kept, and what each cost before and after."""
    from ..experiment.plan import plan_diff

    def ms(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    def n(x: float | None) -> str:
        return "–" if x is None else f"{x:,.0f}"

    rows = "".join(
        f"<tr class='{r['change']}'><td>{html.escape(r['node'])}</td><td>{r['change']}</td>"
        f"<td class='num'>{ms(r['self_ms_before'])}</td><td class='num'>{ms(r['self_ms_after'])}</td>"
        f"<td class='num'>{n(r['rows_before'])}</td><td class='num'>{n(r['rows_after'])}</td></tr>"
        for r in plan_diff(before, after)
    )
    return ("<h3>what changed in the plan</h3><table class='plan-diff'><tr><th>node</th><th>change</th>"
            "<th>self ms before</th><th>self ms after</th><th>rows before</th><th>rows after</th></tr>"
            f"{rows}</table>")  # fmt: skip


def _environment(comps: list[Comparison]) -> str:
    ctx = comps[-1].treatment.context if comps else {}
    ds = ctx.get("dataset") or {}
    target = ctx.get("target") or {}
    host = ctx.get("host") or {}
    rows = [
        ("server", f"PostgreSQL {ctx.get('server_version', '?')} ({target.get('kind', '?')} target {target.get('host')}:{target.get('port')}/{target.get('dbname')})"),
        ("dataset", f"scale {ds.get('scale')}, seed {ds.get('seed')}, generator v{ds.get('generator_version')}" if ds else "not the sample dataset"),
        ("checksum", ds.get("checksum", "(not computed)")),
        ("host", f"{host.get('platform')}, {host.get('cpus')} CPUs, {host.get('memory_gb')} GB, Python {host.get('python')}, load {host.get('load_average_1m')}"),
    ]
    if ctx.get("cpu_pinning"):  # older results did not record it
        rows.append(("CPU of the compared sessions' servers", ctx["cpu_pinning"]))
    settings = ctx.get("settings") or {}
    rows += [(f"setting {k}", v) for k, v in sorted(settings.items())]
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>"


def recommendations(comps: list[Comparison]) -> dict[str, tuple[bool, str]]:
    """comparison id -> (recommended?, why) for every comparison whose treatment builds an index.

    Recommended: measurably faster, and the fastest such index for its query shape. Every other
    tested index says why not: slower, no difference, negligible, or dominated by a better one.
    """
    out: dict[str, tuple[bool, str]] = {}
    best: dict[str, Comparison] = {}
    def ddl(run: Run) -> set[str]:
        return {k["ddl"] for k in run.knobs if k.get("ddl")}

    # an index is what a comparison tests when the treatment adds it and changes nothing else
    # (a rewrite compared with the index on both sides is a lesson about the rewrite)
    tested = [c for c in comps if c.baseline.variant == c.treatment.variant and ddl(c.treatment) - ddl(c.baseline)]
    def hurts(c: Comparison) -> Comparison | None:
        """The same index on the same query shape measured slower elsewhere (another tenant tier)."""
        added = ddl(c.treatment) - ddl(c.baseline)
        return next((o for o in tested if o.shape == c.shape and o.verdict.kind == "slower"
                     and ddl(o.treatment) - ddl(o.baseline) == added), None)  # fmt: skip

    for c in tested:
        if c.verdict.kind == "faster" and hurts(c) is None and (
            c.shape not in best or c.verdict.ratio > best[c.shape].verdict.ratio
        ):
            best[c.shape] = c
    for c in tested:
        v = c.verdict
        slower = hurts(c)
        if v.kind != "faster":
            out[c.comparison_id] = (False, {"slower": f"it made the query slower ({v.text})",
                                            "negligible": f"the gain is real but negligible ({v.text})"}.get(
                v.kind, v.text))  # fmt: skip
        elif slower is not None:
            out[c.comparison_id] = (False, f"a trade-off, not a clear win: {v.text} for the {c.treatment.tier} tenant, "
                                           f"but {slower.verdict.text} for the {slower.treatment.tier} tenant")  # fmt: skip
        elif best[c.shape] is not c:
            b = best[c.shape]
            out[c.comparison_id] = (False, f"dominated by a better index for the same query: {b.treatment.label} "
                                           f"({b.verdict.ratio:.1f}x vs {v.ratio:.1f}x)")  # fmt: skip
        else:
            out[c.comparison_id] = (True, v.text)
    return out


def _plan_json(before: Run, after: Run) -> str:
    """Both plans as EXPLAIN (FORMAT JSON) prints them, folded: what PEV2 (explain.dalibo.com, or its
    offline pev2.html) reads when pasted. Not embedded: PEV2 with Vue and Bootstrap would add ~1 MB
    of script to every report, which has none and opens offline."""
    plans = [(name, run.plan) for name, run in (("before", before), ("after", after)) if run.plan is not None]
    if not plans:
        return ""
    body = "".join(f"<p>plan {name}</p><pre class='plan-json'>{html.escape(json.dumps([p.raw]))}</pre>" for name, p in plans)
    return ("<details><summary>the plans as EXPLAIN JSON (paste one into PEV2: "
            "<a href='https://explain.dalibo.com'>explain.dalibo.com</a>, or its offline pev2.html)</summary>"
            f"{body}</details>")  # fmt: skip


def _where(run: Run) -> str:
    """What sets an experiment apart from others on the same shape and change: the tenant tier and
    the parameters it ran with (a page depth, a tenant), in short."""
    if len(run.params) == 1:
        values = ", ".join(f"{k}={v}" for k, v in run.params[0].items())
        shown = values if len(values) <= 90 else values[:89] + "…"
        return f"{run.tier} tenant: {shown}"
    return f"{run.tier} tenant, {len(run.params)} parameter sets"


def _experiment(c: Comparison, i: int, advice: tuple[bool, str] | None = None) -> str:
    from ..ui.charts import comparison_spec, plan_svg

    b, t = c.baseline, c.treatment
    kind = c.verdict.kind
    parts = [
        f"<section class='experiment' id='exp{i}'><h2>{i}. {html.escape(c.shape)}: {html.escape(t.label)} "
        f"<small>({html.escape(_where(t))})</small></h2>",
        f"<p class='verdict {html.escape(kind)}'>{html.escape(c.verdict.text)}</p>",
        f"<p>median {b.median_ms:.3f} ms → {t.median_ms:.3f} ms, p95 {b.p95_ms:.3f} → {t.p95_ms:.3f} ms; "
        f"{len(t.samples_ms)} {'interleaved' if c.interleaved else 'sequential'} repetitions{html.escape(c.stopped_note)}; "
        f"cache {html.escape(t.cache)}; "
        f"{html.escape(t.tier)} tenant, variant {html.escape(b.variant)} → {html.escape(t.variant)}</p>",
        f"<div class='charts'>{_svg(comparison_spec(c))}</div>",
    ]
    for name, run in (("before", b), ("after", t)):
        if run.plan is not None:
            parts.append(f"<h3>plan {name}: <code>{html.escape(run.plan.summary())}</code></h3>{_plan_table(run.plan)}")
    if b.plan is not None and t.plan is not None and c.plan_changed:
        parts.append(_plan_diff(b.plan, t.plan))
    for name, run in (("before", b), ("after", t)):  # both: what the change removed is as telling as what it added
        if run.plan is not None:
            took = f"{run.plan.execution_ms:.3f} ms executed" if run.plan.analyzed else f"cost {run.plan.total_cost:,.0f}"
            parts.append(plan_svg(run.plan, title=f"plan {name}: {took}"))
    parts.append(_plan_json(b, t))
    found = [("before", f) for f in b.findings] + [("after", f) for f in t.findings]
    if found:
        parts.append("<h3>findings</h3><ul>" + "".join(
            f"<li>[{w}] <b>{html.escape(f.rule)}</b>: {html.escape(f.message)} — <i>try {html.escape(f.knob)}</i></li>" for w, f in found
        ) + "</ul>")  # fmt: skip
    base_ddl = {k["ddl"] for k in b.knobs if k.get("ddl")}
    ddl = [k["ddl"] for k in t.knobs if k.get("ddl") and k["ddl"] not in base_ddl]
    recommended, why = advice if advice is not None else (kind == "faster" and b.variant == t.variant, c.verdict.text)
    if b.variant != t.variant:
        parts.append(f"<p class='not-recommended'>a rewrite ({html.escape(b.variant)} → {html.escape(t.variant)}): "
                     "the indexes on both sides are the same, so there is no DDL to recommend.</p>")  # fmt: skip
    elif ddl and recommended:
        parts.append("<h3>recommended DDL</h3><pre class='ddl'>" + html.escape(";\n".join(ddl)) + ";</pre>")
    elif ddl:
        parts.append(f"<p class='not-recommended'>tested, not recommended: {html.escape(why)}.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def render(comps: list[Comparison], *, title: str = "Database optimization report", dsns: list[str] | None = None,
           timings: dict[str, float] | None = None) -> str:  # fmt: skip
    """The report as one HTML string."""
    if not comps:
        raise WorkbookError("nothing to report: the results store has no comparison yet (run lab.compare(...) or workbook compare)")
    advice = recommendations(comps)
    summary = "".join(
        f"<tr><td><a href='#exp{i}'>{html.escape(c.shape)}</a></td><td>{html.escape(c.treatment.label)}</td>"
        f"<td class='{html.escape(c.verdict.kind)}'>{html.escape(c.verdict.text)}</td>"
        f"<td class='num'>{c.baseline.median_ms:.3f}</td><td class='num'>{c.treatment.median_ms:.3f}</td></tr>"
        for i, c in enumerate(comps, 1)
    )
    phases = ""
    if timings:
        phases = "<p class='sub'>" + ", ".join(f"{html.escape(k)} {v:.1f} s" for k, v in timings.items()) + "</p>"
    body = (
        f"<h1>{html.escape(title)}</h1><p class='sub'>generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} "
        f"from {len(comps)} measured comparisons</p>{phases}"
        "<h2>Environment</h2>" + _environment(comps)
        + "<h2>Summary</h2><table><tr><th>query shape</th><th>change</th><th>verdict</th><th>median before (ms)</th>"
        "<th>median after (ms)</th></tr>" + summary + "</table>"
        + "\n".join(_experiment(c, i, advice.get(c.comparison_id)) for i, c in enumerate(comps, 1))
    )  # fmt: skip
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>{body}</body></html>")  # fmt: skip
    return redact_text(doc, *(dsns or []))


def _flat(figures: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(figures, dict):
        return [row for k, v in figures.items() for row in _flat(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(figures, list):
        return [(prefix, ", ".join(map(str, figures)) or "(none)")]
    return [(prefix, figures)]


#: a list longer than this is shown by its first items and its length; a table by its first and last rows
_LIST_ITEMS, _TABLE_ROWS = 12, 20


def _step_outputs(leaves: Iterable[tuple[str, Any]], counter: list[int], advice: dict[str, tuple[bool, str]]) -> list[str]:
    """A step's measured objects: tables, plans and experiments each on their own; the scalars, lists
    and small dicts between them gathered into one table of label and value (not a heading each)."""
    out: list[str] = []
    rows: list[tuple[str, Any]] = []

    def flush() -> None:
        if rows:
            out.append("<table class='values'>" + "".join(
                f"<tr><th>{html.escape(k)}</th><td{_num_class(v)}>{html.escape(_value_text(k, v))}</td></tr>"
                for k, v in rows) + "</table>")  # fmt: skip
            rows.clear()

    for label, value in leaves:
        if _is_value(value):
            rows.extend(_flat(value, label) if isinstance(value, dict) and value else [(label, value)])
            continue
        flush()
        out.append(_output(label, value, counter, advice))
    flush()
    return out


def _is_value(value: Any) -> bool:
    """A scalar, a list of scalars or a dict of scalars: a row (or rows) of a label/value table."""
    scalar = (int, float, str, bool, type(None))
    if isinstance(value, scalar):
        return True
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, scalar) for v in value)
    return isinstance(value, dict) and all(isinstance(v, scalar) for v in value.values())


def _num_class(value: Any) -> str:
    """Numbers right-aligned; a sentence (a note, a reason something did not run) reads from the left."""
    return " class='num'" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _value_text(label: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        shown = ", ".join(map(str, value[:_LIST_ITEMS]))
        # "listed", not "in all": a list may itself be a sample (the drill keeps 50 of its lost ids)
        return f"{shown}, … ({len(value):,} listed)" if len(value) > _LIST_ITEMS else (shown or "(none)")
    return cell(label.replace(" / ", "_").replace(".", "_"), value)


def _output(label: str, value: Any, counter: list[int], advice: dict[str, tuple[bool, str]]) -> str:
    """One measured object of a lesson step, as HTML."""
    import pandas as pd

    head = f"<h3>{html.escape(label)}</h3>" if label else ""
    if isinstance(value, Comparison):
        counter[0] += 1
        return _experiment(value, counter[0], advice.get(value.comparison_id))
    if isinstance(value, Plan):
        return f"{head}<p><code>{html.escape(value.summary())}</code></p>{_plan_table(value)}"
    if isinstance(value, pd.DataFrame):
        return head + frame_html(value, max_rows=_TABLE_ROWS)
    if not isinstance(value, (dict, list, tuple)):  # an object of the library (a LoadRun, ...): its summary
        text = str(value)
        return f"{head}<pre class='wrap'>{html.escape(text[:2000])}</pre>" if "\n" in text else \
            f"{head}<p><code>{html.escape(text[:400])}</code></p>"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) and _is_value(v) for v in value):
        return head + frame_html(pd.DataFrame(list(value)), max_rows=_TABLE_ROWS)  # records: a table
    if isinstance(value, (list, tuple)) and not any(isinstance(v, (dict, list, tuple)) for v in value):
        return head + "<ul>" + "".join(f"<li><code>{html.escape(str(v)[:400])}</code></li>" for v in value) + "</ul>"
    return f"{head}<pre class='wrap'>{html.escape(json.dumps(value, indent=2, default=str))}</pre>"


def _recommended_block(comps: list[Comparison], advice: dict[str, tuple[bool, str]]) -> str:
    keep = [c for c in comps if advice.get(c.comparison_id, (False, ""))[0]]
    if not advice:  # e.g. a report of the replicas or pooling lesson alone
        return "<h2>Recommended changes</h2><p>These lessons tested no index, so there is no index to recommend.</p>"
    if not keep:
        return "<h2>Recommended changes</h2><p>No tested index made a query measurably faster.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(c.shape)}</td><td>{html.escape(c.verdict.text)}</td><td><pre class='ddl'>"
        + html.escape(";\n".join(k["ddl"] for k in c.treatment.knobs if k.get("ddl") and k not in c.baseline.knobs))
        + ";</pre></td></tr>"
        for c in keep
    )  # fmt: skip
    return ("<h2>Recommended changes</h2><p>Only changes with a measured, significant benefit, the best one per "
            "query shape; the others are listed with their experiment as tested, not recommended.</p>"
            f"<table><tr><th>query shape</th><th>verdict</th><th>DDL</th></tr>{rows}</table>")  # fmt: skip


def _observability(seen: dict[str, Any]) -> str:
    """What the server saw while the lessons ran: top statements, cache hit ratio, unused and
    overlapping indexes, key settings (from workbook.experiment.workload and .health)."""
    parts = ["<section class='observed' id='observability'><h1>What the server saw</h1>"]
    if seen.get("note"):
        parts.append(f"<p>{html.escape(seen['note'])}</p>")
    top = seen.get("top")
    if top is not None and len(top):
        shown = top.assign(query=top["query"].map(lambda q: " ".join(str(q).split())[:120]))
        parts.append("<h2>Top statements by total time (pg_stat_statements)</h2>"
                     + frame_html(shown.drop(columns=["queryid"])))  # fmt: skip
    h = seen.get("health") or {}
    if h:
        ratio = h.get("cache_hit_ratio")
        parts.append("<h2>Health</h2><table>"
                     f"<tr><th>cache hit ratio</th><td class='num'>{'–' if ratio is None else f'{ratio:.4f}'}</td></tr>"
                     f"<tr><th>unused indexes</th><td>{html.escape(', '.join(i.get('index', '?') for i in h.get('unused_indexes', [])) or 'none')}</td></tr>"
                     f"<tr><th>overlapping indexes</th><td>{len(h.get('overlapping_indexes', []))}</td></tr>"
                     + "".join(f"<tr><th>setting {html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in (h.get("settings") or {}).items())
                     + "</table>")  # fmt: skip
    if "slow_plans" in seen:  # auto_explain's captured plans (workbook/report/slow_plans.py)
        from .slow_plans import slow_plans_section

        parts.append(slow_plans_section(seen["slow_plans"]))
    parts.append("</section>")
    return "".join(parts)


def render_lessons(results: list[Any], *, title: str = "Database optimization report", dsns: list[str] | None = None,
                   timings: dict[str, float] | None = None, observed: dict[str, Any] | None = None) -> str:  # fmt: skip
    """The report as a composition of lessons: contents, then one section per lesson (its claim, its
    figures, and every step's measurements in the order its notebook runs them)."""
    from ..lessons import walk

    if not results:
        raise WorkbookError("nothing to report: no lesson was run")
    comps = [c for r in results for c in r.comparisons]
    advice = recommendations(comps)
    toc = "".join(f"<li><a href='#lesson-{html.escape(r.name)}'>{html.escape(r.lesson.title)}</a> "
                  f"({r.seconds:.1f} s)</li>" for r in results)  # fmt: skip
    if observed is not None:
        toc += "<li><a href='#observability'>What the server saw</a></li>"
    phases = ""
    if timings:
        phases = "<p class='sub'>" + ", ".join(f"{html.escape(k)} {v:.1f} s" for k, v in timings.items()) + "</p>"
    counter = [0]
    sections = []
    for r in results:
        figs = "".join(f"<tr><th>{html.escape(k)}</th><td{_num_class(v)}>{html.escape(cell(k.replace('.', '_'), v))}</td></tr>"
                       for k, v in _flat(r.figures))  # fmt: skip
        parts = [f"<section class='lesson' id='lesson-{html.escape(r.name)}'><h1>{html.escape(r.lesson.title)}</h1>",
                 f"<p class='claim'>{html.escape(r.lesson.claim)}</p>",
                 f"<details><summary>figures ({html.escape(r.name)})</summary><table>{figs}</table></details>"]  # fmt: skip
        for step in r.lesson.steps:
            parts.append(f"<h2>{html.escape(step.title)}</h2><p>{html.escape(step.text)}</p>")
            parts += _step_outputs(walk(r.outputs.get(step.name)), counter, advice)
        for chart_title, chart in r.charts().items():
            parts.append(f"<h2>{html.escape(chart_title)}</h2><div class='charts'>{_svg(chart)}</div>")
        refs = "".join(f"<li><a href='{html.escape(u)}'>{html.escape(t)}</a></li>" for t, u in r.lesson.references)
        if refs:
            parts.append(f"<h2>References</h2><ul>{refs}</ul>")
        parts.append("</section>")
        sections.append("\n".join(parts))
    body = (
        f"<h1>{html.escape(title)}</h1><p class='sub'>generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} "
        f"from {len(results)} lessons, {len(comps)} measured comparisons</p>{phases}"
        f"<h2>Contents</h2><ol>{toc}</ol>"
        + _recommended_block(comps, advice)
        + ("<h2>Environment</h2>" + _environment(comps) if comps else "")
        + "\n".join(sections)
        + (_observability(observed) if observed is not None else "")
    )  # fmt: skip
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>{body}</body></html>")  # fmt: skip
    return redact_text(doc, *(dsns or []))


def write_html(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, renamed); one-line errors."""
    out = Path(path)
    tmp = out.with_suffix(out.suffix + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True) if tmp.parent.is_dir() else None
        raise WorkbookError(f"cannot write the report to {str(out)!r}: {exc.strerror or exc}") from None
    return out


def write_report(store: ResultsStore, path: str | os.PathLike[str], *, ids: list[str] | None = None, title: str | None = None,
                 dsns: list[str] | None = None, timings: dict[str, float] | None = None) -> Path:  # fmt: skip
    """Write the report of the stored comparisons (all, or ``ids``) to ``path``; return it."""
    comps = comparisons_from_store(store, ids)
    text = render(comps, title=title or "Database optimization report", dsns=dsns, timings=timings)
    return write_html(text, path)
