"""Altair charts of measurements: before/after, latency distributions, plan views, index trade-offs.

Each function takes the library's objects (a :class:`~workbook.experiment.Comparison`, a
:class:`~workbook.experiment.Plan`, a DataFrame of index costs) and returns an Altair chart, so a
notebook shows it, a report embeds it (``chart.to_html()`` / ``chart.save("x.svg")``), and tests
render it. No SQL here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..experiment.plan import Plan, log_factor
from ..experiment.timing import bootstrap_median_ci

if TYPE_CHECKING:
    import altair as alt
    import pandas as pd

    from ..experiment.runs import Comparison, Run
    from ..traffic import LoadRun, Sweep

BASELINE_COLOUR = "#8c8c8c"
TREATMENT_COLOUR = "#1f77b4"


# vl-convert lays text out with its own font metrics; a browser draws the same "sans-serif" text
# with its own font, measured here up to ~10 % (~30-50 px) wider (DejaVu Sans in Debian's Chromium), and an
# inline SVG clips what crosses its edge. The padding leaves room for that difference.
SVG_PADDING = {"left": 40, "right": 60, "top": 5, "bottom": 5}


VEGA_LITE_SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"


def svg(chart: Any) -> str:
    """A chart as SVG text (rendered by vl-convert, in this process: no JavaScript, no network).

    ``chart`` is an Altair chart or a Vega-Lite spec (a dict, as the ``*_spec`` functions build:
    the report draws those, so writing it never imports Altair, ~1.2 s, nor builds its objects,
    ~50 ms a chart).
    """
    import vl_convert as vlc

    # the chart functions build valid specs: no JSON-schema validation, and the padding and text
    # sizes go into the spec as plain dict entries (each Altair .properties()/.configure_*() call
    # deep-copies the whole chart, which cost more than drawing it)
    spec = dict(chart) if isinstance(chart, dict) else chart.to_dict(validate=False)
    spec["padding"] = SVG_PADDING
    config = spec["config"] = dict(spec.get("config") or {})
    for key, value in STYLE.items():
        config[key] = {**value, **config.get(key, {})}
    return str(vlc.vegalite_to_svg(spec))


def _alt() -> Any:
    import altair as alt

    return alt


def _altair(spec: dict[str, Any]) -> Any:
    """The Altair chart of a Vega-Lite spec (for notebooks: display it, or change it with Altair's API)."""
    alt = _alt()
    kind = alt.LayerChart if "layer" in spec else alt.Chart
    return kind.from_dict(spec, validate=False)


FONT = 12  # px: axis labels, titles and legends are read at a glance in the report and in JupyterLab
LABEL_LIMIT = 420  # px an axis label may take before it is cut: arm labels are index names


# readable text on every chart: 12 px labels, 14 px titles, labels cut only when very long; the
# view size is Altair's default theme, so a spec drawn without Altair looks the same as with it
STYLE: dict[str, dict[str, Any]] = {
    "axis": {"labelFontSize": FONT, "titleFontSize": FONT, "labelLimit": LABEL_LIMIT},
    "title": {"fontSize": 14, "subtitleFontSize": FONT},
    "legend": {"labelFontSize": FONT, "titleFontSize": FONT},
    "view": {"continuousWidth": 300, "continuousHeight": 300},
}


def _field(name: str, kind: str, **extra: Any) -> dict[str, Any]:
    """A Vega-Lite field definition: ``_field("ms", "quantitative", title=...)``."""
    return {"field": name, "type": kind, **extra}


def _values(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Inline data, JSON-clean: NaN becomes null (as Altair sanitizes a DataFrame)."""
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]
    return {"values": clean}


def _spec(data: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    return {"$schema": VEGA_LITE_SCHEMA, "data": _values(data), **body}


def _arm_rows(c: Comparison) -> list[tuple[str, Run, str]]:
    def name(side: str, label: str) -> str:
        return side if label in ("", side) else f"{side}: {label}"

    return [(name("baseline", c.baseline.label), c.baseline, BASELINE_COLOUR),
            (name("treatment", c.treatment.label), c.treatment, TREATMENT_COLOUR)]  # fmt: skip


def before_after(c: Comparison, *, width: int = 420) -> alt.LayerChart:
    """Median latency of each arm, with the 95 % bootstrap interval as whiskers; the verdict as title.

    When one arm is more than 10x the other the axis is logarithmic (a linear one would draw the
    fast arm's bar as a line) and each bar carries its median in ms, so the ratio reads off the chart.
    """
    return _altair(before_after_spec(c, width=width))


def before_after_spec(c: Comparison, *, width: int = 420) -> dict[str, Any]:
    """:func:`before_after` as a Vega-Lite spec (a dict)."""
    import math

    rows: list[dict[str, Any]] = []
    for name, run, colour in _arm_rows(c):
        lo, hi = bootstrap_median_ci(run.samples_ms)
        rows.append({"arm": name, "median_ms": run.median_ms, "ci_low": lo, "ci_high": hi, "colour": colour,
                     "p95_ms": run.p95_ms, "plan": run.plan.summary() if run.plan else ""})  # fmt: skip
    medians = [float(r["median_ms"] or 0.0) for r in rows]
    wide = min(medians) > 0 and max(medians) / min(medians) > 10
    for r, m in zip(rows, medians):
        r["label"] = f"{m:.3g} ms"
    scale: dict[str, Any] = {"zero": True}
    axis: dict[str, Any] = {}
    x_title = "median latency (ms, log scale), 95% CI" if wide else "median latency (ms), 95% CI"
    bar_x2: dict[str, Any] = {}
    if wide:  # a log axis has no zero: bars start at the power of ten below the smallest interval
        floor = 10 ** math.floor(math.log10(max(min(float(r["ci_low"] or m) for r, m in zip(rows, medians)), 1e-6)))
        scale = {"type": "log", "domainMin": floor}
        for r in rows:
            r["floor"] = floor
        top = max(float(r["ci_high"] or m) for r, m in zip(rows, medians))
        axis = {"values": [floor * 10**k for k in range(int(math.log10(top / floor)) + 2)], "format": "~g"}
        bar_x2 = {"x2": {"field": "floor"}}
    y = _field("arm", "nominal", title=None, sort=None)
    bars = {"mark": {"type": "bar", "height": 22}, "encoding": {
        "y": y, "x": _field("median_ms", "quantitative", title=x_title, scale=scale, axis=axis), **bar_x2,
        "color": _field("colour", "nominal", scale=None),
        "tooltip": [_field("arm", "nominal"), _field("median_ms", "quantitative", format=".3f"),
                    _field("p95_ms", "quantitative", format=".3f"), _field("plan", "nominal")],
    }}  # fmt: skip
    whiskers = {"mark": {"type": "rule", "strokeWidth": 2, "color": "black"}, "encoding": {
        "y": y, "x": _field("ci_low", "quantitative", scale=scale), "x2": {"field": "ci_high"}}}  # fmt: skip
    text = {"mark": {"type": "text", "align": "left", "dx": 4, "fontSize": FONT}, "encoding": {
        "y": y, "x": _field("ci_high", "quantitative", scale=scale), "text": _field("label", "nominal")}}  # fmt: skip
    title = {"text": [f"{c.shape}:", c.verdict.text],  # two lines: a verdict with its interval is long
             "subtitle": "interleaved repetitions" if c.interleaved else "sequential repetitions"}  # fmt: skip
    return _spec(rows, layer=[bars, whiskers, text], width=width, title=title)


def comparison_chart(c: Comparison, *, width: int = 420) -> alt.LayerChart:
    """One chart of a comparison: every timed execution of each arm, its median and the median's 95% CI.

    The report draws this one instead of :func:`before_after` and :func:`latency_distribution`
    (the same facts, one drawing instead of two). The axis is logarithmic when one arm's median
    is more than 10x the other's, and each median is written beside its row, so the ratio reads
    off the chart whatever its size.
    """
    return _altair(comparison_spec(c, width=width))


def comparison_spec(c: Comparison, *, width: int = 420) -> dict[str, Any]:
    """:func:`comparison_chart` as a Vega-Lite spec (a dict)."""
    arms = _arm_rows(c)
    order = [name for name, _, _ in arms]  # baseline above treatment
    samples = [{"arm": name, "ms": ms, "colour": colour} for name, run, colour in arms for ms in run.samples_ms]
    rows: list[dict[str, Any]] = []
    for name, run, colour in arms:
        lo, hi = bootstrap_median_ci(run.samples_ms)
        rows.append({"arm": name, "median_ms": run.median_ms, "ci_low": lo, "ci_high": hi, "colour": colour,
                     "right": max([hi, *run.samples_ms]), "label": f"median {float(run.median_ms or 0):.3g} ms",
                     "p95_ms": run.p95_ms, "plan": run.plan.summary() if run.plan else ""})  # fmt: skip
    medians = [float(r["median_ms"] or 0.0) for r in rows]
    wide = min(medians) > 0 and max(medians) / min(medians) > 10
    scale: dict[str, Any] = {"zero": False}
    axis: dict[str, Any] = {}
    if wide:  # gridlines and labels at the powers of ten only: a log axis's minor lines crowd a short chart
        import math

        low = min(min(run.samples_ms) for _, run, _ in arms if run.samples_ms)
        high = max(r["right"] for r in rows)
        decades = range(math.floor(math.log10(max(low, 1e-6))), math.ceil(math.log10(max(high, 1e-6))) + 1)
        scale = {"type": "log", "domain": [10.0**decades[0], 10.0**decades[-1]]}
        axis = {"values": [10.0**k for k in decades], "format": "~g"}
    q = "quantitative"
    y = _field("arm", "nominal", title=None, sort=order)
    by_colour = _field("colour", "nominal", scale=None)
    x_title = "ms per execution" + (" (log scale)" if wide else "")
    layers = [
        {"data": _values(samples), "mark": {"type": "tick", "opacity": 0.45, "thickness": 1.5},
         "encoding": {"y": y, "x": _field("ms", q, scale=scale, title=x_title, axis=axis), "color": by_colour}},
        {"mark": {"type": "rule", "strokeWidth": 3, "color": "black"},
         "encoding": {"y": y, "x": _field("ci_low", q, scale=scale), "x2": {"field": "ci_high"}}},
        {"mark": {"type": "tick", "thickness": 4, "size": 30},
         "encoding": {"y": y, "x": _field("median_ms", q, scale=scale), "color": by_colour, "tooltip": [
             _field("arm", "nominal"), _field("median_ms", q, format=".3f"), _field("ci_low", q, format=".3f"),
             _field("ci_high", q, format=".3f"), _field("p95_ms", q, format=".3f"), _field("plan", "nominal")]}},
        {"mark": {"type": "text", "align": "left", "dx": 8, "fontSize": FONT},
         "encoding": {"y": y, "x": _field("right", q, scale=scale), "text": _field("label", "nominal")}},
    ]  # fmt: skip
    how = "interleaved" if c.interleaved else "sequential"
    title = {"text": [f"{c.shape}:", c.verdict.text],  # two lines: a verdict with its interval is long
             "subtitle": f"{len(c.treatment.samples_ms)} {how} executions each (thin); median (thick) and its 95% CI (black)"}  # fmt: skip
    return _spec(rows, layer=layers, width=width, height={"step": 40}, title=title)


def latency_distribution(c: Comparison, *, width: int = 420) -> alt.LayerChart:
    """Every timed execution of both arms: box plot plus the individual samples (log scale)."""
    return _altair(latency_distribution_spec(c, width=width))


def latency_distribution_spec(c: Comparison, *, width: int = 420) -> dict[str, Any]:
    """:func:`latency_distribution` as a Vega-Lite spec (a dict)."""
    rows = [{"arm": name, "ms": ms} for name, run, _ in _arm_rows(c) for ms in run.samples_ms]
    log = {"type": "log"}
    order = [name for name, _, _ in _arm_rows(c)]  # baseline above treatment, as in before_after (the box plot's aggregate reorders otherwise)
    box = {"mark": {"type": "boxplot", "extent": 1.5, "opacity": 0.5, "size": 18}, "encoding": {
        "y": _field("arm", "nominal", title=None, sort=order),
        "x": _field("ms", "quantitative", scale=log, title="latency per execution (ms, log)")}}  # fmt: skip
    dots = {"mark": {"type": "tick", "opacity": 0.6}, "encoding": {
        "y": _field("arm", "nominal", sort=order), "x": _field("ms", "quantitative", scale=log)}}  # fmt: skip
    title = f"{c.shape}: latency distribution ({len(c.baseline.samples_ms)} runs each)"
    return _spec(rows, layer=[box, dots], width=width, title=title)


def _plan_rows(plan: Plan) -> list[dict[str, Any]]:
    """Icicle layout: each node spans its share of its parent's time (or cost when not executed)."""

    def weight(n: Any) -> float:
        w = n.inclusive_ms if n.inclusive_ms is not None else float(n.get("Total Cost", 0.0))
        return max(w, 1e-9)

    rows: list[dict[str, Any]] = []

    def place(n: Any, x0: float, x1: float) -> None:
        self_ms = f" · {n.exclusive_ms:.2f} ms self" if n.exclusive_ms is not None else ""
        rows.append({
            "node": n.label, "text": n.label + self_ms, "depth": n.depth, "x0": x0, "x1": x1,
            "exclusive_ms": n.exclusive_ms, "inclusive_ms": n.inclusive_ms,
            "estimated_rows": n.estimated_rows, "actual_rows": n.actual_rows,
            "misestimate": n.misestimate, "log10_misestimate": log_factor(n.misestimate),
            "loops": n.loops, "spilled": n.spilled,
        })  # fmt: skip
        total = weight(n)
        kids = n.children
        kid_sum = sum(weight(k) for k in kids)
        span = (x1 - x0) * min(1.0, kid_sum / total) if kids else 0.0
        cursor = x0
        for k in kids:
            w = span * weight(k) / kid_sum if kid_sum else 0.0
            place(k, cursor, cursor + w)
            cursor += w

    place(plan.root, 0.0, 1.0)
    return rows


def plan_frame(plan: Plan) -> pd.DataFrame:
    """Icicle layout: each node spans its share of its parent's time (or cost when not executed)."""
    import pandas as pd

    return pd.DataFrame(_plan_rows(plan))


def plan_view(plan: Plan, *, width: int = 640, title: str | None = None) -> alt.LayerChart:
    """An icicle of the plan: width is time spent (inclusive), colour the row misestimate (log10)."""
    return _altair(plan_view_spec(plan, width=width, title=title))


def plan_view_spec(plan: Plan, *, width: int = 640, title: str | None = None) -> dict[str, Any]:
    """:func:`plan_view` as a Vega-Lite spec (a dict)."""
    rows = _plan_rows(plan)
    row_h = 34
    q = "quantitative"
    encoding = {
        "x": _field("x0", q, axis=None, scale={"domain": [0, 1]}), "x2": {"field": "x1"},
        "y": _field("depth", "ordinal", axis=None), "tooltip": [
            _field("node", "nominal"), _field("exclusive_ms", q, format=".3f"), _field("inclusive_ms", q, format=".3f"),
            _field("estimated_rows", q, format=",.0f"), _field("actual_rows", q, format=",.0f"),
            _field("misestimate", q, format=".1f"), _field("loops", q), _field("spilled", "nominal"),
        ],
    }  # fmt: skip
    rects = {"mark": {"type": "rect", "stroke": "white", "strokeWidth": 1}, "encoding": {**encoding, "color": _field(
        "log10_misestimate", q, title="misestimate (log10 x)",
        scale={"domain": [0, 3], "range": ["#d9ead3", "#fce5cd", "#cc0000"], "clamp": True})}}  # fmt: skip
    labels = {"mark": {"type": "text", "align": "left", "dx": 3, "fontSize": FONT, "limit": width},
              "encoding": {**encoding, "x": _field("x0", q), "text": _field("text", "nominal")}}  # fmt: skip
    heading = title or (f"plan: {plan.execution_ms:.3f} ms executed" if plan.analyzed else f"plan: cost {plan.total_cost:,.0f}")
    height = row_h * (max(int(r["depth"]) for r in rows) + 1)
    return _spec(rows, layer=[rects, labels], width=width, height=height, title=heading)


_MISESTIMATE_STOPS = ((0.0, (0xD9, 0xEA, 0xD3)), (1.5, (0xFC, 0xE5, 0xCD)), (3.0, (0xCC, 0x00, 0x00)))
_CHAR_PX = 7.6  # a 12 px sans-serif character is at most this wide on average (DejaVu Sans: ~7 px)


def _misestimate_colour(log10_factor: float) -> str:
    """The plan view's colour for a misestimate (log10 of the factor, clamped to 0-3): green, sand, red."""
    x = min(max(log10_factor, 0.0), 3.0)
    (x0, c0), (x1, c1) = next((a, b) for a, b in zip(_MISESTIMATE_STOPS, _MISESTIMATE_STOPS[1:]) if x <= b[0])
    t = (x - x0) / (x1 - x0)
    return "#" + "".join(f"{round(p + (q - p) * t):02x}" for p, q in zip(c0, c1))


def _plan_tip(r: dict[str, Any]) -> str:
    """A plan-view box's tooltip: the node, its time, rows, misestimate, loops."""

    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f} ms"

    actual = "–" if r["actual_rows"] is None else f"{r['actual_rows']:,.0f}"
    mis = "" if r["misestimate"] is None else f", misestimate {r['misestimate']:.1f}x"
    return (f"{r['node']}\nself {ms(r['exclusive_ms'])}, total {ms(r['inclusive_ms'])}\n"
            f"rows: estimated {r['estimated_rows']:,.0f}, actual {actual}{mis}; loops {r['loops']}"
            + ("; spilled to disk" if r["spilled"] else ""))  # fmt: skip


def plan_svg(plan: Plan, *, width: int = 640, title: str | None = None) -> str:
    """:func:`plan_view` drawn straight to SVG text, without a chart engine (the report draws one per
    comparison: ~0.1 ms here against ~20 ms through Vega). Each node is a box as wide as its share
    of the time, coloured by its row misestimate, its label cut to fit (the full text is its tooltip)."""
    import html as h
    import uuid

    rows = _plan_rows(plan)
    row_h, top, pad = 34, 26, 60  # pad: room on the right, as SVG_PADDING leaves for a browser's wider font
    depth = max(int(r["depth"]) for r in rows) + 1
    legend_y = top + depth * row_h + 10
    height = legend_y + 40
    heading = title or (f"plan: {plan.execution_ms:.3f} ms executed" if plan.analyzed else f"plan: cost {plan.total_cost:,.0f}")
    out = [f"<svg class='marks plan-view' xmlns='http://www.w3.org/2000/svg' width='{width + pad}' height='{height}' "
           f"viewBox='0 0 {width + pad} {height}' role='graphics-document' font-family='sans-serif'>",
           f"<text x='{width / 2:.0f}' y='17' font-size='14' font-weight='bold' text-anchor='middle'>{h.escape(heading)}</text>"]  # fmt: skip
    for r in rows:
        x, w, y = r["x0"] * width, (r["x1"] - r["x0"]) * width, top + int(r["depth"]) * row_h
        tip = _plan_tip(r)
        fits = int((w - 6) / _CHAR_PX)
        label = r["text"] if len(r["text"]) <= fits else (r["text"][: fits - 1] + "…" if fits >= 4 else "")
        out.append(f"<g role='graphics-symbol'><title>{h.escape(tip)}</title>"
                   f"<rect x='{x:.2f}' y='{y}' width='{max(w, 0.5):.2f}' height='{row_h - 1}' "
                   f"fill='{_misestimate_colour(r['log10_misestimate'])}' stroke='white'/>"
                   + (f"<text x='{x + 3:.2f}' y='{y + row_h / 2 + 4:.0f}' font-size='{FONT}'>{h.escape(label)}</text>" if label else "")
                   + "</g>")  # fmt: skip
    gradient = f"plan-misestimate-{uuid.uuid4().hex[:8]}"  # unique in a page that inlines many
    out.append(f"<defs><linearGradient id='{gradient}' x1='0' x2='1'>"
               + "".join(f"<stop offset='{x / 3:.2f}' stop-color='{_misestimate_colour(x)}'/>" for x, _ in _MISESTIMATE_STOPS)
               + "</linearGradient></defs>")  # fmt: skip
    out.append(f"<text x='0' y='{legend_y + 14}' font-size='{FONT}'>row misestimate:</text>"
               f"<rect x='110' y='{legend_y + 3}' width='180' height='14' fill='url(#{gradient})'/>"
               + "".join(f"<text x='{110 + 60 * k}' y='{legend_y + 32}' font-size='{FONT}' text-anchor='middle'>{10 ** k:,}x</text>"
                         for k in range(4))
               + f"<text x='310' y='{legend_y + 14}' font-size='{FONT}'>box width = share of the time</text></svg>")  # fmt: skip
    return "".join(out)


def index_tradeoff(df: pd.DataFrame, *, width: int = 420) -> alt.LayerChart:
    """Read speed-up vs write slow-down, bubble size = index size.

    ``df`` columns: ``index``, ``speedup``, ``write_ratio``, ``size_bytes`` (e.g. from
    :func:`tradeoff_frame`).
    """
    return _altair(index_tradeoff_spec(df, width=width))


def index_tradeoff_spec(df: pd.DataFrame, *, width: int = 420) -> dict[str, Any]:
    """:func:`index_tradeoff` as a Vega-Lite spec (a dict)."""
    q = "quantitative"
    encoding: dict[str, Any] = {
        "x": _field("write_ratio", q, title="insert time with / without the index (1 = free)", scale={"zero": False}),
        "y": _field("speedup", q, title="read speed-up (x, log scale)", scale={"type": "log"}),
    }
    points = {"mark": {"type": "circle", "opacity": 0.7}, "encoding": {
        **encoding, "size": _field("size_bytes", q, title="index size (bytes)"),
        "tooltip": [_field("index", "nominal"), _field("speedup", q, format=".2f"),
                    _field("write_ratio", q, format=".3f"), _field("size_bytes", q, format=",")],
    }}  # fmt: skip
    rows = _records(df)
    xs = [float(r["write_ratio"]) for r in rows if r.get("write_ratio") is not None]
    middle = (min(xs) + max(xs)) / 2 if xs else 1.0
    # every point says which index: left of the middle the name reads rightwards, right of it
    # leftwards, so no name runs off the plot into the legend
    labels: list[dict[str, Any]] = [{"transform": [{"filter": f"datum.write_ratio {op} {middle!r}"}],
               "mark": {"type": "text", "align": align, "dx": dx, "fontSize": FONT},
               "encoding": {**encoding, "text": _field("index", "nominal")}}
              for op, align, dx in (("<", "left", 9), (">=", "right", -9))]  # fmt: skip
    return _spec(rows, layer=[points, *labels], width=width, height=260,
                 title="index trade-off: what it buys vs what it costs")  # fmt: skip


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame's rows as plain Python values (numpy scalars are not JSON)."""
    return [{str(k): (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in df.to_dict("records")]


def page_latency(pages: dict[str, Comparison], *, width: int = 420) -> alt.Chart:
    """Median latency by page number for the two arms of each page's comparison (OFFSET vs keyset)."""
    return _altair(page_latency_spec(pages, width=width))


def page_latency_spec(pages: dict[str, Comparison], *, width: int = 420) -> dict[str, Any]:
    """:func:`page_latency` as a Vega-Lite spec (a dict)."""
    rows = [{"page": int(p), "arm": run.label, "median_ms": run.median_ms}
            for p, c in pages.items() for run in (c.baseline, c.treatment)]  # fmt: skip
    encoding = {
        "x": _field("page", "quantitative", title="page number (log scale)", scale={"type": "log"}),
        "y": _field("median_ms", "quantitative", title="median latency (ms)"),
        "color": _field("arm", "nominal", title=None, legend={"orient": "bottom", "labelLimit": LABEL_LIMIT}),
    }
    return _spec(rows, mark={"type": "line", "point": True}, encoding=encoding, width=width, height=220,
                 title="latency by page depth")  # fmt: skip


def tradeoff_frame(rows: list[tuple[str, Comparison, Any]]) -> pd.DataFrame:
    """``[(index name, its read Comparison, its IndexCost)]`` → the frame :func:`index_tradeoff` draws."""
    import pandas as pd

    return pd.DataFrame(
        [{"index": name, "speedup": c.verdict.ratio, "write_ratio": cost.write_ratio, "size_bytes": cost.size_bytes}
         for name, c, cost in rows]  # fmt: skip
    )


# ---- load runs (workbook.traffic) -------------------------------------------------------------
ERROR_COLOURS = {
    "too_many_clients": "#d62728", "pool_timeout": "#ff7f0e", "statement_timeout": "#9467bd",
    "lock_timeout": "#8c564b", "serialization_failure": "#e377c2", "deadlock": "#17becf",
    "connection_lost": "#7f7f7f", "skipped": "#bcbd22", "other": "#393b79",
}  # fmt: skip


def load_percentiles(runs: Sweep | list[LoadRun], *, width: int = 420) -> alt.Chart:
    """p50/p95/p99 latency against clients (one point per run of a sweep): where the tail bends."""
    import pandas as pd

    alt = _alt()
    items = runs.runs if hasattr(runs, "runs") else runs
    rows = [{"clients": r.clients, "percentile": k[:-3], "ms": v}
            for r in items for k, v in r.latency().items() if k in ("p50_ms", "p95_ms", "p99_ms")]  # fmt: skip
    df = pd.DataFrame(rows)
    mix = items[0].mix if items else ""
    return (
        alt.Chart(df).mark_line(point=True)
        .encode(x=alt.X("clients:Q", title="concurrent clients", scale=alt.Scale(type="log", base=2)),
                y=alt.Y("ms:Q", title="latency (ms, log)", scale=alt.Scale(type="log")),
                color=alt.Color("percentile:N", sort=["p50", "p95", "p99"], title=None),
                tooltip=[alt.Tooltip("clients:Q"), alt.Tooltip("percentile:N"), alt.Tooltip("ms:Q", format=".3f")])
        .properties(width=width, title=f"{mix}: latency percentiles vs clients")
    )  # fmt: skip


def _event_rules(run: LoadRun, events: list[tuple[float, str]] | None) -> pd.DataFrame:
    """The events to mark: every action (a replica added, a failover) and the first of each error
    kind per node ("primary: statement_timeout"), so a thousand timeouts draw one rule, not a wall."""
    import pandas as pd

    evs = run.events if events is None else events
    seen: set[str] = set()
    rows = []
    for t, label in sorted(evs):
        node, _, kind = label.partition(": ")
        if kind in ERROR_COLOURS:
            if label in seen:
                continue
            seen.add(label)
            label = f"first {kind} ({node})"
        rows.append({"t": float(t), "event": label})
    return pd.DataFrame(rows[:30], columns=["t", "event"])


def load_timeline(run: LoadRun, *, events: list[tuple[float, str]] | None = None, interval_s: float = 1.0,
                  width: int = 480) -> alt.VConcatChart:  # fmt: skip
    """TPS and p95 per interval, one above the other on the same time axis; events (a replica added,
    a failover, timeouts hit: ``run.events`` unless given) as vertical rules."""
    alt = _alt()
    tl = run.timeline(interval_s)
    ev = _event_rules(run, events)
    x = alt.X("t:Q", title="seconds into the run")
    panels = []
    for i, (field_, title) in enumerate((("tps", "transactions/s"), ("p95_ms", "p95 latency (ms)"))):
        line = alt.Chart(tl).mark_line(point=True).encode(
            x=x, y=alt.Y(f"{field_}:Q", title=title), tooltip=[alt.Tooltip("t:Q"), alt.Tooltip(f"{field_}:Q", format=",.2f")])
        layer = line
        if not ev.empty:
            rules = alt.Chart(ev).mark_rule(color="#d62728", strokeDash=[4, 3]).encode(
                x="t:Q", tooltip=[alt.Tooltip("t:Q", format=".2f"), alt.Tooltip("event:N")])
            layer = line + rules
            if i == 0:  # the labels once, at the top of the first panel
                labels = alt.Chart(ev).mark_text(align="left", baseline="top", dx=3, dy=2, fontSize=10, color="#d62728",
                                                 angle=0, limit=160).encode(x="t:Q", y=alt.value(0), text="event:N")  # fmt: skip
                layer = layer + labels
        panels.append(layer.properties(width=width, height=140))
    return alt.vconcat(*panels).properties(title=f"{run.mix} ({run.driver}, {run.clients} clients): TPS and p95 over time")


def load_errors(run: LoadRun, *, interval_s: float = 1.0, width: int = 480) -> alt.Chart:
    """Failed requests per interval, stacked by error class."""
    alt = _alt()
    df = run.errors_timeline(interval_s)
    classes = [c for c in ERROR_COLOURS if c in set(df["error_class"])] if not df.empty else []
    total = int(df["count"].sum()) if not df.empty else 0
    return (
        alt.Chart(df).mark_bar()
        .encode(x=alt.X("t:O", title="second of the run"), y=alt.Y("count:Q", title="failed requests", stack=True),
                color=alt.Color("error_class:N", title="error class",
                                scale=alt.Scale(domain=classes, range=[ERROR_COLOURS[c] for c in classes])),
                tooltip=[alt.Tooltip("t:Q"), alt.Tooltip("error_class:N"), alt.Tooltip("count:Q")])
        .properties(width=width, title=f"{run.mix}: {total} errors by class")
    )  # fmt: skip


def usl_fit(sweep: Sweep, *, width: int = 420) -> alt.LayerChart:
    """Measured throughput per client count, the fitted USL curve, and its projected peak."""
    import numpy as np
    import pandas as pd

    alt = _alt()
    pts = pd.DataFrame({"clients": [r.clients for r in sweep.runs], "tps": [r.tps for r in sweep.runs]})
    layers = [alt.Chart(pts).mark_point(filled=True, size=70, color="black").encode(
        x=alt.X("clients:Q", title="concurrent clients"), y=alt.Y("tps:Q", title="transactions/s"),
        tooltip=[alt.Tooltip("clients:Q"), alt.Tooltip("tps:Q", format=",.0f")])]
    title = f"{sweep.runs[0].mix if sweep.runs else ''}: Universal Scalability Law"
    subtitle = "not fitted (fewer than 3 client counts)"
    if sweep.usl is not None:
        u = sweep.usl
        top = max(pts["clients"].max() * 1.5, min(u.peak_clients * 1.3, pts["clients"].max() * 4)
                  if np.isfinite(u.peak_clients) else 0)  # fmt: skip
        n = np.linspace(1, top, 200)
        curve = pd.DataFrame({"clients": n, "tps": u.throughput(n)})
        layers.insert(0, alt.Chart(curve).mark_line(color=TREATMENT_COLOUR).encode(x="clients:Q", y="tps:Q"))
        if np.isfinite(u.peak_clients) and u.peak_clients <= top:
            peak = pd.DataFrame({"clients": [u.peak_clients], "tps": [u.peak_tps]})
            layers.append(alt.Chart(peak).mark_point(shape="diamond", size=120, color="#d62728").encode(
                x="clients:Q", y="tps:Q", tooltip=[alt.Tooltip("clients:Q", format=".1f"), alt.Tooltip("tps:Q", format=",.0f")]))
        hold = "" if sweep.holdout_error is None else f", held-out point off by {sweep.holdout_error:+.1%}"
        peak_text = f"peak {u.peak_tps:,.0f} TPS at {u.peak_clients:.0f} clients" if np.isfinite(u.peak_clients) else "no peak (κ = 0)"
        subtitle = f"σ = {u.sigma:.4f}, κ = {u.kappa:.6f}: {peak_text}{hold}"
    return alt.layer(*layers).properties(width=width, title={"text": title, "subtitle": subtitle})
