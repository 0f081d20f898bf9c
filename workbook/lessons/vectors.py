"""Vectors and hybrid search: an approximate index answers top-10 in a fraction of an exact scan's
time at a recall you measure, not assume; a selective filter silently starves it unless iterative
scans are on; keywords, vectors and relational filters fuse in one SQL statement; and the
analytics queries beside them run faster on a columnar copy that is only as fresh as its copy.

Seed problem: a RAG pipeline that spent 3 s per request in retrieval, and a team about to add a
separate vector database before measuring what PostgreSQL + pgvector does with the right index.

Every index here is a what-if (built in a transaction that is rolled back); every figure comes
from queries run in this lesson: the questions are stored chunks' vectors moved a fixed random
step off them (:func:`move`), recall is computed against the exact answer to the same questions,
latencies are client round trips of prepared statements (median and p95 over every question and
round), and the labels for hybrid quality are the generator's own (topic, sub-cluster) of each
chunk's document.

Figures: ``exact_p50_ms``; ``sweep`` — per HNSW ``ef_search`` and IVFFlat ``probes`` value,
``recall_at_10`` and ``p50_ms``; ``best_hnsw`` — the smallest ``ef_search`` with recall@10 ≥ 0.95
and its speed-up over the exact scan; ``hnsw_build_s`` (``small_mwm``, ``large_mwm``) and
``hnsw_build`` (the memory settings, the server's notice, the slow-down); ``filtered`` — at the
selectivity nearest 1%, rows returned and recall without and with iterative scans;
``filtered_alternatives`` (partial index, pre-filtering); ``hybrid`` — precision@10 and graded
nDCG@10 of the vector branch, the keyword branch and their fusion, and the fused query's latency; ``analytics_ms`` (``postgres``,
``duckdb``), ``analytics_same_answers``, ``duckdb_copy_s``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import WorkbookError
from ._lesson import Lesson, Step

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

    from ..cluster.target import Target
    from ..lab import Lab

K = 10  # top-k of every vector query
N_QUERIES = 30  # query vectors per setting
ROUNDS = 3  # timed passes over the query vectors per setting
EF_SEARCH = (10, 20, 40, 80, 160)
PROBES = (1, 2, 4, 8, 16)
SELECTIVITIES = (0.01, 0.10, 0.50)
ITERATIVE = ("off", "relaxed_order", "strict_order")
BUILD_PARAMS = ((8, 32), (16, 64), (32, 128))  # (m, ef_construction)
SMALL_MWM_KB = 1024  # a maintenance_work_mem the graph does not fit in at any scale
RECALL_GOAL = 0.95
QUERY_NOISE = 1.0  # length of the offset from a stored chunk to a question (chunks are unit vectors)
QUERY_SEED = 0
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
BRANCH_DEPTH = 40  # candidates per hybrid branch
HYBRID_SINCE_DAYS = 60  # the relational date filter: documents of the last 60 days
ANALYTICS_REPEATS = 15
METHODS = ("vector", "keyword", "hybrid")

HNSW = "chunks_embedding_hnsw"
IVFFLAT = "chunks_embedding_ivfflat"
CHUNKS = sql.Identifier("ai_app", "chunks")
DOCUMENTS = sql.Identifier("ai_app", "documents")

# ---------------------------------------------------------------------------- the statements
# Fixed SQL composed with psycopg.sql; every value is a bound parameter (the extended protocol).
ANN = sql.SQL("SELECT id FROM {} ORDER BY embedding <=> %(q)s::vector LIMIT %(k)s").format(CHUNKS)
EXACT = sql.SQL("SELECT id FROM {} ORDER BY embedding <=> %(q)s::vector, id LIMIT %(k)s").format(CHUNKS)
ANN_IN = sql.SQL(
    "SELECT id FROM {} WHERE org_id = ANY(%(orgs)s) ORDER BY embedding <=> %(q)s::vector LIMIT %(k)s"
).format(CHUNKS)
EXACT_IN = sql.SQL(
    "SELECT id FROM {} WHERE org_id = ANY(%(orgs)s) ORDER BY embedding <=> %(q)s::vector, id LIMIT %(k)s"
).format(CHUNKS)
ANN_ORG = sql.SQL("SELECT id FROM {} WHERE org_id = %(org)s ORDER BY embedding <=> %(q)s::vector LIMIT %(k)s").format(
    CHUNKS
)
_SEMANTIC = """
    SELECT c.id, row_number() OVER (ORDER BY c.embedding <=> %(q)s::vector, c.id) AS r
    FROM {chunks} c JOIN {documents} d ON d.id = c.document_id
    WHERE c.org_id = %(org)s AND d.created_at >= %(since)s
    ORDER BY c.embedding <=> %(q)s::vector, c.id
    LIMIT %(depth)s"""
_KEYWORD = """
    SELECT c.id, row_number() OVER (ORDER BY ts_rank(to_tsvector('english', c.content), q) DESC, c.id) AS r
    FROM {chunks} c JOIN {documents} d ON d.id = c.document_id, websearch_to_tsquery('english', %(term)s) q
    WHERE c.org_id = %(org)s AND d.created_at >= %(since)s AND to_tsvector('english', c.content) @@ q
    ORDER BY ts_rank(to_tsvector('english', c.content), q) DESC, c.id
    LIMIT %(depth)s"""
SEMANTIC = sql.SQL(_SEMANTIC).format(chunks=CHUNKS, documents=DOCUMENTS)
KEYWORD = sql.SQL(_KEYWORD).format(chunks=CHUNKS, documents=DOCUMENTS)
# One statement: both branches with the tenant and date filters, fused by reciprocal rank.
HYBRID = sql.SQL(
    "WITH semantic AS (" + _SEMANTIC + "), keyword AS (" + _KEYWORD + """)
SELECT id, sum(1.0 / (%(rrf_k)s + r)) AS score,
       min(r) FILTER (WHERE branch = 'semantic') AS semantic_rank,
       min(r) FILTER (WHERE branch = 'keyword') AS keyword_rank
FROM (SELECT id, r, 'semantic' AS branch FROM semantic UNION ALL SELECT id, r, 'keyword' FROM keyword) hits
GROUP BY id
ORDER BY score DESC, id
LIMIT %(k)s"""
).format(chunks=CHUNKS, documents=DOCUMENTS)

# The analytics shapes as DuckDB runs them on the columnar copy (same meaning as the .sql files).
DUCK_SQL = {
    "tokens_by_model": """
        SELECT model, count(*) AS requests, sum(prompt_tokens + completion_tokens) AS tokens,
               round(sum(cost_usd), 2) AS cost_usd
        FROM ai_app.usage_events
        WHERE occurred_at >= CAST($since AS TIMESTAMPTZ) AND occurred_at < CAST($until AS TIMESTAMPTZ)
        GROUP BY model ORDER BY tokens DESC, model""",
    "usage_per_org_per_day": """
        SELECT date_trunc('day', occurred_at AT TIME ZONE 'UTC') AS day, count(*) AS requests,
               sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
               sum(cost_usd) AS cost_usd
        FROM ai_app.usage_events
        WHERE org_id = $org_id AND occurred_at >= CAST($since AS TIMESTAMPTZ) AND occurred_at < CAST($until AS TIMESTAMPTZ)
        GROUP BY 1 ORDER BY 1""",
}


# ---------------------------------------------------------------------------- helpers
def vector_ready(conn: psycopg.Connection[Any]) -> None:
    """Load pgvector in this session, so its settings (hnsw.ef_search ...) exist for Setting knobs;
    a one-line error when the dataset has no embeddings (a server without pgvector)."""
    from ..dataset.loader import has_vectors

    if not has_vectors(conn):
        raise WorkbookError(SKIPPED.replace("not run: ", "the vector sweep cannot run: ", 1))
    conn.execute("SELECT %s::vector", ("[0]",))


def query_vectors(conn: psycopg.Connection[Any], n: int = N_QUERIES, *, noise: float = QUERY_NOISE) -> list[str]:
    """``n`` questions as pgvector text: the first ``n`` chunks of the ``query_embedding`` sampler's
    order, each moved off the chunk by ``noise`` (:func:`move`; 0 keeps the chunk's own vector)."""
    rows = conn.execute(
        sql.SQL("SELECT embedding::text FROM {} ORDER BY (id * 2654435761) %% 1000003 LIMIT %s").format(CHUNKS), (n,)
    ).fetchall()
    if len(rows) < n:
        raise WorkbookError(f"the dataset has {len(rows)} chunks; the vectors lesson needs at least {n}")
    return move([r[0] for r in rows], noise) if noise else [r[0] for r in rows]


def move(vectors: Sequence[str], noise: float = QUERY_NOISE, seed: int = QUERY_SEED) -> list[str]:
    """Each vector moved by a fixed random offset of length ``noise``, normalised: a user's question
    lands near a topic's chunks, not exactly on one (a stored chunk's own vector would make every
    search trivially find itself first)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for text in vectors:
        v = np.array([float(x) for x in text.strip("[]").split(",")])
        v = v + rng.standard_normal(v.size) * (noise / math.sqrt(v.size))
        out.append("[" + ",".join(f"{x:.6f}" for x in v / np.linalg.norm(v)) + "]")
    return out


def run_set(
    conn: psycopg.Connection[Any], query: sql.Composed, params: Sequence[dict[str, Any]], rounds: int = ROUNDS
) -> tuple[list[list[int]], list[float]]:
    """Every parameter set ``rounds`` times (after one untimed warm-up pass): the ids each returned
    (first pass) and every round trip's milliseconds (a prepared statement, whole result received)."""
    ids: list[list[int]] = []
    times: list[float] = []
    with conn.cursor() as cur:
        for p in params:  # warm-up: caches, the prepared statement, the index pages
            cur.execute(query, p, prepare=True)
            ids.append([r[0] for r in cur.fetchall()])
        for _ in range(rounds):
            for p in params:
                t0 = time.perf_counter()
                cur.execute(query, p, prepare=True)
                cur.fetchall()
                times.append((time.perf_counter() - t0) * 1000)
    return ids, times


def recall(found: Sequence[Sequence[int]], truth: Sequence[Sequence[int]], k: int = K) -> float:
    """Mean share of the exact top-k each answer contains (the exact answer may hold fewer than k)."""
    shares = [len(set(f) & set(t)) / min(k, len(t)) for f, t in zip(found, truth, strict=True) if t]
    return statistics.fmean(shares) if shares else 1.0


def _p(times: Sequence[float], q: float) -> float:
    xs = sorted(times)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4) if xs else math.nan


def p50(times: Sequence[float]) -> float:
    return round(statistics.median(times), 4)


def scan_node(conn: psycopg.Connection[Any], query: sql.Composed, params: dict[str, Any]) -> str:
    """The scans the planner picks for ``query`` on this connection (EXPLAIN, not executed), e.g.
    "Index Scan using chunks_embedding_hnsw" or "Seq Scan on documents + Bitmap Index Scan using ..."."""
    plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + query, params).fetchone()[0]  # type: ignore[index]
    scans: list[str] = []

    def visit(node: dict[str, Any]) -> None:
        if "Scan" in node["Node Type"] and node["Node Type"] not in ("Function Scan", "CTE Scan", "Subquery Scan"):
            where = f" using {node['Index Name']}" if node.get("Index Name") else f" on {node.get('Relation Name')}"
            scans.append(node["Node Type"] + where)
        for child in node.get("Plans", []):
            visit(child)

    visit(plan[0]["Plan"])
    return " + ".join(dict.fromkeys(scans)) or "(no scan)"


@contextmanager
def knobs(conn: psycopg.Connection[Any], *ks: Any) -> Iterator[None]:
    """Apply knobs in order, revert them in reverse order."""
    done = []
    try:
        for k in ks:
            k.apply(conn)
            done.append(k)
        yield
    finally:
        for k in reversed(done):
            k.revert(conn)


def _spec(name: str, **with_: Any) -> Any:
    """The catalog's index ``name``, with storage parameters replaced by ``with_``."""
    from ..dataset import load_indexes

    spec = load_indexes()[name]
    return dataclasses.replace(spec, with_={**spec.with_, **with_}) if with_ else spec


def ivfflat_lists(rows: int) -> int:
    """sqrt(rows): pgvector advises rows / 1000 up to 1M rows and sqrt(rows) above; at the default
    scale rows / 1000 is 4 lists, too coarse for probes to trade anything (at SF 1: 316 vs 100)."""
    return max(10, round(math.sqrt(rows)))


def _chunk_count(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(CHUNKS)).fetchone()[0])  # type: ignore[index]


# ---------------------------------------------------------------------------- 1. exact vs approximate
def exact_vs_approximate(lab: Lab) -> dict[str, pd.DataFrame]:
    """Exact top-10 vs HNSW at each ef_search vs IVFFlat at each probes: recall against the exact
    answer of the same query vectors, and latency."""
    return sweep(lab.target)


def sweep(target: Target, *, n_queries: int = N_QUERIES, rounds: int = ROUNDS,
          ef_search: Sequence[int] = EF_SEARCH, probes: Sequence[int] = PROBES) -> dict[str, pd.DataFrame]:  # fmt: skip
    """The recall/latency sweep on any target with the sample dataset (what ``workbook vectors`` runs)."""
    import pandas as pd

    from ..experiment import Setting, WhatIfIndex

    rows: list[dict[str, Any]] = []
    built: list[dict[str, Any]] = []
    with target.connect() as base, target.connect() as conn:
        vector_ready(base)
        vector_ready(conn)
        n = _chunk_count(base)
        params = [{"q": q, "k": K} for q in query_vectors(base, n_queries)]
        truth, exact_ms = run_set(base, EXACT, params, rounds)
        rows.append({"method": "exact", "param": None, "recall_at_10": recall(truth, truth), "p50_ms": p50(exact_ms),
                     "p95_ms": _p(exact_ms, 0.95), "scan": scan_node(base, EXACT, params[0])})  # fmt: skip
        arms: list[tuple[str, Any, str, Sequence[int]]] = [
            ("hnsw", WhatIfIndex(_spec(HNSW)), "hnsw.ef_search", ef_search),
            ("ivfflat", WhatIfIndex(_spec(IVFFLAT, lists=ivfflat_lists(n))), "ivfflat.probes", probes),
        ]
        mwm = Setting("maintenance_work_mem", f"{graph_mwm_mb(n)}MB")  # the graph fits: no build cliff here
        for method, index, setting, values in arms:
            # the planner would pick the index here anyway; enable_seqscan off makes sure every point is the index's
            with knobs(conn, mwm, index, Setting("enable_seqscan", False)):
                built.append({"index": index.spec.name, "method": method, "with": str(index.spec.with_),
                              "build_s": index.cost.build_seconds, "size_bytes": index.cost.size_bytes})  # fmt: skip
                for value in values:
                    with Setting(setting, value).applied(conn):
                        ids, ms = run_set(conn, ANN, params, rounds)
                        rows.append({"method": method, "param": value, "recall_at_10": round(recall(ids, truth), 4),
                                     "p50_ms": p50(ms), "p95_ms": _p(ms, 0.95), "scan": scan_node(conn, ANN, params[0])})  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["param"] = frame["param"].astype("Int64")
    return {"sweep": frame, "indexes": pd.DataFrame(built)}


def best_hnsw(frame: pd.DataFrame, goal: float = RECALL_GOAL) -> dict[str, Any]:
    """The fastest HNSW setting whose recall@10 reaches ``goal`` — the smallest such ef_search (a
    search keeping fewer candidates does less work; neighbouring p50s differ by less than the
    noise) — and its speed-up over the exact scan."""
    exact = float(frame.loc[frame["method"] == "exact", "p50_ms"].iloc[0])
    ok = frame[(frame["method"] == "hnsw") & (frame["recall_at_10"] >= goal)].sort_values("param")
    if ok.empty:
        return {"ef_search": None, "recall_at_10": None, "p50_ms": None, "speedup_vs_exact": None, "goal": goal}
    r = ok.iloc[0]
    return {"ef_search": int(r["param"]), "recall_at_10": float(r["recall_at_10"]), "p50_ms": float(r["p50_ms"]),
            "speedup_vs_exact": round(exact / float(r["p50_ms"]), 2), "goal": goal}  # fmt: skip


def sweep_figures(lab: Lab | Target) -> dict[str, Any]:
    """``workbook vectors``: the recall/latency sweep alone (on a Lab's target, or a Target), as
    JSON-ready figures: ``exact_p50_ms``, ``sweep``, ``best_hnsw``; :func:`format_sweep` prints them."""
    target: Target = lab.target if hasattr(lab, "target") else lab
    out = sweep(target)
    return _sweep_figures(out["sweep"])


def _sweep_figures(frame: pd.DataFrame) -> dict[str, Any]:
    points = frame[frame["method"] != "exact"]
    return {
        "exact_p50_ms": float(frame.loc[frame["method"] == "exact", "p50_ms"].iloc[0]),
        "sweep": [{"method": r["method"], "param": int(r["param"]), "recall_at_10": float(r["recall_at_10"]),
                   "p50_ms": float(r["p50_ms"])} for r in points.to_dict("records")],  # fmt: skip
        "best_hnsw": best_hnsw(frame),
    }


def format_sweep(figures: dict[str, Any]) -> str:
    """The sweep's figures as lines of text (``workbook vectors`` without ``--json``)."""
    lines = [f"exact scan: p50 {figures['exact_p50_ms']:.3f} ms (recall 1.000 by definition)",
             f"{'method':<8} {'param':>5} {'recall@10':>9} {'p50 ms':>9}"]  # fmt: skip
    for p in figures["sweep"]:
        lines.append(f"{p['method']:<8} {p['param']:>5} {p['recall_at_10']:>9.3f} {p['p50_ms']:>9.3f}")
    b = figures["best_hnsw"]
    if b["ef_search"] is None:
        lines.append(f"no ef_search reached recall@10 >= {b['goal']}")
    else:
        lines.append(f"fastest HNSW with recall@10 >= {b['goal']}: ef_search {b['ef_search']}, recall "
                     f"{b['recall_at_10']:.3f}, p50 {b['p50_ms']:.3f} ms, {b['speedup_vs_exact']}x faster than exact")  # fmt: skip
    return "\n".join(lines)


def measure_point(target: Target, method: str = "hnsw", param: int | None = None, *, selectivity: float | None = None,
                  iterative: str = "off", n_queries: int = 20, rounds: int = 2) -> dict[str, Any]:  # fmt: skip
    """One point of the recall/latency curve: ``method`` ("exact", "hnsw", "ivfflat") at ``param``
    (ef_search or probes), optionally within the tenants nearest ``selectivity`` of the chunks,
    with ``iterative`` scans; recall against the exact answer of the same query vectors (what the
    VectorPanel and the notebook's exercise run)."""
    from ..experiment import Setting, WhatIfIndex

    if method not in ("exact", "hnsw", "ivfflat"):
        raise WorkbookError(f"method must be 'exact', 'hnsw' or 'ivfflat', got {method!r}")
    if iterative not in ITERATIVE or (method == "ivfflat" and iterative == "strict_order"):
        raise WorkbookError(f"iterative scan {iterative!r} is not one of {ITERATIVE} (IVFFlat has no strict_order)")
    with target.connect() as base, target.connect() as conn:
        vector_ready(base)
        vector_ready(conn)
        n = _chunk_count(base)
        f = tenant_filters(base, [selectivity])[0] if selectivity else None
        exact_q, ann_q = (EXACT_IN, ANN_IN) if f else (EXACT, ANN)
        params = [{"q": q, "k": K, **({"orgs": f["orgs"]} if f else {})} for q in query_vectors(base, n_queries)]
        truth, exact_ms = run_set(base, exact_q, params, rounds)
        point: dict[str, Any] = {"method": method, "param": param, "selectivity": f["share"] if f else 1.0,
                                 "iterative_scan": iterative, "exact_p50_ms": p50(exact_ms)}  # fmt: skip
        if method == "exact":
            ids, ms = truth, exact_ms
        else:
            spec = _spec(HNSW) if method == "hnsw" else _spec(IVFFLAT, lists=ivfflat_lists(n))
            settings = [Setting(f"{method}.iterative_scan", iterative)]
            if param is not None:
                settings.append(Setting("hnsw.ef_search" if method == "hnsw" else "ivfflat.probes", param))
            mwm = Setting("maintenance_work_mem", f"{graph_mwm_mb(n)}MB")
            with knobs(conn, mwm, WhatIfIndex(spec), Setting("enable_seqscan", False), *settings):
                ids, ms = run_set(conn, ann_q, params, rounds)
        counts = [len(x) for x in ids]
        point.update({"rows_mean": round(statistics.fmean(counts), 2), "rows_min": min(counts),
                      "recall_at_10": round(recall(ids, truth), 4), "p50_ms": p50(ms)})  # fmt: skip
    return point


# ---------------------------------------------------------------------------- 2. build cost
def build_cost(lab: Lab) -> dict[str, pd.DataFrame]:
    """HNSW build time, size and recall for m / ef_construction; then the same build with a
    maintenance_work_mem too small for the graph and one large enough."""
    import pandas as pd

    from ..experiment import Setting, WhatIfIndex

    notices: list[str] = []
    params_rows, mem_rows = [], []
    with lab.target.connect() as base, lab.target.connect() as conn:
        vector_ready(base)
        vector_ready(conn)
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        n = _chunk_count(base)
        params = [{"q": q, "k": K} for q in query_vectors(base, N_QUERIES)]
        truth, _ = run_set(base, EXACT, params, 0)
        for m, efc in BUILD_PARAMS:
            index = WhatIfIndex(_spec(HNSW, m=m, ef_construction=efc))
            with knobs(conn, index, Setting("enable_seqscan", False)):
                ids, ms = run_set(conn, ANN, params, 1)
            params_rows.append({"m": m, "ef_construction": efc, "build_s": index.cost.build_seconds,
                                "size_mb": round((index.cost.size_bytes or 0) / 2**20, 2),
                                "recall_at_10": round(recall(ids, truth), 4), "p50_ms": p50(ms)})  # fmt: skip
        notices.clear()
        small = WhatIfIndex(_spec(HNSW))
        with knobs(conn, Setting("maintenance_work_mem", f"{SMALL_MWM_KB}kB"), small):
            pass
        small_notice = next((x for x in notices if "maintenance_work_mem" in x), None)
        large_mb = large_mwm_mb(n, small_notice)
        notices.clear()
        large = WhatIfIndex(_spec(HNSW))
        with knobs(conn, Setting("maintenance_work_mem", f"{large_mb}MB"), large):
            pass
        large_notice = next((x for x in notices if "maintenance_work_mem" in x), None)
        for label, mwm, index, notice in (("small", f"{SMALL_MWM_KB} kB", small, small_notice),
                                          ("large", f"{large_mb} MB", large, large_notice)):  # fmt: skip
            mem_rows.append({"maintenance_work_mem": mwm, "case": label, "build_s": index.cost.build_seconds,
                             "size_mb": round((index.cost.size_bytes or 0) / 2**20, 2), "notice": notice or ""})  # fmt: skip
    return {"parameters": pd.DataFrame(params_rows), "maintenance_work_mem": pd.DataFrame(mem_rows)}


def graph_mwm_mb(rows: int, m: int = 16, dims: int = 384) -> int:
    """A maintenance_work_mem (MB) an HNSW graph of ``rows`` vectors fits in, with 50% to spare: about
    4 bytes a dimension + 40 a neighbour slot + 200 of overhead per element (measured here: 2.2 kB
    per element at m = 16, 384 dimensions); never below the default 64 MB."""
    return max(64, math.ceil(rows * (4 * dims + 40 * m + 200) * 1.5 / 2**20))


def large_mwm_mb(rows: int, notice: str | None) -> int:
    """A maintenance_work_mem the whole graph fits in: from the server's notice "... after N tuples"
    (N tuples filled SMALL_MWM_KB), 1.5x the graph's size for all rows; at least the default 64 MB."""
    import re

    found = re.search(r"after (\d+) tuples", notice or "")
    if not found or int(found.group(1)) == 0:
        return 64
    per_tuple = SMALL_MWM_KB * 1024 / int(found.group(1))
    return max(64, math.ceil(rows * per_tuple * 1.5 / 2**20))


# ---------------------------------------------------------------------------- 3. filtered search
def tenant_filters(conn: psycopg.Connection[Any], selectivities: Sequence[float] = SELECTIVITIES) -> list[dict[str, Any]]:
    """Per wanted selectivity, the tenant (or, past the largest tenant, the smallest set of largest
    tenants) whose share of chunks is nearest to it: {"wanted", "share", "orgs"}."""
    sizes = conn.execute(
        sql.SQL("SELECT org_id, count(*) FROM {} GROUP BY 1 ORDER BY 2 DESC, 1").format(CHUNKS)
    ).fetchall()
    total = sum(c for _, c in sizes)
    options: list[tuple[float, list[int]]] = [(c / total, [int(o)]) for o, c in sizes]
    running = 0
    for i, (_, c) in enumerate(sizes):
        running += c
        if i:
            options.append((running / total, [int(o) for o, _ in sizes[: i + 1]]))
    out = []
    for s in selectivities:
        share, orgs = min(options, key=lambda x: (abs(math.log(x[0] / s)), len(x[1])))
        out.append({"wanted": s, "share": round(share, 4), "orgs": orgs})
    return out


def filtered_search(lab: Lab) -> dict[str, pd.DataFrame]:
    """Top-10 within one tenant through the HNSW index, at ~1%, 10%, 50% of the chunks, with
    iterative scans off / relaxed_order / strict_order; then the alternatives for a tenant."""
    import pandas as pd

    from ..experiment import Setting, WhatIfIndex

    rows, alternatives = [], []
    with lab.target.connect() as base, lab.target.connect() as conn:
        vector_ready(base)
        vector_ready(conn)
        queries = query_vectors(base, N_QUERIES)
        filters = tenant_filters(base)
        truths = {}
        for f in filters:
            params = [{"q": q, "k": K, "orgs": f["orgs"]} for q in queries]
            truths[f["wanted"]], exact_ms = run_set(base, EXACT_IN, params, 1)
            f["exact_p50_ms"] = p50(exact_ms)
        with knobs(conn, WhatIfIndex(_spec(HNSW))):
            for f in filters:
                params = [{"q": q, "k": K, "orgs": f["orgs"]} for q in queries]
                planner_pick = scan_node(conn, ANN_IN, params[0])
                # force the index: what a bigger table gets from the planner, and what the trap looks like
                for mode in ITERATIVE:
                    with knobs(conn, Setting("enable_seqscan", False), Setting("hnsw.iterative_scan", mode)):
                        ids, ms = run_set(conn, ANN_IN, params, 1)
                    counts = [len(x) for x in ids]
                    rows.append({
                        "wanted": f["wanted"], "share": f["share"], "orgs": len(f["orgs"]), "iterative_scan": mode,
                        "rows_mean": round(statistics.fmean(counts), 2), "rows_min": min(counts),
                        "short_queries": sum(c < K for c in counts), "recall_at_10": round(recall(ids, truths[f["wanted"]]), 4),
                        "p50_ms": p50(ms), "exact_p50_ms": f["exact_p50_ms"], "planner_picks": planner_pick,
                    })  # fmt: skip
        # alternatives, for the ~1% tenant and the ~10% one (a big tenant)
        for f in filters[:2]:
            org = f["orgs"][0]
            params = [{"q": q, "k": K, "org": org, "orgs": f["orgs"]} for q in queries]
            partial = dataclasses.replace(_spec(HNSW), name=f"chunks_embedding_hnsw_org_{org}", where=f"org_id = {int(org)}")
            # a custom plan per execution: a generic plan cannot know org_id matches the partial index
            with knobs(conn, WhatIfIndex(partial), Setting("plan_cache_mode", "force_custom_plan")):
                ids, ms = run_set(conn, ANN_ORG, params, 1)
                pick = scan_node(conn, ANN_ORG, params[0])
            alternatives.append(_alternative("partial HNSW index for this tenant", f, ids, ms, truths, pick, partial))
            btree = WhatIfIndex(_spec("chunks_org"))
            with knobs(conn, btree):
                ids, ms = run_set(conn, EXACT_IN, params, 1)
                pick = scan_node(conn, EXACT_IN, params[0])
            alternatives.append(_alternative("pre-filter: B-tree on org_id, exact distances", f, ids, ms, truths, pick, btree.spec))
    return {"filtered": pd.DataFrame(rows), "alternatives": pd.DataFrame(alternatives)}


def _alternative(label: str, f: dict[str, Any], ids: list[list[int]], ms: list[float], truths: dict[float, Any],
                 pick: str, spec: Any) -> dict[str, Any]:  # fmt: skip
    counts = [len(x) for x in ids]
    return {"strategy": label, "wanted": f["wanted"], "share": f["share"], "rows_mean": round(statistics.fmean(counts), 2),
            "recall_at_10": round(recall(ids, truths[f["wanted"]]), 4), "p50_ms": p50(ms), "p95_ms": _p(ms, 0.95),
            "scan": pick, "index": spec.name}  # fmt: skip


# ---------------------------------------------------------------------------- 4. hybrid
def rrf(lists: Sequence[Sequence[int]], k: int = RRF_K, limit: int = K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion in Python: (id, sum over lists of 1 / (k + rank)), best first, ties by id."""
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, i in enumerate(ranked, 1):
            scores[i] = scores.get(i, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:limit]


def hybrid_questions(
    conn: psycopg.Connection[Any], seed: int, scale: float
) -> tuple[list[dict[str, Any]], dict[int, tuple[int, int]]]:
    """The labelled set, from the generator's own plan of the documents.

    A chunk's label is its document's (topic, sub-cluster): its embedding is drawn around that
    cluster's centre and its text from that topic's words. Per topic, two questions are asked in
    the largest tenant (documents of the last HYBRID_SINCE_DAYS days): a question vector near a
    chunk of *another* tenant, in a cluster this tenant also has documents in (:func:`move`),
    with the topic's most frequent word, then with its rarest. Returns the questions and the
    labels of the tenant's chunks."""
    import datetime as dt

    from ..dataset import Generator
    from ..dataset.generator import ANCHOR
    from ..dataset.samplers import chunk_org

    gen = Generator(seed, scale)
    plan = gen.document_plan

    def label(doc: int) -> tuple[int, int]:
        return int(plan["topic"][doc - 1]), int(plan["sub"][doc - 1])

    org = chunk_org(conn, "hot", 0)["org_id"]
    since = dt.datetime.fromtimestamp(ANCHOR - HYBRID_SINCE_DAYS * 86400, dt.UTC)
    tenant = conn.execute(
        sql.SQL("SELECT c.id, c.document_id FROM {} c JOIN {} d ON d.id = c.document_id"
                " WHERE c.org_id = %s AND d.created_at >= %s").format(CHUNKS, DOCUMENTS), (org, since),
    ).fetchall()  # fmt: skip
    labels = {int(i): label(d) for i, d in tenant}
    present = set(labels.values())
    picked: dict[int, tuple[tuple[int, int], str]] = {}  # topic -> (cluster, a chunk's embedding)
    for doc, emb in conn.execute(
        sql.SQL("SELECT document_id, embedding::text FROM {} WHERE org_id <> %s"
                " ORDER BY (id * 2654435761) %% 1000003").format(CHUNKS), (org,),
    ):  # fmt: skip
        if label(doc) in present and label(doc)[0] not in picked:
            picked[label(doc)[0]] = (label(doc), emb)
    moved = move([emb for _, emb in picked.values()])
    questions = []
    for (topic, (cluster, _)), q in zip(sorted(picked.items()), [moved[list(picked).index(t)] for t in sorted(picked)],
                                        strict=True):  # fmt: skip
        words = gen.vocab.topic_words[topic]
        for tier, term in (("frequent word", words[0]), ("rare word", words[-1])):
            questions.append({"topic": topic, "topic_name": gen.vocab.topics[topic], "cluster": cluster, "tier": tier,
                              "term": term, "q": q, "org": org, "since": since})  # fmt: skip
    return questions, labels


def hybrid_params(question: dict[str, Any]) -> dict[str, Any]:
    return {"q": question["q"], "org": question["org"], "since": question["since"], "term": question["term"],
            "depth": BRANCH_DEPTH, "rrf_k": RRF_K, "k": K}  # fmt: skip


def hybrid_search(lab: Lab) -> dict[str, pd.DataFrame]:
    """Keyword (GIN full-text) + vector (tenant pre-filter) fused by reciprocal rank in one statement,
    with the tenant and a date filter; precision@10 of each branch alone and fused, against the
    generator's topic labels."""
    import pandas as pd

    from ..dataset import dataset_info
    from ..experiment import WhatIfIndex

    rows = []
    with lab.target.connect() as conn:
        vector_ready(conn)
        info = dataset_info(conn)
        if info is None:
            raise WorkbookError("no sample dataset is loaded; run 'workbook load'")
        questions, labels = hybrid_questions(conn, info.seed, info.scale)
        with knobs(conn, WhatIfIndex(_spec("chunks_content_fts")), WhatIfIndex(_spec("chunks_org"))):
            params = [hybrid_params(q) for q in questions]
            fused, ms = run_set(conn, HYBRID, params, ROUNDS)
            semantic, _ = run_set(conn, SEMANTIC, params, 0)
            keyword, _ = run_set(conn, KEYWORD, params, 0)
            scans = {"semantic": scan_node(conn, SEMANTIC, params[0]), "keyword": scan_node(conn, KEYWORD, params[0])}
        for q, f, s, kw in zip(questions, fused, semantic, keyword, strict=True):
            grades = {i: _grade(lab_, q) for i, lab_ in labels.items()}
            rows.append({
                "topic": q["topic_name"], "tier": q["tier"], "term": q["term"], "keyword_hits": len(kw),
                **{f"precision_{m}": _precision(ids[:K], grades) for m, ids in (("vector", s), ("keyword", kw), ("hybrid", f))},
                **{f"ndcg_{m}": _ndcg(ids[:K], grades) for m, ids in (("vector", s), ("keyword", kw), ("hybrid", f))},
            })  # fmt: skip
    frame = pd.DataFrame(rows)
    timing = pd.DataFrame([{"query": "hybrid (one statement)", "p50_ms": p50(ms), "p95_ms": _p(ms, 0.95),
                            "questions": len(questions), "semantic_scan": scans["semantic"],
                            "keyword_scan": scans["keyword"]}])  # fmt: skip
    return {"quality": frame, "timing": timing}


def _grade(label: tuple[int, int], question: dict[str, Any]) -> int:
    """2: the question's own cluster (same topic, same sub-cluster); 1: same topic; 0: another topic."""
    return 2 if label == question["cluster"] else 1 if label[0] == question["topic"] else 0


def _precision(ids: Sequence[int], grades: dict[int, int]) -> float:
    """Results on the question's topic among the K slots (an empty slot is a miss: the user asked for K)."""
    return sum(grades.get(i, 0) > 0 for i in ids) / K


def _ndcg(ids: Sequence[int], grades: dict[int, int]) -> float:
    """nDCG@K with graded relevance: the ranking's discounted gain over the best ranking possible in
    this tenant and date window (every grade-2 chunk first, then grade-1)."""
    def dcg(gains: Sequence[int]) -> float:
        return sum((2**g - 1) / math.log2(r + 2) for r, g in enumerate(gains))

    ideal = dcg(sorted(grades.values(), reverse=True)[:K])
    return round(dcg([grades.get(i, 0) for i in ids]) / ideal, 4) if ideal else 0.0


# ---------------------------------------------------------------------------- 5. columnar
def columnar(lab: Lab) -> dict[str, pd.DataFrame]:
    """The analytics shapes on PostgreSQL and on a DuckDB copy, same answers, timed; and what the
    copy does not see: a row written after it."""
    import pandas as pd

    from ..dataset import shape, to_duckdb

    rows, fresh = [], []
    with tempfile.TemporaryDirectory(prefix="wb-vectors-") as d, lab.target.connect() as conn:
        t0 = time.perf_counter()
        duck = to_duckdb(lab.target, Path(d) / "copy.duckdb")
        copy_s = time.perf_counter() - t0
        try:
            duck.execute("SET TimeZone = 'UTC'")
            for name in DUCK_SQL:
                qs = shape(name)
                params = qs.sample(conn, "hot", 0)
                pg_rows, pg_ms = _timed(functools.partial(qs.run, conn, params, prepare=True))
                duck_rows, duck_ms = _timed(functools.partial(_duck_rows, duck, name, params))
                rows.append({"shape": name, "rows": len(pg_rows), "postgres_p50_ms": p50(pg_ms), "duckdb_p50_ms": p50(duck_ms),
                             "same_answer": normalise(pg_rows) == normalise(duck_rows)})  # fmt: skip
            if lab.target.allow_writes:
                fresh.append(_freshness(conn, duck, copy_s))
        finally:
            duck.close()
    return {"analytics": pd.DataFrame(rows), "copy": pd.DataFrame([{"duckdb_copy_s": round(copy_s, 3)}]), "freshness": pd.DataFrame(fresh)}


def _timed(fn: Callable[[], list[Any]], repeats: int = ANALYTICS_REPEATS) -> tuple[list[Any], list[float]]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return out, times


def _duck_rows(duck: Any, name: str, params: dict[str, Any]) -> list[Any]:
    return list(duck.execute(DUCK_SQL[name], _duck_params(name, params)).fetchall())


def _duck_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    wanted = ("since", "until", "org_id") if name == "usage_per_org_per_day" else ("since", "until")
    return {k: params[k] for k in wanted}


def normalise(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Rows as comparable values: numbers as Decimal text rounded to 6 places, times as naive UTC ISO text."""
    import datetime as dt
    from decimal import Decimal

    def one(v: Any) -> Any:
        if isinstance(v, dt.datetime):
            if v.tzinfo is not None:
                v = v.astimezone(dt.UTC).replace(tzinfo=None)
            return v.isoformat()
        if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):
            return str(Decimal(str(v)).quantize(Decimal("0.000001")))
        return v

    return [tuple(one(v) for v in r) for r in rows]


def _freshness(conn: psycopg.Connection[Any], duck: Any, copy_s: float) -> dict[str, Any]:
    """One usage event written after the copy (in a transaction rolled back): PostgreSQL's answer
    includes it at once; the copy's does not until the next copy."""
    from ..dataset import shape

    qs = shape("tokens_by_model")
    params = qs.sample(conn, "hot", 0)
    before_duck = duck.execute(DUCK_SQL["tokens_by_model"], _duck_params("tokens_by_model", params)).fetchall()
    with conn.transaction(force_rollback=True):
        before = qs.run(conn, params)
        conn.execute(
            sql.SQL("INSERT INTO {} (org_id, user_id, model, prompt_tokens, completion_tokens, cost_usd, occurred_at)"
                    " SELECT org_id, user_id, model, 1000, 1000, 0, %s::timestamptz - interval '1 second'"
                    " FROM {} WHERE occurred_at >= %s AND occurred_at < %s ORDER BY id LIMIT 1").format(
                sql.Identifier("ai_app", "usage_events"), sql.Identifier("ai_app", "usage_events")),
            (params["until"], params["since"], params["until"]),
        )  # fmt: skip
        after = qs.run(conn, params)
    after_duck = duck.execute(DUCK_SQL["tokens_by_model"], _duck_params("tokens_by_model", params)).fetchall()
    return {"write": "1 usage event of 2,000 tokens (rolled back)",
            "postgres_tokens_change": sum(r[2] for r in after) - sum(r[2] for r in before),
            "duckdb_tokens_change": sum(r[2] for r in after_duck) - sum(r[2] for r in before_duck),
            "copy_s_to_catch_up": round(copy_s, 3)}  # fmt: skip


# ---------------------------------------------------------------------------- without pgvector
#: what a step that needs embeddings returns on a dataset without them (a server without pgvector)
SKIPPED = ("not run: the dataset has no embeddings because the server has no pgvector extension; "
           "install pgvector there (or use the embedded cluster) and load again")  # fmt: skip


def _needs_vectors(step: Callable[[Lab], Any]) -> Callable[[Lab], Any]:
    """``step``, or ``{"skipped": SKIPPED}`` when the dataset has no embeddings."""

    @functools.wraps(step)
    def run(lab: Lab) -> Any:
        from ..dataset.loader import has_vectors

        with lab.target.connect() as conn:
            if not has_vectors(conn):
                return {"skipped": SKIPPED}
        return step(lab)

    return run


def ran(output: Any) -> bool:
    """For a notebook cell: whether a step's ``output`` holds results; when the step was not run
    (no embeddings on this server), print why and return False."""
    if isinstance(output, dict) and set(output) == {"skipped"}:
        print(output["skipped"])
        return False
    return True


def _skipped(outputs: dict[str, Any]) -> list[str]:
    return [k for k, v in outputs.items() if isinstance(v, dict) and set(v) == {"skipped"}]


# ---------------------------------------------------------------------------- figures
def figures(outputs: dict[str, Any]) -> dict[str, Any]:
    if _skipped(outputs):  # no pgvector: only the columnar step ran
        analytics = outputs["columnar"]["analytics"].set_index("shape")
        return {"skipped": {"steps": _skipped(outputs), "reason": SKIPPED},
                "analytics_ms": {"postgres": round(float(analytics["postgres_p50_ms"].sum()), 3),
                                 "duckdb": round(float(analytics["duckdb_p50_ms"].sum()), 3)},
                "analytics_same_answers": bool(analytics["same_answer"].all()),
                "duckdb_copy_s": float(outputs["columnar"]["copy"]["duckdb_copy_s"].iloc[0])}  # fmt: skip
    sweep_ = _sweep_figures(outputs["exact_vs_approximate"]["sweep"])
    mem = outputs["build_cost"]["maintenance_work_mem"].set_index("case")
    small, large = mem.loc["small"], mem.loc["large"]
    filt = outputs["filtered_search"]["filtered"]
    one = filt[filt["wanted"] == SELECTIVITIES[0]].set_index("iterative_scan")
    alt = outputs["filtered_search"]["alternatives"]
    quality = outputs["hybrid_search"]["quality"]
    analytics = outputs["columnar"]["analytics"].set_index("shape")
    return {
        **sweep_,
        "hnsw_build_s": {"small_mwm": float(small["build_s"]), "large_mwm": float(large["build_s"])},
        "hnsw_build": {"small_mwm": str(small["maintenance_work_mem"]), "large_mwm": str(large["maintenance_work_mem"]),
                       "slowdown": round(float(small["build_s"]) / float(large["build_s"]), 2),
                       "notice_small": str(small["notice"]) or None, "notice_large": str(large["notice"]) or None,
                       "size_mb": float(large["size_mb"])},  # fmt: skip
        "filtered": {"k": K, "selectivity": float(one["share"].iloc[0]),
                     "rows_without_iterative": float(one.loc["off", "rows_mean"]),
                     "rows_with_iterative": float(one.loc["relaxed_order", "rows_mean"]),
                     "recall_without_iterative": float(one.loc["off", "recall_at_10"]),
                     "recall_with_iterative": float(one.loc["relaxed_order", "recall_at_10"]),
                     "rows_strict_order": float(one.loc["strict_order", "rows_mean"]),
                     "recall_strict_order": float(one.loc["strict_order", "recall_at_10"])},  # fmt: skip
        "filtered_alternatives": {
            f"{'partial' if r['strategy'].startswith('partial') else 'prefilter'}_{round(r['wanted'] * 100)}pct":
            {"recall_at_10": float(r["recall_at_10"]), "p50_ms": float(r["p50_ms"])} for r in alt.to_dict("records")
        },  # fmt: skip
        "hybrid": {**{f"precision_at_10_{m}": round(float(quality[f"precision_{m}"].mean()), 4) for m in METHODS},
                   **{f"ndcg_at_10_{m}": round(float(quality[f"ndcg_{m}"].mean()), 4) for m in METHODS},
                   "p50_ms": float(outputs["hybrid_search"]["timing"]["p50_ms"].iloc[0]), "questions": len(quality)},
        "analytics_ms": {"postgres": round(float(analytics["postgres_p50_ms"].sum()), 3),
                         "duckdb": round(float(analytics["duckdb_p50_ms"].sum()), 3)},  # fmt: skip
        "analytics_same_answers": bool(analytics["same_answer"].all()),
        "duckdb_copy_s": float(outputs["columnar"]["copy"]["duckdb_copy_s"].iloc[0]),
    }


LESSON = Lesson(
    name="vectors",
    title="Vectors and hybrid search: recall vs latency, build cost, filtered search, RRF, DuckDB beside PostgreSQL",
    claim="An HNSW index answers top-10 many times faster than an exact scan at a recall you measure; a selective "
          "filter starves it (fewer rows than asked) unless iterative scans are on; keyword and vector search fuse "
          "in one SQL statement with the app's own filters; and analytics run faster on a columnar copy that is only "
          "as fresh as its last copy.",
    notebook="08_vectors_and_hybrid_search",
    steps=(
        Step("exact_vs_approximate", "Exact vs approximate: recall against latency",
             "The same query vectors, exact and through HNSW at each ef_search and IVFFlat at each probes; recall@10 "
             "is the share of the exact top-10 each answer holds.", _needs_vectors(exact_vs_approximate)),
        Step("build_cost", "What the HNSW graph costs to build",
             "Bigger m / ef_construction: slower builds, bigger index, higher recall. A maintenance_work_mem too "
             "small for the graph: the server says so, and the build slows down.", _needs_vectors(build_cost)),
        Step("filtered_search", "Filtered search within a tenant",
             "The index finds ef_search candidates, then the filter drops the other tenants': at 1% almost nothing "
             "is left, unless iterative scans keep searching.", _needs_vectors(filtered_search)),
        Step("hybrid_search", "Hybrid: full-text + vector, fused by reciprocal rank, in one statement",
             "Each branch uses its own index (GIN full-text, the tenant B-tree), the tenant and date filters apply to "
             "both, and the fusion is plain SQL; precision@10 against the generator's topics.", _needs_vectors(hybrid_search)),
        Step("columnar", "Columnar beside relational: PostgreSQL vs a DuckDB copy",
             "The analytics shapes on both engines: the same answers, different speeds, and a copy that does not see "
             "what was written after it.", columnar),
    ),
    figures=figures,
    references=(
        ("pgvector: HNSW, IVFFlat, iterative index scans", "https://github.com/pgvector/pgvector#indexing"),
        ("Full text search: tables and indexes", "https://www.postgresql.org/docs/current/textsearch-tables.html"),
        ("Resource consumption: maintenance_work_mem",
         "https://www.postgresql.org/docs/current/runtime-config-resource.html#GUC-MAINTENANCE-WORK-MEM"),
        ("Partial indexes", "https://www.postgresql.org/docs/current/indexes-partial.html"),
        ("WITH queries (common table expressions)", "https://www.postgresql.org/docs/current/queries-with.html"),
    ),
)  # fmt: skip
