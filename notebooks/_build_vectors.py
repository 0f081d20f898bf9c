"""The cells of notebook vectors: ``python notebooks/_build.py`` writes it (without outputs).

Kept apart from _build.py while both are edited; ``NOTEBOOKS`` here has the same shape as there
(name -> [(kind, source)]), so its entry can be merged into that file's dict unchanged. Cell ids
follow the same scheme: "<name>-<index:02d>".
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _build import OPEN, intro  # noqa: E402

NAME = "08_vectors_and_hybrid_search"

NOTEBOOKS = {
    NAME: [
        ("md", intro("Vectors and hybrid search: recall vs latency, filtered search, RRF, DuckDB beside PostgreSQL",
                     "search the sample app's document chunks exactly and through HNSW and IVFFlat indexes, inside one tenant, and fused with full-text search; then run the analytics queries on a DuckDB copy",
                     "how ef_search and probes trade recall for latency (measured against the exact answer), what an HNSW build needs from maintenance_work_mem, why a selective filter starves an approximate index unless iterative scans are on, how reciprocal rank fusion works in one SQL statement, and what a columnar copy gains and loses",
                     "00_start_here (or just run the first cell); 01_indexes explains what-if indexes", 10)),
        ("code", OPEN + "\nfrom workbook.lessons.vectors import ran\nfrom workbook.ui.vector_panel import VectorPanel, recall_latency_chart\n\nlesson = lab.lesson(\"vectors\")  # the same steps the report runs (workbook/lessons/vectors.py)\n# on a server without pgvector the vector steps print why they were not run (ran() is False); the columnar one runs"),
        ("md", "## Exact vs approximate: recall against latency\n\nThirty questions (each a chunk's vector moved a fixed random step off it) are answered exactly — a distance for every chunk, then a sort — and through an HNSW index at each `hnsw.ef_search` and an IVFFlat index at each `ivfflat.probes`. Both indexes are **what-ifs**: built in a transaction that is rolled back. `recall_at_10` is the share of the exact top-10 each answer holds, averaged over the questions."),
        ("code", "approx = lesson.step(\"exact_vs_approximate\")\nif ran(approx):\n    print(approx[\"indexes\"].to_string(index=False))\n    display(approx[\"sweep\"])"),
        ("code", "if ran(approx):\n    show(recall_latency_chart(approx[\"sweep\"]))"),
        ("md", "Read the `exact` row first: its `scan` is a **Seq Scan** and its `p50_ms` is the price of certainty. Then follow the HNSW rows down: each doubling of `ef_search` keeps more candidates, so recall climbs towards 1.0 and latency with it. The point to choose is the cheapest one above the recall your product needs — the lesson's figures call it `best_hnsw`."),
        ("md", "## What the HNSW graph costs to build\n\nThree builds with growing `m` / `ef_construction`, then the default build twice: with a `maintenance_work_mem` far too small for the graph and with one large enough."),
        ("code", "build = lesson.step(\"build_cost\")\nif ran(build):\n    print(build[\"parameters\"].to_string(index=False))\n    display(build[\"maintenance_work_mem\"])"),
        ("md", "The `notice` column is the server's own words: *hnsw graph no longer fits into maintenance_work_mem after N tuples*. From that tuple on, the build inserts into the on-disk graph, much more slowly. On 100k chunks (SF 1) with the default 64 MB that is the difference between minutes and seconds: set `maintenance_work_mem` for the session that builds the index."),
        ("md", "## Filtered search within a tenant\n\nThe app's real query has `WHERE org_id = ...`. The index returns its `ef_search` nearest candidates and only then does the filter drop other tenants' chunks. The index is forced (`enable_seqscan = off`) so you see what it does when the planner picks it, as it does on bigger tables; `planner_picks` shows its choice here."),
        ("code", "filtered = lesson.step(\"filtered_search\")\nif ran(filtered):\n    display(filtered[\"filtered\"][[\"wanted\", \"share\", \"iterative_scan\", \"rows_mean\", \"rows_min\", \"recall_at_10\", \"p50_ms\", \"exact_p50_ms\", \"planner_picks\"]])"),
        ("md", "At ~1% with `iterative_scan = off`, look at `rows_mean`: far fewer than the 10 asked for, usually none — silently, no error. `relaxed_order` and `strict_order` keep scanning the graph until 10 rows pass the filter. The alternatives for a tenant: a **partial** HNSW index holding only that tenant's chunks, or **pre-filtering** with a B-tree on `org_id` and exact distances over the tenant's rows:"),
        ("code", "if ran(filtered):\n    display(filtered[\"alternatives\"])"),
        ("md", "## Hybrid: full-text + vector, fused by reciprocal rank, in one statement\n\nOne SQL statement: a semantic branch (tenant B-tree, exact distances) and a keyword branch (GIN on `to_tsvector('english', content)`), both limited to the largest tenant's documents of the last 60 days, fused by `sum(1 / (60 + rank))`. Quality is measured against the generator's labels: 2 for the question's own cluster, 1 for its topic."),
        ("code", "hybrid = lesson.step(\"hybrid_search\")\nif ran(hybrid):\n    print(hybrid[\"timing\"].to_string(index=False))\n    display(hybrid[\"quality\"])"),
        ("md", "Compare the `ndcg_*` columns row by row: where one branch is weak (few keyword hits, or a vector that lands between clusters), the fused list keeps the other branch's good results near the top. The plans in `timing` show each branch on its own index."),
        ("md", "## Columnar beside relational: PostgreSQL vs a DuckDB copy\n\nThe analytics shapes (tokens by model, one tenant's usage per day) on PostgreSQL and on a DuckDB copy made with `workbook.dataset.to_duckdb`."),
        ("code", "columnar = lesson.step(\"columnar\")\nprint(columnar[\"analytics\"].to_string(index=False))\ncolumnar[\"freshness\"]"),
        ("md", "`same_answer` is checked value by value. `freshness` is the trade-off: a usage event written after the copy (in a rolled-back transaction) changes PostgreSQL's answer at once and the copy's not at all, until the next copy (`copy_s_to_catch_up`)."),
        ("md", "## What was measured\n\nThe figures this lesson's claims rest on — the same names `workbook report --lessons vectors --json` prints."),
        ("code", "result = lesson.result()  # stored with the lab's results\n{k: v for k, v in result.figures.items() if k in (\"best_hnsw\", \"filtered\", \"hnsw_build_s\", \"analytics_ms\", \"skipped\")}"),
        ("md", "## Summary\n\nAn approximate index answers top-10 in a fraction of an exact scan's time; how much recall that costs is a number you measure against the exact answer, and `ef_search` / `probes` move you along the curve. An HNSW build needs `maintenance_work_mem` large enough for its graph, and the server tells you when it is not. A selective filter after an approximate scan returns fewer rows than asked — often none — unless iterative scans (pgvector 0.8) are on; a partial index or pre-filtering with exact distances are the alternatives for a tenant. Keyword and vector search, and the app's relational filters, fit in one SQL statement. A columnar copy runs the analytics faster and is only as fresh as its last copy.\n\n**What's next:** the report (`workbook report --lessons vectors`), or back to `01_indexes` for the B-trees the pre-filter uses.\n\n**References:** pgvector README (*HNSW*, *IVFFlat*, *Iterative Index Scans*); PostgreSQL documentation, *Tables and Indexes* (full text search); *Resource Consumption* (`maintenance_work_mem`); *Partial Indexes*; *WITH Queries*."),
        ("md", "## On your own\n\nBoth iterative modes returned 10 rows at ~1%. Which one holds more of the **exact** top-10 there: `relaxed_order` (results may come slightly out of distance order) or `strict_order` (exact order, so it must stop scanning earlier)? Write your answer and run the cell: it measures both on twenty new questions."),
        ("code", "from workbook.lessons.vectors import measure_point\n\nanswer = \"strict_order\"  # your answer: \"relaxed_order\" or \"strict_order\"\nif ran(approx):\n    points = {mode: measure_point(lab.target, \"hnsw\", 40, selectivity=0.01, iterative=mode) for mode in (\"relaxed_order\", \"strict_order\")}\n    best = max(points, key=lambda m: points[m][\"recall_at_10\"])\n    print({m: p[\"recall_at_10\"] for m, p in points.items()})\n    print(\"right\" if answer == best else f\"not quite: {best} measured higher here\")"),
        ("md", "## Your turn\n\nPick a method, its setting, a tenant filter and an iterative-scan mode; **Run** measures one point and draws it (a black diamond) on the curve above."),
        ("code", "VectorPanel(lab.target, lab.store) if ran(approx) else None"),
    ],
}
