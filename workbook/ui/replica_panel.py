"""The replica panel: replica count, read routing, synchronous-commit level and clients, press Run:
the mix's TPS and p95 beside the runs before, and every replica's lag during the run; Cancel
stops a run within a second.

Like every panel it takes a target, a results store and (for the replica count and the
synchronous standbys) the local cluster, never the Lab; the measuring is the traffic engine's
(:func:`workbook.traffic.run_load`). The charts (:func:`scaling_chart`, :func:`lag_chart`) are the
replicas lesson's too.

The replica count is a real change of the local cluster (replicas are built with pg_basebackup
or removed) and stays after the run, as ``workbook up --replicas N`` would leave it. The
synchronous-commit level applies to the run only: the run's sessions set ``synchronous_commit``,
and for the levels that wait for replicas every replica is made a synchronous standby for the
run and the cluster's own setting is put back afterwards. On an external target the slider picks
how many of its replicas the run uses.
"""

from __future__ import annotations

import dataclasses
import html
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError
from .background import Background

if TYPE_CHECKING:
    import pandas as pd

    from ..cluster import LocalCluster, Target
    from ..results import ResultsStore
    from ..traffic import LoadRun

ROUTES = ("primary", "replicas", "all")
LEVELS = ("off", "local", "on", "remote_write", "remote_apply")
MIXES = ("read", "chat", "point")
_WAITS = ("on", "remote_write", "remote_apply")


def scaling_chart(rows: list[dict[str, Any]]) -> Any:
    """TPS and p95 per arm (``label``), with their 95% intervals where given (``tps_ci``, ``p95_ms_ci``)."""
    import altair as alt
    import pandas as pd

    def ci(r: dict[str, Any], key: str, i: int) -> float | None:
        v = r.get(key) or [None, None]
        return v[i] if v[i] is not None else r.get(key.removesuffix("_ci"))

    frame = pd.DataFrame([{"arm": r["label"], "tps": r["tps"] or 0.0, "p95_ms": r["p95_ms"] or 0.0,
                           "tps_lo": ci(r, "tps_ci", 0), "tps_hi": ci(r, "tps_ci", 1),
                           "p95_lo": ci(r, "p95_ms_ci", 0), "p95_hi": ci(r, "p95_ms_ci", 1)} for r in rows])  # fmt: skip
    base = alt.Chart(frame).encode(y=alt.Y("arm:N", title=None, sort=None))
    tps = base.mark_bar().encode(x=alt.X("tps:Q", title="transactions per second"),
                                 tooltip=["arm:N", alt.Tooltip("tps:Q", format=",.0f")])  # fmt: skip
    tps_err = base.mark_rule(color="black").encode(x="tps_lo:Q", x2="tps_hi:Q")
    p95 = base.mark_bar(color="#ff7f0e").encode(x=alt.X("p95_ms:Q", title="p95 latency (ms)"),
                                                tooltip=["arm:N", alt.Tooltip("p95_ms:Q", format=",.2f")])  # fmt: skip
    p95_err = base.mark_rule(color="black").encode(x="p95_lo:Q", x2="p95_hi:Q")
    return alt.hconcat((tps + tps_err).properties(width=220), (p95 + p95_err).properties(width=180)).properties(
        title="reads by replica count (black: 95% interval)")


def lag_chart(frame: pd.DataFrame, burst: tuple[float, float] | None = None, *, width: int = 460) -> Any:
    """Each replica's lag over time, bytes above seconds; the write burst (start, end) shaded."""
    import altair as alt
    import pandas as pd

    x = alt.X("t:Q", title="seconds")
    color = alt.Color("replica:N", title="replica")
    panels = []
    for field, title in (("lag_bytes", "lag (bytes of WAL)"), ("lag_seconds", "lag (seconds)")):
        data = frame.dropna(subset=[field]) if field in frame else frame.iloc[0:0]
        line = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
            # bytes as 20M, not 20,000,000: long tick labels ran into the axis title
            x=x, y=alt.Y(f"{field}:Q", title=title, axis=alt.Axis(format="~s") if field == "lag_bytes" else alt.Undefined),
            color=color,
            tooltip=["replica:N", alt.Tooltip("t:Q", format=".2f"), alt.Tooltip(f"{field}:Q", format=",.4g")])
        layer = line
        if burst is not None:
            band = pd.DataFrame([{"start": burst[0], "end": max(burst[1], burst[0] + 0.02), "what": "write burst"}])
            rect = alt.Chart(band).mark_rect(color="#d62728", opacity=0.12).encode(x="start:Q", x2="end:Q")
            label = alt.Chart(band).mark_text(align="left", baseline="top", dx=3, dy=2, color="#d62728", fontSize=10).encode(
                x="start:Q", y=alt.value(0), text="what:N")
            layer = rect + label + line
        panels.append(layer.properties(width=width, height=130))
    return alt.vconcat(*panels).properties(title="replica lag" + (" (shaded: the write burst)" if burst else ""))


def lag_frame(run: LoadRun) -> pd.DataFrame:
    """A load run's lag samples (the traffic monitor's, every 250 ms) as t, replica, lag_bytes, lag_seconds."""
    import pandas as pd

    s = run.samples
    if s is None or s.empty:
        return pd.DataFrame(columns=["t", "replica", "lag_bytes", "lag_seconds"])
    lag = s[s["metric"].isin(["lag_bytes", "lag_seconds"])]
    if lag.empty:
        return pd.DataFrame(columns=["t", "replica", "lag_bytes", "lag_seconds"])
    wide = lag.pivot_table(index=["t", "key"], columns="metric", values="value").reset_index()
    return wide.rename(columns={"key": "replica"})


def measure(target: Target, cluster: LocalCluster | None, *, replicas: int, route: str, sync: str, clients: int,
            duration_s: float = 3.0, mix: str = "read", store: ResultsStore | None = None,
            should_stop: Any = None) -> tuple[dict[str, Any], LoadRun]:  # fmt: skip
    """One run of ``mix`` with ``replicas`` replicas, reads routed by ``route``, the run's sessions at
    ``synchronous_commit = sync``: a row for the chart and the run."""
    from ..traffic import run_load

    if route not in ROUTES:
        raise WorkbookError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    if sync not in LEVELS:
        raise WorkbookError(f"synchronous commit must be one of {', '.join(LEVELS)}, got {sync!r}")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise WorkbookError(f"replicas must be a whole number >= 0, got {replicas!r}")
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise WorkbookError(f"clients must be at least 1, got {clients!r}")
    if route != "primary" and replicas == 0:
        raise WorkbookError(f"route {route!r} needs replicas; move the replica slider above 0 or route to the primary")
    notes: list[str] = []
    if cluster is not None:
        if replicas != len(target.replicas):
            cluster.up(replicas=replicas)
        target = cluster.target()
    elif replicas > len(target.replicas):
        raise WorkbookError(f"this target has {len(target.replicas)} replica(s), not {replicas}: add their DSNs "
                            "(WORKBOOK_REPLICA_DSNS) to use more")  # fmt: skip
    else:
        target = dataclasses.replace(target, replicas=target.replicas[:replicas])
    before = cluster.sync_commit() if cluster is not None else None
    if sync in _WAITS and cluster is not None and target.replicas:
        cluster.set_sync_commit("on", len(target.replicas))  # every replica a synchronous standby for the run
    elif sync in _WAITS and not target.replicas:
        notes.append(f"no replica: {sync} waits for no standby (as local)")
    try:
        run = run_load(target, mix, clients=clients, duration_s=duration_s, route=route,
                       session_settings={"synchronous_commit": sync}, should_stop=should_stop)  # fmt: skip
    finally:
        if before is not None and cluster is not None and cluster.sync_commit() != before:
            cluster.set_sync_commit(before["mode"], max(1, int(before.get("standbys") or 0)))
    if store is not None:
        run.save(store)
    d = run.as_dict()
    lat_ci = run.latency_ci()["p95_ms"]
    row = {"label": f"{mix}: {len(target.replicas)} replicas, {route}, {sync}, {clients} clients",
           "replicas": len(target.replicas), "route": route, "sync": sync, "clients": clients, "mix": mix,
           "tps": d["tps"], "p95_ms": d["p95_ms"], "p95_ms_ci": [round(x, 3) for x in lat_ci],
           "errors": d["errors"], "cancelled": run.cancelled, "notes": notes + list(run.notes)}  # fmt: skip
    return row, run


class ReplicaPanel(Background):
    """Replicas, routing, synchronous commit, clients, Run → TPS/p95 beside earlier runs, and lag."""

    def __init__(self, target: Target, store: ResultsStore | None = None, cluster: LocalCluster | None = None) -> None:
        import ipywidgets as w

        self.target, self.store, self.cluster = target, store, cluster
        self.rows: list[dict[str, Any]] = []
        self.last: LoadRun | None = None
        most = 4 if cluster is not None else len(target.replicas)
        self.replicas = w.IntSlider(value=min(len(target.replicas), most), min=0, max=most, description="replicas")
        self.route = w.ToggleButtons(options=ROUTES, value="all" if target.replicas else "primary", description="reads to")
        self.sync = w.Dropdown(options=LEVELS, value="on", description="sync commit")
        self.clients = w.IntSlider(value=6, min=1, max=64, description="clients")
        self.mix = w.Dropdown(options=MIXES, value="read", description="mix")
        self.duration = w.BoundedFloatText(value=3.0, min=0.5, max=60, step=0.5, description="seconds")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = w.Button(description="Cancel", icon="stop", disabled=True)
        self.status = w.HTML("")
        self.chart = w.HTML("")
        self.lag = w.HTML("")
        self.run_button.on_click(lambda _: self.run(background=True))
        self.cancel_button.on_click(lambda _: self.cancel())
        self.widget = w.VBox([w.HBox([self.replicas, self.route]), w.HBox([self.sync, self.mix]),
                              w.HBox([self.clients, self.duration, self.run_button, self.cancel_button]),
                              self.status, self.chart, self.lag])  # fmt: skip
        self.widget.add_class("workbook-replica-panel")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def run(self, *, background: bool = False) -> dict[str, Any] | None:
        """Measure with the chosen settings; the result joins the chart (None when it could not run)."""
        result: dict[str, Any] | None = self._start(background=background, name="workbook-replica-panel")
        return result

    def _run(self) -> dict[str, Any] | None:
        from .charts import svg

        self.run_button.disabled, self.cancel_button.disabled = True, False
        self.status.value = (f"{self.replicas.value} replica(s), reads to {html.escape(self.route.value)}, "
                             f"synchronous_commit {html.escape(self.sync.value)}: measuring...")  # fmt: skip
        try:
            row, run = measure(self.target, self.cluster, replicas=self.replicas.value, route=self.route.value,
                               sync=self.sync.value, clients=self.clients.value, duration_s=self.duration.value,
                               mix=self.mix.value, store=self.store, should_stop=lambda: self._stop)  # fmt: skip
        except Exception as exc:  # shown in the panel: a click must never fail silently in a thread
            text = str(exc) if isinstance(exc, WorkbookError) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            self.status.value = f"<span class='workbook-error' style='color:#b00'>error: {html.escape(text)}</span>"
            return None
        finally:
            self.run_button.disabled, self.cancel_button.disabled = False, True
        if self.cluster is not None:
            self.target = self.cluster.target()
        self.rows.append(row)
        self.last = run
        errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "no errors"
        notes = "".join(f"<br><i>{html.escape(n)}</i>" for n in row["notes"])
        self.status.value = (f"{html.escape(row['label'])}: {row['tps']:,.0f} TPS, p95 {row['p95_ms']} ms, "
                             f"{html.escape(errors)}" + (" (cancelled)" if row["cancelled"] else "") + notes)  # fmt: skip
        self.chart.value = svg(scaling_chart(self.rows))
        frame = lag_frame(run)
        self.lag.value = svg(lag_chart(frame)) if not frame.empty else "<i>no replica: no lag to show</i>"
        return row
