"""The report's "slow statements' plans": what auto_explain captured in the latest capture.

Rendered from the results store's ``slow_plans`` rows (``ResultsStore.slow_plans(latest=True)``):
one line per query shape (how many statements over the threshold, the slowest, its access path),
then the slowest few plans node by node and drawn with the plan view (width = cost, because the
capture's ``log_timing`` is off; colour = misestimate).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from ..experiment.findings import MISESTIMATE_FACTOR
from ..experiment.plan import Plan, parse_plan

if TYPE_CHECKING:
    import pandas as pd

DRAWN = 3  # plans drawn in full: each chart costs a render


def _nodes(plan: Plan) -> str:
    rows = []
    for n in plan.nodes:
        mis = n.misestimate
        cell = "<td class='num'>–</td>" if mis is None else (
            f"<td class='num{' mis' if mis >= MISESTIMATE_FACTOR else ''}'>{mis:,.1f}x "
            f"{html.escape(n.misestimate_direction or '')}</td>")  # fmt: skip
        removed = int(n.get("Rows Removed by Filter", 0) or 0) * max(n.loops, 1)
        rows.append(f"<tr><td>{'&nbsp;' * 4 * n.depth}{html.escape(n.label)}</td><td class='num'>{n.estimated_rows:,.0f}</td>"
                    f"<td class='num'>{(n.actual_rows or 0):,.0f}</td>{cell}<td class='num'>{removed:,}</td>"
                    f"<td class='num'>{n.get('Shared Hit Blocks', 0)}/{n.get('Shared Read Blocks', 0)}</td></tr>")  # fmt: skip
    return ("<table class='slow-plan'><tr><th>node</th><th>est. rows</th><th>actual rows</th><th>misestimate</th>"
            "<th>removed by filter</th><th>buffers hit/read</th></tr>" + "".join(rows) + "</table>")  # fmt: skip


def _draw(plan: Plan, title: str) -> str:
    from ..ui.charts import plan_svg

    return plan_svg(plan, title=title)


def slow_plans_section(frame: pd.DataFrame | None, *, drawn: int = DRAWN) -> str:
    """HTML for the latest capture's plans (``frame``: ``ResultsStore.slow_plans(latest=True)``)."""
    head = "<h2 id='slow-plans'>Slow statements' plans (auto_explain)</h2>"
    if frame is None or not len(frame):
        return head + ("<p>No plan captured: run a workload with auto_explain on (<code>workbook bench --mix read "
                       "--slow-plans 50</code>, or the observability lesson).</p>")  # fmt: skip
    rows = [{str(k): v for k, v in r.items()} for r in frame.to_dict("records")]
    first = rows[0]
    when = first["captured_at"].strftime("%Y-%m-%d %H:%M UTC") if first["captured_at"] is not None else "?"
    parts = [head, f"<p>{len(rows)} statements slower than {first['threshold_ms']:g} ms, captured by auto_explain during "
                   f"a workload ({html.escape(str(first['source']))}, {when}); log_analyze with timing off: rows and "
                   "buffers per node, no per-node times.</p>"]  # fmt: skip
    by_shape: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_shape.setdefault(r["shape"] or "(not a catalog shape)", []).append(r)
    parts.append("<table><tr><th>query shape</th><th>statements</th><th>slowest ms</th><th>access path</th></tr>" + "".join(
        f"<tr><td>{html.escape(shape)}</td><td class='num'>{len(rs)}</td><td class='num'>{rs[0]['duration_ms']:,.1f}</td>"
        f"<td><code>{html.escape(str(rs[0]['plan_summary']))}</code></td></tr>" for shape, rs in by_shape.items()) + "</table>")  # fmt: skip
    for shape, rs in list(by_shape.items())[:drawn]:  # the slowest statement of each of the slowest shapes
        r = rs[0]
        plan = parse_plan(r["plan"], sql=str(r["query"]))
        parts.append(f"<h3>{html.escape(shape)}: {r['duration_ms']:,.1f} ms on {html.escape(str(r['node']))}</h3>"
                     f"<pre class='ddl'>{html.escape(' '.join(str(r['query']).split())[:600])}</pre>{_nodes(plan)}"
                     + _draw(plan, f"{shape}: {r['duration_ms']:,.1f} ms (no per-node times: width = cost)"))  # fmt: skip
    return "".join(parts)
