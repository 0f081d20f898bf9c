"""Altair charts of measurements: before/after, latency distributions, plan views, index trade-offs.

Each function takes the library's objects (a :class:`~workbook.experiment.Comparison`, a
:class:`~workbook.experiment.Plan`, a DataFrame of index costs) and returns an Altair chart, so a
notebook shows it, a report embeds it (``chart.to_html()`` / ``chart.save("x.svg")``), and tests
render it. No SQL here.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from ..experiment.plan import Plan, log_factor
from ..experiment.timing import bootstrap_median_ci

if TYPE_CHECKING:
    import altair as alt
    import pandas as pd

    from ..experiment.runs import Comparison, Run

BASELINE_COLOUR = "#8c8c8c"
TREATMENT_COLOUR = "#1f77b4"


# vl-convert lays text out with its own font metrics; a browser draws the same "sans-serif" text
# with its own font, measured here up to ~10 % (~30-50 px) wider (DejaVu Sans in Debian's Chromium), and an
# inline SVG clips what crosses its edge. The padding leaves room for that difference.
SVG_PADDING = {"left": 40, "right": 60, "top": 5, "bottom": 5}


def svg(chart: Any) -> str:
    """An Altair chart as SVG text (rendered by vl-convert, in this process: no JavaScript, no network)."""
    buf = io.StringIO()
    chart.properties(padding=SVG_PADDING).save(buf, format="svg")
    return buf.getvalue()


def _alt() -> Any:
    import altair as alt

    return alt


def _arm_rows(c: Comparison) -> list[tuple[str, Run, str]]:
    return [("baseline: " + c.baseline.label, c.baseline, BASELINE_COLOUR),
            ("treatment: " + c.treatment.label, c.treatment, TREATMENT_COLOUR)]  # fmt: skip


def before_after(c: Comparison, *, width: int = 420) -> alt.LayerChart:
    """Median latency of each arm, with the 95 % bootstrap interval as whiskers; the verdict as title."""
    import pandas as pd

    alt = _alt()
    rows = []
    for name, run, colour in _arm_rows(c):
        lo, hi = bootstrap_median_ci(run.samples_ms)
        rows.append({"arm": name, "median_ms": run.median_ms, "ci_low": lo, "ci_high": hi, "colour": colour,
                     "p95_ms": run.p95_ms, "plan": run.plan.summary() if run.plan else ""})  # fmt: skip
    df = pd.DataFrame(rows)
    base = alt.Chart(df).encode(y=alt.Y("arm:N", title=None, sort=None))
    bars = base.mark_bar().encode(
        x=alt.X("median_ms:Q", title="median latency (ms), 95% CI"),
        color=alt.Color("colour:N", scale=None),
        tooltip=["arm", alt.Tooltip("median_ms:Q", format=".3f"), alt.Tooltip("p95_ms:Q", format=".3f"), "plan"],
    )
    whiskers = base.mark_rule(strokeWidth=2, color="black").encode(x="ci_low:Q", x2="ci_high:Q")
    return (bars + whiskers).properties(
        width=width, title={"text": [f"{c.shape}:", c.verdict.text],  # two lines: a verdict with its interval is long
                            "subtitle": "interleaved repetitions" if c.interleaved else "sequential repetitions"}  # fmt: skip
    )


def latency_distribution(c: Comparison, *, width: int = 420) -> alt.LayerChart:
    """Every timed execution of both arms: box plot plus the individual samples (log scale)."""
    import pandas as pd

    alt = _alt()
    df = pd.DataFrame(
        [{"arm": name, "ms": ms} for name, run, _ in _arm_rows(c) for ms in run.samples_ms]
    )
    scale = alt.Scale(type="log")
    order = [name for name, _, _ in _arm_rows(c)]  # baseline above treatment, as in before_after (the box plot's aggregate reorders otherwise)
    box = alt.Chart(df).mark_boxplot(extent=1.5, opacity=0.5).encode(
        y=alt.Y("arm:N", title=None, sort=order), x=alt.X("ms:Q", scale=scale, title="latency per execution (ms, log)")
    )
    dots = alt.Chart(df).mark_tick(opacity=0.6).encode(y=alt.Y("arm:N", sort=order), x=alt.X("ms:Q", scale=scale))
    return (box + dots).properties(width=width, title=f"{c.shape}: latency distribution ({len(c.baseline.samples_ms)} runs each)")


def plan_frame(plan: Plan) -> pd.DataFrame:
    """Icicle layout: each node spans its share of its parent's time (or cost when not executed)."""
    import pandas as pd

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
    return pd.DataFrame(rows)


def plan_view(plan: Plan, *, width: int = 640, title: str | None = None) -> alt.LayerChart:
    """An icicle of the plan: width is time spent (inclusive), colour the row misestimate (log10)."""
    alt = _alt()
    df = plan_frame(plan)
    row_h = 34
    base = alt.Chart(df).encode(
        x=alt.X("x0:Q", axis=None, scale=alt.Scale(domain=[0, 1])), x2="x1:Q",
        y=alt.Y("depth:O", axis=None), tooltip=[
            "node", alt.Tooltip("exclusive_ms:Q", format=".3f"), alt.Tooltip("inclusive_ms:Q", format=".3f"),
            alt.Tooltip("estimated_rows:Q", format=",.0f"), alt.Tooltip("actual_rows:Q", format=",.0f"),
            alt.Tooltip("misestimate:Q", format=".1f"), "loops", "spilled",
        ],
    )  # fmt: skip
    rects = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color("log10_misestimate:Q", title="misestimate (log10 x)",
                        scale=alt.Scale(domain=[0, 3], range=["#d9ead3", "#fce5cd", "#cc0000"], clamp=True))  # fmt: skip
    )
    labels = base.mark_text(align="left", dx=3, fontSize=11, limit=width).encode(
        x="x0:Q", text="text:N"
    )
    heading = title or (f"plan: {plan.execution_ms:.3f} ms executed" if plan.analyzed else f"plan: cost {plan.total_cost:,.0f}")
    return (rects + labels).properties(width=width, height=row_h * (int(df["depth"].max()) + 1), title=heading)


def index_tradeoff(df: pd.DataFrame, *, width: int = 420) -> alt.Chart:
    """Read speed-up vs write slow-down, bubble size = index size.

    ``df`` columns: ``index``, ``speedup``, ``write_ratio``, ``size_bytes`` (e.g. from
    :func:`tradeoff_frame`).
    """
    alt = _alt()
    return (
        alt.Chart(df)
        .mark_circle(opacity=0.7)
        .encode(
            x=alt.X("write_ratio:Q", title="insert time with / without the index", scale=alt.Scale(zero=False)),
            y=alt.Y("speedup:Q", title="read speed-up (x, log)", scale=alt.Scale(type="log")),
            size=alt.Size("size_bytes:Q", title="index size (bytes)"),
            tooltip=["index", alt.Tooltip("speedup:Q", format=".2f"), alt.Tooltip("write_ratio:Q", format=".3f"),
                     alt.Tooltip("size_bytes:Q", format=",")],  # fmt: skip
        )
        .properties(width=width, title="index trade-off: what it buys vs what it costs")
    )


def tradeoff_frame(rows: list[tuple[str, Comparison, Any]]) -> pd.DataFrame:
    """``[(index name, its read Comparison, its IndexCost)]`` → the frame :func:`index_tradeoff` draws."""
    import pandas as pd

    return pd.DataFrame(
        [{"index": name, "speedup": c.verdict.ratio, "write_ratio": cost.write_ratio, "size_bytes": cost.size_bytes}
         for name, c, cost in rows]  # fmt: skip
    )
