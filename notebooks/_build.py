"""Write the lesson notebooks (without outputs) from the cell lists below: python notebooks/_build.py

Each notebook opens the same way (what you'll do, learn, need, time); every code cell is a few
lines that call the library; every setup cell is safe to re-run.
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent
OPEN = "import workbook\nfrom workbook.ui import show, before_after, plan_view\n\nlab = workbook.open_lab()  # starts or attaches to the local cluster; loads the dataset if missing"


def intro(title: str, do: str, learn: str, need: str, minutes: int) -> str:
    return (f"# {title}\n\n**What you'll do:** {do}\n\n**What you'll learn:** {learn}\n\n"
            f"**What you need:** {need}\n\n**Time:** about {minutes} minutes at the default scale.")


NOTEBOOKS = {
    "00_start_here": [
        ("md", intro("Start here: the dataset, a first plan, and how to read it",
                     "start the local PostgreSQL, look at the sample AI app's tables, and read your first query plan",
                     "what an executed plan says (rows expected vs found, time per node, buffers) and how the workbook turns it into findings",
                     "nothing: the first cell starts everything (set `WORKBOOK_SCALE` for a bigger dataset)", 5)),
        ("code", OPEN),
        ("md", "## The dataset\n\nAn AI product's schema: organisations, users, conversations, messages with JSONB metadata, document chunks with embeddings, usage events. Primary and foreign keys, **no secondary index**: the state many apps ship in."),
        ("code", "lab.tables()"),
        ("md", "## A first plan\n\nThe app's most common read: the latest twenty messages of one conversation. `explain` runs it with `EXPLAIN (ANALYZE, BUFFERS ...)` inside a transaction that is rolled back."),
        ("code", "plan = lab.explain(\"conversation_latest_messages\")\nprint(plan.summary())\nplan.frame()[[\"node\", \"estimated_rows\", \"actual_rows\", \"misestimate\", \"exclusive_ms\", \"shared_hit\", \"shared_read\", \"rows_removed_by_filter\"]]"),
        ("md", "Read it bottom-up: the **Seq Scan** reads every message of every tenant and throws almost all of them away (`rows_removed_by_filter`), the **Sort** orders the few it kept, the **Limit** takes twenty. `exclusive_ms` is where the time went. The workbook's findings say the same in words:"),
        ("code", "from workbook.experiment import findings\n\nfor f in findings(plan):\n    print(f\"{f.rule}: {f.message}\\n  try: {f.knob}\")"),
        ("code", "show(plan_view(plan))"),
        ("md", "## The dataset panel\n\nChange the scale or the seed and load again (the load is one transaction: a failed load leaves the old data)."),
        ("code", "lab.dataset_panel()"),
    ],
    "01_indexes": [
        ("md", intro("Indexes: B-tree, composite column order, partial, covering — and what each costs",
                     "add the indexes a vibe-coded schema is missing, one at a time, and measure each",
                     "why column order decides whether a composite index avoids a sort, when a partial or covering index pays, and that every index is paid for on every insert",
                     "00_start_here (or just run the first cell)", 10)),
        ("code", OPEN + "\nfrom workbook.experiment import Arm, index_costs\nfrom workbook.ui import index_tradeoff, tradeoff_frame"),
        ("md", "## The missing foreign-key index\n\nEvery comparison below builds the index as a **what-if**: really built, really used, timed against the plain table in interleaved turns, then rolled back."),
        ("code", "fk = lab.compare(\"conversation_latest_messages\", lab.what_if(\"messages_conversation_id\"))\nprint(fk)\nshow(before_after(fk))"),
        ("md", "## Composite: column order decides\n\nEquality column first, then the ORDER BY column: the newest rows are the first index entries. The same two columns the other way round cannot do that."),
        ("code", "right = lab.compare(\"conversation_latest_messages\", lab.what_if(\"messages_conversation_created\"))\nwrong = lab.compare(\"conversation_latest_messages\", lab.what_if(\"messages_created_conversation\"))\nprint(right, wrong, sep=\"\\n\\n\")"),
        ("md", "## Partial: index only the rows you look for\n\nUnresolved negative feedback is a sliver of all messages; a partial index holds just that sliver."),
        ("code", "partial = lab.compare(\"unresolved_negative_feedback\", lab.what_if(\"messages_feedback_unresolved\"))\nprint(partial)"),
        ("md", "## Covering: answer from the index alone\n\nWith the narrow column list, `INCLUDE (role, token_count)` lets an index-only scan skip the table."),
        ("code", "covering = lab.compare(\"recent_messages_star_vs_narrow\", Arm(\"covering\", \"narrow\", (lab.what_if(\"messages_conversation_covering\"),)), Arm(\"narrow\", \"narrow\"))\nprint(covering)"),
        ("md", "## What each index costs\n\nSize, build time and how much slower the app's inserts get with it (measured in rolled-back transactions)."),
        ("code", "names = [\"messages_conversation_id\", \"messages_conversation_created\", \"messages_feedback_unresolved\", \"messages_conversation_covering\"]\nresults = {\"messages_conversation_id\": fk, \"messages_conversation_created\": right, \"messages_feedback_unresolved\": partial, \"messages_conversation_covering\": covering}\nrows = [(n, results[n], index_costs(lab.target, lab.index(n), rounds=2, reps=15)) for n in names]\ntradeoff_frame(rows)"),
        ("code", "show(index_tradeoff(tradeoff_frame(rows)))"),
        ("md", "## Your turn\n\nTick an index, press **Run**: the plan, the verdict and the DDL to keep it."),
        ("code", "lab.panel(\"conversation_latest_messages\")"),
    ],
    "02_jsonb_and_gin": [
        ("md", intro("JSONB and GIN: `@>` vs `->>`, `jsonb_path_ops` vs `jsonb_ops`, expression indexes",
                     "query the messages' JSONB metadata three ways and give each the index it can use",
                     "which operator each index serves, why `jsonb_path_ops` is smaller, and when an expression B-tree beats GIN",
                     "00_start_here", 10)),
        ("code", OPEN + "\nfrom workbook.experiment import Arm"),
        ("md", "## Containment `@>` vs key equality `->>`\n\nThe same question asked two ways. A GIN index serves `@>`; only an expression index serves `->>`."),
        ("code", "for variant in (\"containment\", \"key_equality\"):\n    print(variant, \"->\", lab.explain(\"messages_by_model\", variant, tier=\"cold\").summary())"),
        ("md", "A **rare** model (the `cold` tier) is where an index pays:"),
        ("code", "gin = lab.compare(\"messages_by_model\", Arm(\"GIN path_ops\", \"containment\", (lab.what_if(\"messages_metadata_gin_path\"),)), Arm(\"no index\", \"containment\"), tier=\"cold\")\nexpr = lab.compare(\"messages_by_model\", Arm(\"expression\", \"key_equality\", (lab.what_if(\"messages_model_expr\"),)), Arm(\"no index\", \"key_equality\"), tier=\"cold\")\nprint(gin, expr, sep=\"\\n\\n\")"),
        ("md", "For the model on most rows (`hot`), walking the primary key backwards finds fifty matches at once; the same index can make it slower:"),
        ("code", "hot = lab.compare(\"messages_by_model\", Arm(\"expression\", \"key_equality\", (lab.what_if(\"messages_model_expr\"),)), Arm(\"no index\", \"key_equality\"), tier=\"hot\")\nprint(hot)"),
        ("md", "## `jsonb_path_ops` vs `jsonb_ops`\n\nThe default operator class also indexes keys alone, so it serves `?` (key exists); `jsonb_path_ops` only serves `@>`, and is smaller."),
        ("code", "for name in (\"messages_metadata_gin_path\", \"messages_metadata_gin\"):\n    c = lab.compare(\"messages_with_feedback\", Arm(name, \"key_exists\", (lab.what_if(name),)), Arm(\"no index\", \"key_exists\"))\n    print(name, \"|\", c.verdict.text, \"|\", c.treatment.plan.summary(), \"|\", c.extra[\"index_costs\"][0][\"size_bytes\"], \"bytes\")"),
        ("md", "## Your turn"),
        ("code", "lab.panel(\"messages_by_model\")"),
    ],
    "03_query_shapes_and_the_planner": [
        ("md", intro("Query shapes and the planner: misestimates, statistics, pagination, N+1, counts, and the EXPLAIN clock",
                     "rewrite queries the way the planner likes them, and fix what the planner cannot know",
                     "how correlated columns fool the row estimate and extended statistics fix it; why OFFSET gets slower page by page; what N+1 costs; when an estimate is enough; how EXPLAIN ANALYZE's own clock distorts",
                     "00_start_here", 15)),
        ("code", OPEN + "\nfrom workbook.experiment import Arm, Statistics, Variant, explain\nfrom workbook.experiment.distortion import clock_distortion"),
        ("md", "## Misestimates and extended statistics\n\nA conversation's user always belongs to the conversation's org: the planner, assuming independent columns, multiplies their selectivities and expects far too few rows."),
        ("code", "query = \"SELECT count(*) FROM ai_app.conversations WHERE org_id = %(org)s AND user_id = %(user)s\"\nwith lab.target.connect() as conn:\n    org, user = conn.execute(\"SELECT org_id, user_id FROM ai_app.conversations GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1\").fetchone()\n    before = explain(conn, query, {\"org\": org, \"user\": user})\n    with Statistics(\"ai_app.conversations\", [\"org_id\", \"user_id\"]).applied(conn):\n        after = explain(conn, query, {\"org\": org, \"user\": user})\nprint(f\"misestimate without: {before.nodes[-1].misestimate:.1f}x, with extended statistics: {after.nodes[-1].misestimate:.1f}x\")"),
        ("md", "## OFFSET vs keyset pagination"),
        ("code", "print(lab.compare(\"messages_feed_pagination\", Variant(\"keyset\")))"),
        ("md", "## N+1 vs one JOIN\n\nThirty round trips against one statement, both with the index they need."),
        ("code", "import dataclasses\nspec = lab.index(\"messages_conversation_created\")\nfrom workbook.experiment import WhatIfIndex\nprint(lab.compare(\"conversation_list_n_plus_one\", Arm(\"one join\", knobs=(Variant(\"one_join\"), WhatIfIndex(spec))), Arm(\"n+1\", knobs=(WhatIfIndex(dataclasses.replace(spec, name=spec.name + \"_b\")),))))"),
        ("md", "## `SELECT *` vs the columns you need"),
        ("code", "print(lab.compare(\"recent_messages_star_vs_narrow\", Variant(\"narrow\")))"),
        ("md", "## Exact `count(*)` vs the planner's estimate"),
        ("code", "print(lab.compare(\"count_messages\", Variant(\"estimate\")))"),
        ("md", "## The EXPLAIN ANALYZE clock\n\nTimed three ways, interleaved: plain execution, EXPLAIN ANALYZE, and EXPLAIN ANALYZE without per-node timing. This is why the workbook times plain execution and uses the analyzed plan only to explain."),
        ("code", "clock_distortion(lab.target, \"SELECT count(*) FROM ai_app.messages\")"),
    ],
}


def build() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = nbf.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name}-{i:02d}"
        nbf.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    build()
