"""The vectors lesson (issue 21) on the shared lab at the default scale: recall is computed against
the exact answer, a selective filter starves HNSW without iterative scans, the hybrid statement is
reciprocal rank fusion of its two branches, DuckDB and PostgreSQL agree, and nothing is left."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workbook.cluster import LocalCluster
from workbook.experiment import WhatIfIndex
from workbook.lab import Lab
from workbook.lessons import LESSONS, LessonResult, vectors
from workbook.results import ResultsStore
from workbook.ui.vector_panel import VectorPanel

from .conftest import REPO, built_notebook, catalog_snapshot, figure_keys, run_notebook

NOTEBOOK = REPO / "notebooks" / "08_vectors_and_hybrid_search.ipynb"


@pytest.fixture(scope="module")
def ran(open_: Lab, lab: LocalCluster) -> Iterator[LessonResult]:
    """One run of the whole lesson; the catalog must be exactly as before it."""
    with lab.target().connect() as conn:
        before = catalog_snapshot(conn)
    result = vectors.LESSON.run(open_)
    with lab.target().connect() as conn:
        assert catalog_snapshot(conn) == before, "the vectors lesson left indexes or tables behind"
    yield result


def test_recall_is_the_share_of_the_exact_top_k() -> None:
    assert vectors.recall([[1, 2, 3]], [[1, 2, 4]], k=3) == pytest.approx(2 / 3)
    assert vectors.recall([[]], [[1, 2]], k=10) == 0.0  # an exact answer of 2 rows: recall out of 2
    assert vectors.recall([[5, 6]], [[6, 5]], k=2) == 1.0  # order does not matter, membership does


def test_sweep_measures_recall_against_the_exact_answer(open_: Lab, catalog_unchanged: None) -> None:
    out = vectors.sweep(open_.target, n_queries=12, rounds=1, ef_search=(1, 40), probes=(1, 1000))
    sweep = out["sweep"]
    assert sweep.loc[sweep["method"] == "exact", "scan"].iloc[0] == "Seq Scan on chunks"
    points = {(r["method"], int(r["param"])): r for r in sweep.to_dict("records") if r["method"] != "exact"}
    # ef_search 1 keeps one candidate: one row per question, so at most 1 of the exact 10
    assert points[("hnsw", 1)]["recall_at_10"] <= 0.1
    assert points[("hnsw", 40)]["recall_at_10"] >= 0.8
    assert "chunks_embedding_hnsw" in points[("hnsw", 40)]["scan"]
    # probing every list is an exact search: recall 1.0, measured, not assumed
    with open_.target.connect() as conn:
        lists = vectors.ivfflat_lists(conn.execute("SELECT count(*) FROM ai_app.chunks").fetchone()[0])  # type: ignore[index]
    assert lists <= 1000 and out["indexes"].set_index("method").loc["ivfflat", "with"] == str({"lists": lists})
    assert points[("ivfflat", 1000)]["recall_at_10"] >= 0.99


def test_filtered_search_without_iterative_scans_returns_fewer_than_k(open_: Lab, catalog_unchanged: None) -> None:
    off = vectors.measure_point(open_.target, "hnsw", 40, selectivity=0.01, iterative="off")
    assert 0.005 <= off["selectivity"] <= 0.02
    assert off["rows_mean"] < vectors.K and off["rows_min"] < vectors.K, off
    for mode in ("relaxed_order", "strict_order"):
        on = vectors.measure_point(open_.target, "hnsw", 40, selectivity=0.01, iterative=mode)
        assert on["rows_min"] == vectors.K and on["recall_at_10"] > off["recall_at_10"], on
    with pytest.raises(Exception, match="strict_order"):
        vectors.measure_point(open_.target, "ivfflat", 4, iterative="strict_order")


def test_hybrid_statement_is_rrf_of_its_two_branches(open_: Lab, catalog_unchanged: None) -> None:
    with open_.target.connect() as conn:
        vectors.vector_ready(conn)
        info = open_.info
        assert info is not None
        questions, labels = vectors.hybrid_questions(conn, info.seed, info.scale)
        assert len(questions) >= 10 and labels
        both = 0
        with vectors.knobs(conn, WhatIfIndex(vectors._spec("chunks_content_fts")), WhatIfIndex(vectors._spec("chunks_org"))):
            for q in questions:
                p = vectors.hybrid_params(q)
                fused = conn.execute(vectors.HYBRID, p).fetchall()
                semantic = [r[0] for r in conn.execute(vectors.SEMANTIC, p).fetchall()]
                keyword = [r[0] for r in conn.execute(vectors.KEYWORD, p).fetchall()]
                expected = vectors.rrf([semantic, keyword])
                assert [r[0] for r in fused] == [i for i, _ in expected], q["term"]
                assert [float(r[1]) for r in fused] == pytest.approx([s for _, s in expected], abs=1e-12)
                for id_, _, s_rank, k_rank in fused:  # each branch's rank is the id's place in that list
                    assert s_rank == (semantic.index(id_) + 1 if id_ in semantic else None)
                    assert k_rank == (keyword.index(id_) + 1 if id_ in keyword else None)
                both += any(r[2] for r in fused) and any(r[3] for r in fused)
        assert both, "no fused answer drew on both branches: the union is not being fused"


def test_duckdb_and_postgres_give_the_same_analytics_answers(open_: Lab, catalog_unchanged: None) -> None:
    out = vectors.columnar(open_)
    analytics = out["analytics"].set_index("shape")
    assert set(analytics.index) == {"tokens_by_model", "usage_per_org_per_day"}
    assert analytics["same_answer"].all() and (analytics["rows"] > 0).all()
    fresh = out["freshness"].iloc[0]
    assert fresh["postgres_tokens_change"] == 2000 and fresh["duckdb_tokens_change"] == 0


def test_lesson_run_returns_the_named_figures(ran: LessonResult) -> None:
    f = ran.figures
    assert LESSONS["vectors"] is vectors.LESSON
    for name in ("exact_p50_ms", "sweep", "filtered", "hnsw_build_s", "analytics_ms", "best_hnsw", "hybrid"):
        assert name in f, name
    assert f["exact_p50_ms"] > 0
    assert {p["method"] for p in f["sweep"]} == {"hnsw", "ivfflat"}
    assert all(set(p) == {"method", "param", "recall_at_10", "p50_ms"} for p in f["sweep"])
    assert len(f["sweep"]) == len(vectors.EF_SEARCH) + len(vectors.PROBES)
    assert {"k", "rows_without_iterative", "rows_with_iterative", "recall_with_iterative"} <= set(f["filtered"])
    assert f["filtered"]["rows_without_iterative"] < 10 and f["filtered"]["rows_with_iterative"] == 10
    assert set(f["hnsw_build_s"]) == {"small_mwm", "large_mwm"}
    assert "hnsw graph no longer fits into maintenance_work_mem" in f["hnsw_build"]["notice_small"]
    assert f["hnsw_build"]["notice_large"] is None
    assert set(f["analytics_ms"]) == {"postgres", "duckdb"} and f["analytics_same_answers"] is True
    assert ran.seconds < 90, f"the lesson took {ran.seconds:.0f} s at the test scale"


def test_vector_panel_measures_a_point_without_a_browser(open_: Lab, ran: LessonResult, catalog_unchanged: None) -> None:
    panel = VectorPanel(open_.target, open_.store)
    assert "<svg" in panel.chart.value, "the stored sweep is drawn before any run"
    panel.method.value = "ivfflat"
    assert panel.param.description == "probes" and "strict_order" not in panel.iterative.options
    panel.selectivity.value = 0.10
    point = panel.run()
    assert point is not None and point["method"] == "ivfflat" and 0 <= point["recall_at_10"] <= 1
    assert "recall@10" in panel.result.value and "rolled back" in panel.status.value


def test_notebook_runs_headless_and_stores_the_same_figures(
    lab: LocalCluster, ran: LessonResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBOOK_HOME", str(lab.home))
    monkeypatch.delenv("WORKBOOK_DSN", raising=False)
    with lab.target().connect() as conn:
        before = catalog_snapshot(conn)
        started = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    text = run_notebook(NOTEBOOK)
    for needle in ("Index Scan using chunks_embedding_hnsw", "hnsw graph no longer fits", "relaxed_order", "same_answer"):
        assert needle in text, needle
    with lab.target().connect() as conn:
        assert catalog_snapshot(conn) == before, "the notebook left indexes or tables behind"
    stored = ResultsStore(lab.home).lessons()
    mine = stored[(stored["lesson"] == "vectors") & (stored["source"] == "notebook") & (stored["created_at"] >= started)]
    assert len(mine) == 1
    assert figure_keys(mine["figures"].iloc[0]) == figure_keys(ran.figures)



def test_notebook_builder_writes_the_committed_notebook(tmp_path: Path) -> None:
    assert built_notebook(tmp_path, NOTEBOOK.stem) == NOTEBOOK.read_text(), "run python notebooks/_build.py"


def test_notebook_on_a_server_without_pgvector_says_what_it_could_not_run(
    cluster_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's PostgreSQL 15 has no pgvector: the dataset loads without embeddings, the notebook
    runs top to bottom, each vector section says why it was not run, and the columnar one runs."""
    pg15 = Path("/usr/lib/postgresql/15/bin")
    if not (pg15 / "postgres").exists():
        pytest.skip("Debian's PostgreSQL 15 (which has no pgvector) is not installed (.ci/run installs it)")
    c = cluster_factory(pg_bin=pg15)
    c.up(replicas=0)
    monkeypatch.setenv("WORKBOOK_HOME", str(c.home))
    monkeypatch.setenv("WORKBOOK_SCALE", "0.01")
    monkeypatch.delenv("WORKBOOK_DSN", raising=False)
    text = run_notebook(NOTEBOOK)
    assert text.count(vectors.SKIPPED) >= 4, text[-2000:]  # the four vector steps, each said where it is shown
    assert "same_answer" in text and "'skipped'" in text
    assert "chunks_embedding_hnsw" not in text
