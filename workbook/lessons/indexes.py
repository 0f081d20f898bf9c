"""Indexes: the right B-tree turns a scan of every tenant's messages into a read of twenty rows,
column order decides whether it does, and every index is paid for on every insert.

Seed problem: an AI app shipped with primary and foreign keys and no secondary index; "open a
conversation" scans the whole messages table. Each step builds an index as a what-if (really
built, really used, rolled back) and times the app's query with and without it, interleaved.

Figures: ``comparisons`` — per index, the read speed-up with its 95% CI and the insert slow-down
(``write_cost``, insert time with / without) with its CI; ``recommended`` — per query shape,
the fastest index whose speed-up is significant and whose write cost does not outweigh it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ._lesson import Lesson, Step, comparison_figures

if TYPE_CHECKING:
    import pandas as pd

    from ..experiment import Comparison
    from ..lab import Lab

LATEST = "conversation_latest_messages"


def missing_fk_index(lab: Lab) -> Comparison:
    """The foreign key every conversation read filters on, without its index, then with it."""
    return lab.compare(LATEST, lab.what_if("messages_conversation_id"))


def composite_order(lab: Lab) -> dict[str, Comparison]:
    """(conversation_id, created_at DESC) serves "the latest twenty"; (created_at, conversation_id) cannot."""
    return {
        "messages_conversation_created": lab.compare(LATEST, lab.what_if("messages_conversation_created")),
        "messages_created_conversation": lab.compare(LATEST, lab.what_if("messages_created_conversation")),
    }


def partial_index(lab: Lab) -> Comparison:
    """Unresolved negative feedback is a sliver of all messages: a partial index holds only that sliver."""
    return lab.compare("unresolved_negative_feedback", lab.what_if("messages_feedback_unresolved"))


def covering_index(lab: Lab) -> Comparison:
    """What ``INCLUDE (role, token_count)`` adds over the plain composite: an index-only scan."""
    from ..experiment import Arm, WhatIfIndex

    plain = lab.index("messages_conversation_created")
    plain = dataclasses.replace(plain, name=plain.name + "_plain")  # its own name: both arms build one at once
    return lab.compare(
        "recent_messages_star_vs_narrow",
        Arm("covering index (INCLUDE role, token_count)", "narrow", (lab.what_if("messages_conversation_covering"),)),
        Arm("plain composite index", "narrow", (WhatIfIndex(plain),)),
    )


def write_costs(lab: Lab) -> pd.DataFrame:
    """Each index's size, build time and insert slow-down, in alternating rolled-back transactions."""
    import pandas as pd

    from ..experiment import index_costs

    rows = []
    for name in INDEXES:
        cost = index_costs(lab.target, lab.index(name), rounds=4, reps=10)
        lo, hi = cost.write_ci or (None, None)
        rows.append({"index": name, "size_bytes": cost.size_bytes, "build_seconds": cost.build_seconds,
                     "write_cost": cost.write_ratio, "write_cost_ci_low": lo, "write_cost_ci_high": hi})  # fmt: skip
    return pd.DataFrame(rows)


INDEXES = (
    "messages_conversation_id", "messages_conversation_created", "messages_created_conversation",
    "messages_feedback_unresolved", "messages_conversation_covering",
)  # fmt: skip


def _read_comparisons(outputs: dict[str, Any]) -> dict[str, tuple[str, Comparison]]:
    """index name -> (query shape, the comparison that measured it)."""
    comp = outputs["composite_order"]
    return {
        "messages_conversation_id": (LATEST, outputs["missing_fk_index"]),
        "messages_conversation_created": (LATEST, comp["messages_conversation_created"]),
        "messages_created_conversation": (LATEST, comp["messages_created_conversation"]),
        "messages_feedback_unresolved": ("unresolved_negative_feedback", outputs["partial_index"]),
        "messages_conversation_covering": ("recent_messages_star_vs_narrow", outputs["covering_index"]),
    }


def _tradeoff(outputs: dict[str, Any]) -> Any:
    import pandas as pd

    from ..ui.charts import index_tradeoff_spec as index_tradeoff  # a dict: drawn without importing Altair

    costs = {r["index"]: r for r in outputs["write_costs"].to_dict("records")}
    rows = [{"index": name, "speedup": c.verdict.ratio, "write_ratio": costs[name]["write_cost"],
             "size_bytes": costs[name]["size_bytes"]} for name, (_, c) in _read_comparisons(outputs).items()]  # fmt: skip
    return index_tradeoff(pd.DataFrame(rows))


def figures(outputs: dict[str, Any]) -> dict[str, Any]:
    costs = {r["index"]: r for r in outputs["write_costs"].to_dict("records")}
    comparisons: dict[str, Any] = {}
    best: dict[str, tuple[float, str]] = {}
    for name, (shape, c) in _read_comparisons(outputs).items():
        cost = costs.get(name, {})
        comparisons[name] = {
            **comparison_figures(c), "shape": shape,
            "write_cost": cost.get("write_cost"), "write_cost_ci_low": cost.get("write_cost_ci_low"),
            "write_cost_ci_high": cost.get("write_cost_ci_high"), "size_bytes": cost.get("size_bytes"),
        }  # fmt: skip
        # recommended: significantly faster, and the read gain outweighs the insert cost's upper bound
        worth = c.verdict.kind == "faster" and c.verdict.ratio > (cost.get("write_cost_ci_high") or 1.0)
        if worth and c.verdict.ratio > best.get(shape, (0.0, ""))[0]:
            best[shape] = (c.verdict.ratio, name)
    return {"comparisons": comparisons, "recommended": sorted(name for _, name in best.values())}


LESSON = Lesson(
    name="indexes",
    title="Indexes: B-tree, composite column order, partial, covering — and what each costs",
    claim="The right index turns a scan of every tenant's messages into a read of a few rows; the wrong column "
          "order buys much less; and every index is maintained on every insert: its write cost is measured with "
          "its interval (at this scale often within the noise, which is the honest answer).",
    notebook="01_indexes",
    steps=(
        Step("missing_fk_index", "The missing foreign-key index",
             "messages.conversation_id has a foreign key but no index: every read of a conversation scans the table.",
             missing_fk_index),
        Step("composite_order", "Composite: column order decides",
             "Equality column first, then the ORDER BY column: the newest rows are the first index entries. "
             "The same columns the other way round cannot do that.", composite_order),
        Step("partial_index", "Partial: index only the rows you look for",
             "Unresolved negative feedback is a sliver of all messages; a partial index holds just that sliver.",
             partial_index),
        Step("covering_index", "Covering: what INCLUDE adds",
             "Both arms have the composite index; INCLUDE (role, token_count) lets an index-only scan skip the table.",
             covering_index),
        Step("write_costs", "What each index costs",
             "Size, build time and how much slower the app's inserts get with it (rolled-back transactions).",
             write_costs),
    ),
    figures=figures,
    charts=lambda outputs: {"What each index buys and costs": _tradeoff(outputs)},
    references=(
        ("Indexes", "https://www.postgresql.org/docs/current/indexes.html"),
        ("Multicolumn indexes", "https://www.postgresql.org/docs/current/indexes-multicolumn.html"),
        ("Partial indexes", "https://www.postgresql.org/docs/current/indexes-partial.html"),
        ("Index-only scans and covering indexes", "https://www.postgresql.org/docs/current/indexes-index-only-scans.html"),
    ),
)  # fmt: skip
