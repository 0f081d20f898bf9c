"""The vector panel: pick a method, its ef_search / probes, a tenant filter and an iterative-scan
mode, press Run: one measured recall/latency point, drawn on the curve the vectors lesson measured.

Like every panel it takes a target and a results store, not the Lab; the measuring is
:func:`workbook.lessons.vectors.measure_point` (what-if indexes, rolled back: nothing is left).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cluster.target import Target
    from ..results import ResultsStore

PARAMS = {"hnsw": (10, 20, 40, 80, 160, 320), "ivfflat": (1, 2, 4, 8, 16, 32), "exact": ()}


def recall_latency_chart(sweep: Any, points: Sequence[dict[str, Any]] = ()) -> Any:
    """Recall@10 against p50 latency (log scale), one line per method: the curve every ANN benchmark
    draws. ``sweep``: the lesson's sweep (a DataFrame or its figures' list); ``points``: extra
    measured points (the panel's), drawn as large marks."""
    import altair as alt
    import pandas as pd

    frame = sweep if isinstance(sweep, pd.DataFrame) else pd.DataFrame(list(sweep))
    frame = frame[["method", "param", "recall_at_10", "p50_ms"]].copy()
    frame["label"] = frame["method"] + " " + frame["param"].astype("string").fillna("")
    base = alt.Chart(frame).encode(
        x=alt.X("p50_ms:Q", scale=alt.Scale(type="log"), title="p50 latency (ms, log)"),
        y=alt.Y("recall_at_10:Q", scale=alt.Scale(zero=False), title="recall@10"),
        color=alt.Color("method:N"),
        tooltip=["label:N", "recall_at_10:Q", "p50_ms:Q"],
    )
    chart = base.mark_line(point=True).encode(order="param:Q") + base.mark_text(dy=-9, fontSize=9).encode(text="label:N")
    if points:
        extra = pd.DataFrame(list(points))[["method", "recall_at_10", "p50_ms"]]
        chart = chart + alt.Chart(extra).mark_point(size=160, shape="diamond", filled=True, color="black").encode(
            x="p50_ms:Q", y="recall_at_10:Q", tooltip=["method:N", "recall_at_10:Q", "p50_ms:Q"]
        )
    return chart.properties(width=420, height=260, title="Recall vs latency (top-10)")


def latest_sweep(store: ResultsStore | None) -> list[dict[str, Any]]:
    """The sweep of the newest stored vectors lesson, or [] when none ran yet."""
    if store is None:
        return []
    stored = store.lessons()
    if stored.empty:
        return []
    mine = stored[stored["lesson"] == "vectors"].sort_values("created_at")
    if mine.empty:
        return []
    figures = mine["figures"].iloc[-1]
    figures = json.loads(figures) if isinstance(figures, str) else figures
    return list(figures.get("sweep", []))


class VectorPanel:
    """Method, ef_search / probes, tenant selectivity, iterative scans → a recall/latency point."""

    def __init__(self, target: Target, store: ResultsStore | None = None) -> None:
        import ipywidgets as w

        self.target, self.store = target, store
        self.points: list[dict[str, Any]] = []
        self.last: dict[str, Any] | None = None
        self.method = w.Dropdown(options=["hnsw", "ivfflat", "exact"], value="hnsw", description="method")
        self.param = w.Dropdown(options=PARAMS["hnsw"], value=40, description="ef_search")
        self.selectivity = w.Dropdown(
            options=[("all chunks", None), ("one tenant, ~1%", 0.01), ("one tenant, ~10%", 0.10), ("tenants, ~50%", 0.50)],
            value=None, description="filter",
        )  # fmt: skip
        self.iterative = w.Dropdown(options=["off", "relaxed_order", "strict_order"], value="off", description="iterative")
        self.button = w.Button(description="Run", button_style="primary")
        self.status = w.HTML()
        self.result = w.HTML()
        self.chart = w.HTML()
        self.method.observe(self._method_changed, names="value")
        self.button.on_click(lambda _: self.run())
        self.widget = w.VBox([w.HBox([self.method, self.param]), w.HBox([self.selectivity, self.iterative]),
                              self.button, self.status, self.result, self.chart])  # fmt: skip
        self._draw()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _method_changed(self, change: dict[str, Any]) -> None:
        method = change["new"]
        self.param.options = PARAMS[method] or (None,)
        self.param.value = {"hnsw": 40, "ivfflat": 4}.get(method)
        self.param.description = {"hnsw": "ef_search", "ivfflat": "probes"}.get(method, "—")
        if method == "ivfflat" and self.iterative.value == "strict_order":
            self.iterative.value = "relaxed_order"
        self.iterative.options = ["off", "relaxed_order"] if method == "ivfflat" else ["off", "relaxed_order", "strict_order"]

    def run(self) -> dict[str, Any] | None:
        """Measure the chosen point (what-if index built and rolled back) and draw it on the curve."""
        from ..lessons.vectors import measure_point

        self.status.value = "measuring (building the index as a what-if) ..."
        try:
            point = measure_point(self.target, self.method.value, self.param.value, selectivity=self.selectivity.value,
                                  iterative=self.iterative.value)  # fmt: skip
        except Exception as exc:  # the server's or the workbook's message; the what-if index is rolled back
            self.status.value = f"<span style='color:#b00'>{html.escape(' '.join(str(exc).split()))}</span> (nothing changed)"
            return None
        self.last = point
        self.points.append(point)
        self.status.value = "done; the index was rolled back"
        self.result.value = (
            f"<b>{html.escape(str(point['method']))} {point['param'] if point['param'] is not None else ''}</b>, "
            f"{point['selectivity']:.1%} of the chunks, iterative scans {html.escape(point['iterative_scan'])}: "
            f"recall@10 <b>{point['recall_at_10']:.3f}</b>, rows {point['rows_mean']:.1f} (min {point['rows_min']}), "
            f"p50 <b>{point['p50_ms']:.3f} ms</b> (exact {point['exact_p50_ms']:.3f} ms)"
        )
        self._draw()
        return point

    def _draw(self) -> None:
        from .charts import svg

        curve = latest_sweep(self.store)
        if not curve and not self.points:
            self.chart.value = "<i>run the vectors lesson (or press Run) to draw the curve</i>"
            return
        self.chart.value = svg(recall_latency_chart(curve or self.points, self.points))
