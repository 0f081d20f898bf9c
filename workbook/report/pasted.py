"""The report of plans you bring: EXPLAIN output from production, read by
:mod:`workbook.experiment.plan_text`, rendered as the report renders the plans it measured.

One section per plan: what reading it showed (format, auto_explain, estimates only), the plan
table (estimated vs actual rows, misestimates, self time, buffers), the plan view, the findings,
the relations it reads with their conditions, and the ``workbook advise --sql`` command when the
paste held the query. Self-contained like the rest of the report: inline SVG, no script.
"""

from __future__ import annotations

import datetime as dt
import html

from ..cluster.target import redact_text
from ..errors import WorkbookError
from ..experiment.findings import findings
from ..experiment.plan import Plan
from ..experiment.plan_text import leads
from .html import _CSS, _plan_table, _svg


def pasted_plan_section(plan: Plan, i: int) -> str:
    """One plan you brought, as an HTML section."""
    from ..ui.charts import plan_view_spec

    lead = leads(plan)
    head = f"{plan.execution_ms:.3f} ms executed" if plan.execution_ms is not None else f"cost {plan.total_cost:,.2f}, estimates only"
    parts = [
        f"<section class='experiment pasted-plan' id='plan{i}'><h2>{i}. plan you brought: {html.escape(head)}</h2>",
        "<ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in plan.notes) + "</ul>",
        f"<p><code>{html.escape(plan.summary())}</code></p>{_plan_table(plan)}",
        _svg(plan_view_spec(plan, title="plan (width = time, colour = misestimate)")),
    ]
    found = findings(plan)
    if found:
        parts.append("<h3>findings</h3><ul>" + "".join(
            f"<li><b>{html.escape(f.rule)}</b>: {html.escape(f.message)} — <i>try {html.escape(f.knob)}</i></li>" for f in found
        ) + "</ul>")  # fmt: skip
    if lead["relations"]:
        rows = "".join(
            f"<tr><td>{html.escape(r['relation'])}</td><td>{html.escape(', '.join(dict.fromkeys(r['nodes'])))}</td>"
            f"<td>{'<br>'.join(html.escape(c) for c in r['conditions']) or '–'}</td></tr>"
            for r in lead["relations"]
        )
        parts.append(f"<h3>relations read</h3><table><tr><th>relation</th><th>how</th><th>conditions</th></tr>{rows}</table>")
    if lead["advise"]:
        parts.append("<p>to have indexes proposed and measured on your target:</p>"
                     f"<pre class='ddl'>{html.escape(lead['advise'])}</pre>")  # fmt: skip
    parts.append("</section>")
    return "\n".join(parts)


def render_plans(plans: list[Plan], *, title: str = "Plans you brought", dsns: list[str] | None = None) -> str:
    """A report of plans you brought, as one HTML string."""
    if not plans:
        raise WorkbookError("nothing to report: no plan was given")
    body = (f"<h1>{html.escape(title)}</h1><p class='sub'>generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} "
            f"from {len(plans)} plan(s) read from EXPLAIN output</p>"
            + "\n".join(pasted_plan_section(p, i) for i, p in enumerate(plans, 1)))  # fmt: skip
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>{body}</body></html>")  # fmt: skip
    return redact_text(doc, *(dsns or []))
