"""The pool panel: clients, pool size and a connection strategy, press Run: TPS, p95 and errors of
that strategy under that many clients, added to a chart beside the strategies measured before.

Strategies (the pooling lesson's arms): ``direct`` (a connection per client, no pool: past
``max_connections`` the server refuses them), ``psycopg_pool`` (a shared ``psycopg_pool`` of
``pool size`` connections), ``sqlalchemy`` (an engine with ``pool_size``, no overflow) and
``pgbouncer`` (the local cluster's PgBouncer in transaction mode: ``workbook up --pooler``).

Like every panel it takes a target and a results store, never the Lab; the measuring is the
traffic engine's (:func:`workbook.traffic.run_load`) and the pooling lesson's
(:func:`workbook.lessons.pooling.sqlalchemy_engine`).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError

if TYPE_CHECKING:
    from ..cluster.target import Target
    from ..results import ResultsStore

STRATEGIES = ("direct", "psycopg_pool", "sqlalchemy", "pgbouncer")


def measure_strategy(
    target: Target, strategy: str, *, clients: int, pool_size: int, duration_s: float = 2.0, mix: str = "read",
    store: ResultsStore | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One strategy under ``clients`` closed-loop clients: ``{"strategy", "clients", "pool_size", "tps",
    "p95_ms", "errors": {CLASS: N}}``. PgBouncer must be running (``workbook up --pooler``)."""
    from ..traffic import run_load

    if strategy not in STRATEGIES:
        raise WorkbookError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if clients < 1 or pool_size < 1:
        raise WorkbookError(f"clients and pool size must be at least 1, got {clients} and {pool_size}")
    if strategy == "sqlalchemy":
        from ..lessons.pooling import sqlalchemy_engine

        got = sqlalchemy_engine(target, mix=mix, clients=clients, pool_size=pool_size, duration_s=duration_s)
        return {"strategy": strategy, "clients": clients, "pool_size": pool_size, "tps": got["tps"],
                "p95_ms": got["p95_ms"], "errors": dict(got["errors"])}  # fmt: skip
    kwargs: dict[str, Any] = {"duration_s": duration_s, "allow_overload": True}
    if strategy == "direct":
        kwargs.update(driver="python")
    elif strategy == "psycopg_pool":
        kwargs.update(driver="python", pool_size=pool_size)
    else:
        if getattr(target, "pooler", None) is None:
            raise WorkbookError("PgBouncer is not running for this target: start it with 'workbook up --pooler "
                                f"--pool-size {pool_size}' (Debian: apt-get install pgbouncer)")  # fmt: skip
        target = target.through_pooler()
        kwargs.update(protocol="extended", monitor=False, route="primary")
    run = run_load(target, mix, clients=clients, **kwargs)
    if store is not None:
        run.save(store)
    out = run.as_dict()
    return {"strategy": strategy, "clients": clients, "pool_size": pool_size, "tps": out["tps"],
            "p95_ms": out["p95_ms"], "errors": dict(out["errors"])}  # fmt: skip


def strategies_chart(rows: list[dict[str, Any]]) -> Any:
    """TPS, p95 and errors of each measured strategy, side by side."""
    import altair as alt
    import pandas as pd

    frame = pd.DataFrame([{"run": f"{r['strategy']} ({r['clients']} clients, pool {r['pool_size']})",
                           "tps": r["tps"], "p95_ms": r["p95_ms"] or 0.0, "errors": sum(r["errors"].values())}
                          for r in rows])  # fmt: skip
    base = alt.Chart(frame).encode(y=alt.Y("run:N", title=None, sort=None))
    return alt.hconcat(
        base.mark_bar().encode(x=alt.X("tps:Q", title="transactions per second")).properties(width=200),
        base.mark_bar(color="#ff7f0e").encode(x=alt.X("p95_ms:Q", title="p95 latency (ms)")).properties(width=160),
        base.mark_bar(color="#b00").encode(x=alt.X("errors:Q", title="errors")).properties(width=120),
    ).properties(title="connection strategies under the same clients")


class PoolPanel:
    """Clients, pool size, strategy, Run → the strategy's TPS/p95/errors beside the earlier ones."""

    def __init__(self, target: Target, store: ResultsStore | None = None) -> None:
        import ipywidgets as w

        self.target, self.store = target, store
        self.rows: list[dict[str, Any]] = []
        self.clients = w.BoundedIntText(value=200, min=1, max=1000, description="clients")
        self.pool_size = w.BoundedIntText(value=50, min=1, max=500, description="pool size")
        self.strategy = w.Dropdown(options=STRATEGIES, value="psycopg_pool", description="strategy")
        self.duration = w.BoundedFloatText(value=2.0, min=0.5, max=60, step=0.5, description="seconds")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.status = w.HTML("")
        self.chart = w.HTML("")
        self.run_button.on_click(lambda _: self.run())
        self.widget = w.VBox([w.HBox([self.strategy, self.clients, self.pool_size, self.duration, self.run_button]),
                              self.status, self.chart])  # fmt: skip
        self.widget.add_class("workbook-pool-panel")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def run(self) -> dict[str, Any] | None:
        """Measure the chosen strategy; the result joins the chart (None when it could not run)."""
        from .charts import svg

        self.status.value = f"measuring {html.escape(self.strategy.value)}..."
        try:
            row = measure_strategy(self.target, self.strategy.value, clients=self.clients.value,
                                   pool_size=self.pool_size.value, duration_s=self.duration.value, store=self.store)  # fmt: skip
        except WorkbookError as exc:
            self.status.value = f"<span class='workbook-error' style='color:#b00'>error: {html.escape(str(exc))}</span>"
            return None
        self.rows.append(row)
        errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "no errors"
        self.status.value = (f"{html.escape(row['strategy'])}: {row['tps']:,.0f} TPS, p95 {row['p95_ms']} ms, "
                             f"{html.escape(errors)}")  # fmt: skip
        self.chart.value = svg(strategies_chart(self.rows))
        return row
