"""Query shapes and the planner: the planner is only as good as its row estimates, and the way a
query is written decides how much work is possible at all — OFFSET reads every row before the
page, N+1 pays a round trip per row, ``SELECT *`` defeats an index-only scan, an exact count reads
everything; and EXPLAIN ANALYZE's own clock inflates what it times.

Seed problem: queries generated for a demo (a feed with OFFSET, a conversation list in a loop)
that get slower as the tenant grows.

Figures: ``misestimate`` (row-estimate factor without/with extended statistics);
``keyset_vs_offset`` — per page number, keyset's speed-up over OFFSET (both with the index the
feed needs) and its 95% CI; ``comparisons`` for N+1 vs one JOIN, ``SELECT *`` vs narrow (with and
without the covering index) and exact vs estimated count; ``explain_clock`` — each EXPLAIN mode's
time over plain execution.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ._lesson import Lesson, Step, comparison_figures

if TYPE_CHECKING:
    import pandas as pd

    from ..experiment import Comparison
    from ..lab import Lab

FEED = "messages_feed_pagination"
PAGES = (1, 10, 100)
PAGE_SIZE = 20


def extended_statistics(lab: Lab) -> dict[str, Any]:
    """A conversation's user is always in the conversation's org: independent-column estimates are far off."""
    import pandas as pd

    from ..experiment import Statistics, explain

    query = "SELECT count(*) FROM ai_app.conversations WHERE org_id = %(org)s AND user_id = %(user)s"
    with lab.target.connect() as conn:
        # the user with the biggest share of their org's conversations: the pair where assuming
        # independent columns is most wrong (estimate = org's rows / users; actual = this user's rows)
        org, user = conn.execute(
            "SELECT c.org_id, c.user_id FROM ai_app.conversations c"
            " JOIN (SELECT org_id, count(*) AS n FROM ai_app.conversations GROUP BY 1) o USING (org_id)"
            " GROUP BY 1, 2, o.n HAVING count(*) >= 10 ORDER BY count(*)::float / o.n DESC, 1, 2 LIMIT 1"
        ).fetchone()  # type: ignore[misc]
        before = explain(conn, query, {"org": org, "user": user})
        with Statistics("ai_app.conversations", ["org_id", "user_id"]).applied(conn):
            after = explain(conn, query, {"org": org, "user": user})
    rows = []
    for label, plan in (("without", before), ("with extended statistics", after)):
        scan = plan.nodes[-1]
        rows.append({"statistics": label, "estimated_rows": scan.estimated_rows, "actual_rows": scan.actual_rows,
                     "misestimate": round(scan.misestimate or 1.0, 2), "node": scan.label})  # fmt: skip
    return {"summary": pd.DataFrame(rows), "plan without": before, "plan with extended statistics": after}


def _page_params(lab: Lab, page: int) -> dict[str, Any] | None:
    """Parameters for page ``page`` of the biggest tenant's feed (None when it has fewer pages)."""
    from ..dataset.samplers import org

    with lab.target.connect() as conn:
        params = org(conn, "hot", 0)
        offset = (page - 1) * PAGE_SIZE
        if page == 1:  # the first page has no previous row: a cursor past the newest row
            row = conn.execute("SELECT max(created_at) + interval '1 s', max(id) + 1 FROM ai_app.messages"
                               " WHERE org_id = %s", (params["org_id"],)).fetchone()  # fmt: skip
        else:
            row = conn.execute(
                "SELECT created_at, id FROM ai_app.messages WHERE org_id = %s"
                " ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET %s", (params["org_id"], offset - 1),
            ).fetchone()  # fmt: skip
    if row is None or row[0] is None:
        return None
    return {**params, "page_size": PAGE_SIZE, "offset": offset, "after_created_at": row[0], "after_id": int(row[1])}


def keyset_vs_offset(lab: Lab) -> dict[str, Comparison]:
    """Page 1, 10, 100 of a tenant's feed, OFFSET vs keyset, both with the (org_id, created_at, id) index."""
    from ..experiment import Arm, WhatIfIndex

    spec = lab.index("messages_org_created")
    out = {}
    for page in PAGES:
        params = _page_params(lab, page)
        if params is None:
            continue  # the tenant has fewer pages at this scale
        out[str(page)] = lab.compare(
            FEED,
            Arm("keyset + index", "keyset", (WhatIfIndex(spec),)),
            Arm("OFFSET + index", "offset", (WhatIfIndex(dataclasses.replace(spec, name=spec.name + "_b")),)),
            params=[params],
        )
    return out


def n_plus_one(lab: Lab) -> Comparison:
    """Thirty round trips against one statement, both with the index they need."""
    from ..experiment import Arm, Variant, WhatIfIndex

    spec = lab.index("messages_conversation_created")
    return lab.compare(
        "conversation_list_n_plus_one",
        Arm("one JOIN", knobs=(Variant("one_join"), WhatIfIndex(spec))),
        Arm("N+1", knobs=(WhatIfIndex(dataclasses.replace(spec, name=spec.name + "_b")),)),
    )


def star_vs_narrow(lab: Lab) -> dict[str, Comparison]:
    """``SELECT *`` vs the columns you need: nothing to gain without a covering index, an index-only scan with one."""
    from ..experiment import Arm, Variant, WhatIfIndex

    spec = lab.index("messages_conversation_covering")
    return {
        "without_covering_index": lab.compare("recent_messages_star_vs_narrow", Variant("narrow")),
        "with_covering_index": lab.compare(
            "recent_messages_star_vs_narrow",
            Arm("narrow + covering index", "narrow", (WhatIfIndex(spec),)),
            Arm("* + covering index", "star", (WhatIfIndex(dataclasses.replace(spec, name=spec.name + "_b")),)),
        ),
    }


def exact_vs_estimated_count(lab: Lab) -> Comparison:
    """``count(*)`` reads every row; the planner's estimate reads none (and is off by a little)."""
    from ..experiment import Variant

    return lab.compare("count_messages", Variant("estimate"))


def explain_clock(lab: Lab) -> pd.DataFrame:
    """The same count timed plainly, under EXPLAIN ANALYZE, and with per-node timing off."""
    from ..experiment import clock_distortion

    return clock_distortion(lab.target, "SELECT count(*) FROM ai_app.messages")


def _pages(outputs: dict[str, Any]) -> Any:
    from ..ui.charts import page_latency_spec as page_latency  # a dict: drawn without importing Altair

    return page_latency(outputs["keyset_vs_offset"])


def figures(outputs: dict[str, Any]) -> dict[str, Any]:
    stats = outputs["extended_statistics"]["summary"].to_dict("records")
    star = outputs["star_vs_narrow"]
    clock = {r["mode"]: round(float(r["vs_plain"]), 3) for r in outputs["explain_clock"].to_dict("records")}
    return {
        "misestimate": {"without": stats[0]["misestimate"], "with_extended_statistics": stats[1]["misestimate"]},
        "keyset_vs_offset": {page: {k: v for k, v in comparison_figures(c).items()}
                             for page, c in outputs["keyset_vs_offset"].items()},  # fmt: skip
        "comparisons": {
            "n_plus_one_vs_join": comparison_figures(outputs["n_plus_one"]),
            "narrow_vs_star_without_covering_index": comparison_figures(star["without_covering_index"]),
            "narrow_vs_star_with_covering_index": comparison_figures(star["with_covering_index"]),
            "estimated_vs_exact_count": comparison_figures(outputs["exact_vs_estimated_count"]),
        },
        "explain_clock": clock,
    }


LESSON = Lesson(
    name="planner",
    title="Query shapes and the planner: misestimates, pagination, N+1, SELECT *, counts, the EXPLAIN clock",
    claim="How a query is written decides how much work is possible: keyset reads one page where OFFSET reads "
          "every page before it, one JOIN beats a round trip per row, and the planner needs statistics that "
          "know correlated columns.",
    notebook="03_query_shapes_and_the_planner",
    steps=(
        Step("extended_statistics", "Misestimates and extended statistics",
             "org_id and user_id are correlated; the planner assumes they are not and expects far too few rows.",
             extended_statistics),
        Step("keyset_vs_offset", "OFFSET vs keyset, page by page",
             "Both arms have the (org_id, created_at DESC, id DESC) index; OFFSET still reads every row before the "
             "page, so its cost grows with the page number, keyset's does not.", keyset_vs_offset),
        Step("n_plus_one", "N+1 vs one JOIN",
             "Thirty round trips against one statement, both with the index they need.", n_plus_one),
        Step("star_vs_narrow", "SELECT * vs the columns you need",
             "Without a covering index both read the same heap pages; with one, the narrow query never visits the "
             "table.", star_vs_narrow),
        Step("exact_vs_estimated_count", "Exact count(*) vs the planner's estimate",
             "An exact count reads every row; the estimate from the statistics reads none.",
             exact_vs_estimated_count),
        Step("explain_clock", "The EXPLAIN ANALYZE clock",
             "Why the workbook times plain execution and uses the analyzed plan only to explain.", explain_clock),
    ),
    figures=figures,
    charts=lambda outputs: {"OFFSET vs keyset, page by page": _pages(outputs)},
    references=(
        ("Using EXPLAIN", "https://www.postgresql.org/docs/current/using-explain.html"),
        ("Statistics used by the planner", "https://www.postgresql.org/docs/current/planner-stats.html"),
        ("CREATE STATISTICS", "https://www.postgresql.org/docs/current/sql-createstatistics.html"),
        ("LIMIT and OFFSET", "https://www.postgresql.org/docs/current/queries-limit.html"),
    ),
)  # fmt: skip
