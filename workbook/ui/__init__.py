"""What the user sees: Altair charts of runs and comparisons, and the widget panels."""

from __future__ import annotations

from typing import Any

from .charts import (
    before_after,
    comparison_chart,
    index_tradeoff,
    latency_distribution,
    load_errors,
    load_percentiles,
    load_timeline,
    plan_frame,
    plan_view,
    svg,
    tradeoff_frame,
    usl_fit,
)  # fmt: skip


def show(chart: Any) -> Any:
    """Display a chart as static SVG (rendered in the kernel: works offline, headless and in any frontend)."""
    from IPython.display import SVG, display

    out = SVG(svg(chart))
    display(out)
    return None


__all__ = [
    "before_after", "comparison_chart", "index_tradeoff", "latency_distribution", "load_errors", "load_percentiles", "load_timeline",
    "plan_frame", "plan_view", "show", "svg", "tradeoff_frame", "usl_fit",
]  # fmt: skip
