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
        ("code", OPEN + "\nfrom workbook.ui import index_tradeoff, tradeoff_frame\n\nlesson = lab.lesson(\"indexes\")  # the same steps the report runs (workbook/lessons/indexes.py)"),
        ("md", "## The missing foreign-key index\n\nEvery comparison below builds the index as a **what-if**: really built, really used, timed against the plain table in interleaved turns, then rolled back."),
        ("code", "fk = lesson.step(\"missing_fk_index\")\nprint(fk)\nshow(before_after(fk))"),
        ("md", "Look at the verdict's interval, not only its point: it is the range the speed-up lies in with 95% confidence. The plan after is an **Index Scan** — but a **Sort** remains: the index finds the conversation's rows, not in order."),
        ("md", "## Composite: column order decides\n\nEquality column first, then the ORDER BY column: the newest rows are the first index entries. The same two columns the other way round cannot do that."),
        ("code", "composite = lesson.step(\"composite_order\")\nfor name, c in composite.items():\n    print(name, \"|\", c.verdict.text, \"|\", c.treatment.plan.summary())"),
        ("md", "## Partial: index only the rows you look for\n\nUnresolved negative feedback is a sliver of all messages; a partial index holds just that sliver."),
        ("code", "print(lesson.step(\"partial_index\"))"),
        ("md", "## Covering: what INCLUDE adds\n\nBoth arms have an index on (conversation_id, created_at, id); the covering one also carries `role` and `token_count`, so an **Index Only Scan** can skip the table. Compare the two plans: at this size the heap visits are cheap, so look at the interval before believing a difference."),
        ("code", "covering = lesson.step(\"covering_index\")\nprint(covering)"),
        ("md", "## What each index costs\n\nSize, build time and how much slower the app's inserts get with it (measured in alternating rolled-back transactions)."),
        ("code", "costs = lesson.step(\"write_costs\")\ncosts"),
        ("md", "## What was measured\n\nThe figures this lesson's claims rest on — the same names `workbook report --lessons indexes --json` prints."),
        ("code", "result = lesson.result()  # stored with the lab's results\nresult.figures[\"recommended\"], result.figures[\"comparisons\"][\"messages_conversation_created\"]"),
        ("md", "## Summary\n\nA foreign key is not an index: the missing one made every conversation read scan every tenant's messages. A composite index with the equality column first and the ORDER BY column next answers \"the latest twenty\" from its first entries; the same columns in the other order cannot. A partial index serves a rare predicate at a fraction of the size. Every index is maintained on every insert: read the write cost before you keep one.\n\n**What's next:** `02_jsonb_and_gin` — indexes for the JSONB metadata.\n\n**References:** PostgreSQL documentation, *Indexes*; *Multicolumn Indexes*; *Partial Indexes*; *Index-Only Scans and Covering Indexes*."),
        ("md", "## Your turn\n\nTick an index, press **Run**: the plan, the verdict and the DDL to keep it."),
        ("code", "lab.panel(\"conversation_latest_messages\")"),
        ("md", "## On your own\n\nThe audit screen lists one user's recent actions (`audit_by_actor`). Which candidate index from `lab.indexes_for(\"audit_by_actor\")` makes it fast? Put its name below; the next cell measures it and says whether it made the difference."),
        ("code", "my_index = \"audit_actor_time\"  # your answer: try the other candidates too\nprint(lab.check(\"audit_by_actor\", index=my_index))"),
    ],
    "02_jsonb_and_gin": [
        ("md", intro("JSONB and GIN: `@>` vs `->>`, `jsonb_path_ops` vs `jsonb_ops`, expression indexes",
                     "query the messages' JSONB metadata three ways and give each the index it can use",
                     "which operator each index serves, why `jsonb_path_ops` is smaller, and when an expression B-tree beats GIN",
                     "00_start_here", 10)),
        ("code", OPEN + "\n\nlesson = lab.lesson(\"jsonb\")  # the same steps the report runs (workbook/lessons/jsonb.py)"),
        ("md", "## Containment `@>` vs key equality `->>`\n\nThe same question asked two ways. A GIN index serves `@>`; only an expression index serves `->>`."),
        ("code", "for variant, plan in lesson.step(\"two_ways\").items():\n    print(variant, \"->\", plan.summary())"),
        ("md", "A **rare** model (the `cold` tier) is where an index can pay. Read each verdict with its plan: the expression index is used; for `@>` the planner may keep walking the primary key (`ORDER BY id DESC LIMIT`) instead of the GIN index, and then the GIN index buys nothing."),
        ("code", "rare = lesson.step(\"rare_value\")\nfor name, c in rare.items():\n    print(name, \"|\", c.verdict.text, \"|\", c.treatment.plan.summary())"),
        ("md", "For the model on most rows (`hot`), walking the primary key backwards finds fifty matches at once; the same index can make it slower:"),
        ("code", "print(lesson.step(\"common_value\"))"),
        ("md", "## `jsonb_path_ops` vs `jsonb_ops`\n\nThe default operator class also indexes keys alone, so it serves `?` (key exists); `jsonb_path_ops` only serves `@>`, and is smaller."),
        ("code", "for name, c in lesson.step(\"operator_classes\").items():\n    print(name, \"|\", c.verdict.text, \"|\", c.treatment.plan.summary(), \"|\", c.extra[\"index_costs\"][0][\"size_bytes\"], \"bytes\")"),
        ("md", "## What was measured"),
        ("code", "result = lesson.result()\nresult.figures[\"comparisons\"]"),
        ("md", "## Summary\n\nAn index serves an operator, not a column. Equality on one extracted key (`->> 'model' = ...`) needs an expression B-tree. The default `jsonb_ops` GIN serves key existence (`?`); `jsonb_path_ops` is smaller but serves only containment (`@>`) — and whether the planner uses it depends on the query: with `ORDER BY id DESC LIMIT` it may walk the primary key instead. For a value most rows have, an index makes the query slower.\n\n**What's next:** `03_query_shapes_and_the_planner`.\n\n**References:** PostgreSQL documentation, *JSON Types* (jsonb Indexing); *GIN Indexes*; *Indexes on Expressions*."),
        ("md", "## Your turn"),
        ("code", "lab.panel(\"messages_by_model\")"),
        ("md", "## On your own\n\nMessages with feedback are found by `metadata ? 'feedback'` (the `key_exists` variant of `messages_with_feedback`). Which GIN operator class serves it? Put the candidate's name below and check."),
        ("code", "my_index = \"messages_metadata_gin\"  # your answer: messages_metadata_gin or messages_metadata_gin_path?\nprint(lab.check(\"messages_with_feedback\", index=my_index, variant=\"key_exists\"))"),
    ],
    "03_query_shapes_and_the_planner": [
        ("md", intro("Query shapes and the planner: misestimates, statistics, pagination, N+1, counts, and the EXPLAIN clock",
                     "rewrite queries the way the planner likes them, and fix what the planner cannot know",
                     "how correlated columns fool the row estimate and extended statistics fix it; why OFFSET gets slower page by page; what N+1 costs; when an estimate is enough; how EXPLAIN ANALYZE's own clock distorts",
                     "00_start_here", 15)),
        ("code", OPEN + "\n\nlesson = lab.lesson(\"planner\")  # the same steps the report runs (workbook/lessons/planner.py)"),
        ("md", "## Misestimates and extended statistics\n\nA conversation's user always belongs to the conversation's org: the planner, assuming independent columns, multiplies their selectivities and expects far too few rows."),
        ("code", "stats = lesson.step(\"extended_statistics\")\nstats[\"summary\"]"),
        ("md", "## OFFSET vs keyset, page by page\n\nBoth arms have the index the feed needs. OFFSET still reads every row before the page: watch keyset's advantage grow with the page number."),
        ("code", "pages = lesson.step(\"keyset_vs_offset\")\nfor page, c in pages.items():\n    print(f\"page {page:>4}: {c.verdict.text}\")"),
        ("md", "## N+1 vs one JOIN\n\nThirty round trips against one statement, both with the index they need."),
        ("code", "print(lesson.step(\"n_plus_one\"))"),
        ("md", "## `SELECT *` vs the columns you need\n\nWithout a covering index both read the same pages; with one, the narrow query is an index-only scan."),
        ("code", "for name, c in lesson.step(\"star_vs_narrow\").items():\n    print(name, \"|\", c.verdict.text)"),
        ("md", "## Exact `count(*)` vs the planner's estimate"),
        ("code", "print(lesson.step(\"exact_vs_estimated_count\"))"),
        ("md", "## The EXPLAIN ANALYZE clock\n\nTimed three ways, interleaved: plain execution, EXPLAIN ANALYZE, and EXPLAIN ANALYZE without per-node timing. This is why the workbook times plain execution and uses the analyzed plan only to explain."),
        ("code", "lesson.step(\"explain_clock\")"),
        ("md", "## What was measured"),
        ("code", "result = lesson.result()\nresult.figures[\"keyset_vs_offset\"], result.figures[\"misestimate\"]"),
        ("md", "## Summary\n\nThe planner is only as good as its row estimates: correlated columns need extended statistics. How a query is written bounds the work: OFFSET reads every row before the page, N+1 pays a round trip per row, `SELECT *` defeats an index-only scan, and an exact count reads the table. Time queries plainly; use EXPLAIN ANALYZE to explain, not to time.\n\n**What's next:** `04_transactions_and_integrity` — constraints, races and the ORM.\n\n**References:** PostgreSQL documentation, *Using EXPLAIN*; *Statistics Used by the Planner*; *CREATE STATISTICS*; *LIMIT and OFFSET*."),
        ("md", "## On your own\n\nThe dashboard shows how many messages a tenant has (`count_messages`). Which way of writing it avoids reading every row? Put the variant's name below (see `lab.shape(\"count_messages\").variants`); the next cell measures it against the exact count."),
        ("code", "my_variant = \"estimate\"  # your answer\nprint(lab.check(\"count_messages\", variant=my_variant))"),
    ],
}


def all_notebooks() -> dict[str, list[tuple[str, str]]]:
    """Every notebook of the series: the ones above, and those whose cells live in their own file
    beside this one (``_build_transactions.py``, ``_build_pooling.py`` ...), in series order."""
    import importlib
    import sys

    sys.path.insert(0, str(HERE))
    out = dict(NOTEBOOKS)
    for module in ("_build_transactions", "_build_replicas", "_build_pooling", "_build_observability", "_build_vectors"):
        out.update(importlib.import_module(module).NOTEBOOKS)
    return dict(sorted(out.items()))


def build(out: Path = HERE, only: list[str] | None = None) -> None:
    """Write every notebook (or the ``only`` ones) into ``out``, without outputs."""
    for name, cells in all_notebooks().items():
        if only is not None and name not in only:
            continue
        nb = nbf.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name}-{i:02d}"
        nbf.write(nb, out / f"{name}.ipynb")


if __name__ == "__main__":
    build()
