"""The notebooks run top to bottom headless, twice, leaving nothing behind; the panels work without a browser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from workbook import lessons
from workbook.cluster import LocalCluster
from workbook.lab import Lab, open_lab
from workbook.results import ResultsStore
from workbook.ui.panels import ExperimentPanel

from .conftest import REPO, catalog_snapshot, figure_keys

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPECT = {  # text each notebook must print: its lesson really happened
    "00_start_here": ["Seq Scan on messages", "seq_scan_selective_filter"],
    "01_indexes": ["faster, 95% CI", "Index Scan using messages_conversation_created", "yes: audit_actor_time makes"],
    "02_jsonb_and_gin": ["expression_cold | ", "Bitmap Index Scan using messages_metadata_gin |", "yes: messages_metadata_gin makes"],
    "03_query_shapes_and_the_planner": ["with extended statistics", "page  100: ", "EXPLAIN ANALYZE (BUFFERS)", "yes: estimate makes"],
}


def _text(nb: Any) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", ""))
            data = o.get("data", {})
            out.append(data.get("text/plain", ""))
            out.append(data.get("text/html", ""))
    return "\n".join(out)


# lesson notebooks that write (or take a minute) run once, in their lesson's own test module
OWN_TEST = {
    "04_transactions_and_integrity": "tests/test_lesson_transactions.py",
    "05_replicas_and_read_scaling": "tests/test_lesson_replicas.py",
    "06_connections_and_pooling": "tests/test_pooling.py",
    "07_observability_and_circuit_breakers": "tests/test_lesson_observability.py",
    "08_vectors_and_hybrid_search": "tests/test_lesson_vectors.py",
}


def test_the_series_is_complete() -> None:
    assert [p.stem for p in NOTEBOOKS] == sorted([*EXPECT, *OWN_TEST])
    for stem, test in OWN_TEST.items():
        assert stem in (REPO / test).read_text(), f"{test} runs {stem}"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} is committed with outputs"
        first = nb.cells[0].source
        for part in ("What you'll do", "What you'll learn", "What you need", "Time"):
            assert part in first, f"{path.name} opens without '{part}'"
        assert all(len(c.source.splitlines()) <= 10 for c in nb.cells if c.cell_type == "code"), "cells stay short"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in EXPECT], ids=lambda p: p.stem)
def test_notebook_runs_twice_headless_and_leaves_nothing(path: Path, lab: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBOOK_HOME", str(lab.home))  # the kernel attaches to the test cluster
    monkeypatch.delenv("WORKBOOK_DSN", raising=False)
    with lab.target().connect() as conn:
        before = catalog_snapshot(conn)
        started = conn.execute("SELECT now()").fetchone()[0]
    for attempt in (1, 2):  # "Run all" twice in a row
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        text = _text(nb)
        for needle in EXPECT[path.stem]:
            assert needle in text, f"{path.name} run {attempt}: {needle!r} not in its output"
    with lab.target().connect() as conn:
        assert catalog_snapshot(conn) == before, "re-running the notebook left indexes or tables behind"
    lesson = LESSON_OF.get(path.stem)
    if lesson is not None:  # the notebook ran the lesson's own steps: it stored the same figures run() returns
        stored = ResultsStore(lab.home).lessons()
        mine = stored[(stored["lesson"] == lesson) & (stored["source"] == "notebook") & (stored["created_at"] >= started)]
        assert len(mine) == 2, f"{path.name} stored {len(mine)} lesson results, one per run expected"
        ran = lessons.lesson(lesson).run(open_lab(home=lab.home, progress=False))
        for figures in mine["figures"]:
            assert figure_keys(figures) == figure_keys(ran.figures), f"{path.name}'s figures differ in shape from run()'s"



LESSON_OF = {lesson.notebook: name for name, lesson in lessons.LESSONS.items()}


@pytest.fixture
def open_(lab: LocalCluster) -> Lab:
    return open_lab(home=lab.home, progress=False)


def test_open_lab_attaches_and_loads_nothing_the_second_time(open_: Lab, lab: LocalCluster) -> None:
    assert open_.info is not None and open_.info.scale > 0
    again = open_lab(home=lab.home, progress=False)
    assert again.info == open_.info and again.target.primary.dsn == open_.target.primary.dsn


def test_experiment_panel_ticking_an_index_changes_the_plan(open_: Lab, catalog_unchanged: None) -> None:
    panel = ExperimentPanel(open_.target, open_.store, "conversation_latest_messages")
    assert "messages_conversation_created" in panel.index_boxes
    plain = panel.run()
    assert plain is not None and "Seq Scan on messages" in panel.plan.value and "seq_scan_selective_filter" in panel.plan.value
    panel.tick("messages_conversation_created")
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS" in panel.ddl.value
    result = panel.run()
    assert result is not None and result.verdict.kind == "faster"
    assert "Index Scan using messages_conversation_created" in panel.plan.value
    assert "<svg" in panel.chart.value and "<svg" in panel.plan_chart.value and "faster" in panel.verdict.value
    stored = open_.store.comparisons()
    assert result.comparison_id in set(stored["comparison_id"])


def test_experiment_panel_shows_the_server_error_for_bad_sql_and_changes_nothing(open_: Lab, catalog_unchanged: None) -> None:
    panel = ExperimentPanel(open_.target, open_.store, "conversation_latest_messages").tick("messages_conversation_id")
    panel.sql.value = "SELECT nope FROM ai_app.messages WHERE conversation_id = %(conversation_id)s"
    assert panel.run() is None
    assert 'column &quot;nope&quot; does not exist' in panel.error.value and "nothing" in panel.status.value
    panel.variant.value = "default"  # back to the catalog's SQL
    panel.sql.value = panel.qs.variant().sql
    assert panel.run() is not None and panel.error.value == ""


def test_experiment_panel_adds_advised_indexes_as_checkboxes(open_: Lab, catalog_unchanged: None) -> None:
    panel = ExperimentPanel(open_.target, open_.store, "audit_by_actor")
    added = panel.suggest()
    assert added and all(name.startswith("wb_advice_audit_log_") for name in added), panel.status.value
    assert "actor_user_id" in added[0] and added[0] in panel.index_boxes
    panel.tick(added[0])
    result = panel.run()
    assert result is not None and result.verdict.kind == "faster" and added[0] in panel.plan.value


def test_experiment_panel_cancel_stops_between_turns(open_: Lab) -> None:
    panel = ExperimentPanel(open_.target, open_.store, "conversation_latest_messages")
    panel.repeats.value = 200
    panel.run(background=True)
    panel.cancel()
    panel.wait(60)
    assert panel.last is not None and len(panel.last.samples_ms) < 200 and "cancelled" in panel.status.value


def test_dataset_panel_loads_with_progress(cluster_factory: Any) -> None:
    c = cluster_factory()
    lab = open_lab(home=c.home, scale=0.005, progress=False)
    panel = lab.dataset_panel()
    assert "messages" in panel.table.value
    panel.scale.value, panel.seed.value = 0.01, 7
    panel.load()
    assert panel.progress.value == panel.progress.max > 0 and "loaded" in panel.status.value
    assert lab.info is not None and lab.info.seed == 7 and "SF 0.01, seed 7" in panel.table.value
