"""The transactions lesson (issue 19) on the shared lab at the default scale: constraints reject
every bad write the shipped-fast copy accepts, lost updates are counted exactly (read-modify-write
loses, the other three strategies lose none), lazy loading sends 1 + N statements, an open
transaction holds back VACUUM — and the dataset and the catalog are as before it ran."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workbook.cluster import LocalCluster
from workbook.dataset import checksum, is_pristine
from workbook.lab import Lab
from workbook.lessons import LessonResult, transactions
from workbook.results import ResultsStore

from .conftest import REPO, built_notebook, catalog_snapshot, figure_keys, run_notebook

NOTEBOOK = REPO / "notebooks" / "04_transactions_and_integrity.ipynb"
FIGURES = {  # named as the issue names them, with the keys it names
    "garbage_rows_accepted": {"without_constraints", "with_constraints"},
    "lost_updates_per_10k": {"read_modify_write", "atomic_update", "select_for_update", "serializable_retry"},
    "serializable_retries_per_10k": None,
    "duplicates_with_idempotency_key": None,
    "hot_row_tps": {"1", "2", "4", "8"},
    "orm_statements": {"lazy", "selectinload", "joinedload"},
    "orm_ms": {"lazy", "selectinload", "joinedload"},
}


def _state(lab: LocalCluster) -> tuple[Any, Any]:
    with lab.target().connect() as conn:
        return checksum(conn), catalog_snapshot(conn)


@pytest.fixture(scope="module")
def ran(open_: Lab, lab: LocalCluster) -> Iterator[LessonResult]:
    """One run of the whole lesson: the dataset (checksum) and the catalog must be as before it."""
    before = _state(lab)
    result = transactions.LESSON.run(open_)
    after = _state(lab)
    assert after[0] == before[0], "the lesson left the dataset changed"
    assert after[1] == before[1], "the lesson left tables, schemas or indexes behind"
    assert is_pristine(lab.target()) is True
    yield result


def test_figures_are_named_as_the_issue_says(ran: LessonResult) -> None:
    for name, keys in FIGURES.items():
        assert name in ran.figures, name
        if keys is not None:
            assert set(ran.figures[name]) == keys, name
    assert ran.figures["pristine_after"] is True


def test_constraints_reject_every_bad_write_the_copy_accepts(ran: LessonResult) -> None:
    writes = ran.outputs["constraints"]["writes"]
    assert len(writes) == len(transactions.BAD_WRITES)
    assert (writes["without_constraints"] == "accepted").all()
    assert (writes["with_constraints"] == "rejected").all()
    assert writes["error"].str.contains("Violation").all()  # the server's constraint error, not some other failure
    n = len(transactions.BAD_WRITES)
    assert ran.figures["garbage_rows_accepted"] == {"without_constraints": n, "with_constraints": 0}
    cost = ran.figures["constraint_cost"]
    assert cost["ci_low"] <= cost["slowdown"] <= cost["ci_high"]


def test_only_read_modify_write_loses_updates(ran: LessonResult) -> None:
    race = ran.outputs["races"]["strategies"].set_index("strategy")
    assert (race["spends"] == transactions.RACE_CLIENTS * transactions.RACE_SPENDS).all()  # every spend committed
    assert race.loc["read_modify_write", "lost_updates"] > 0
    for strategy in ("atomic_update", "select_for_update", "serializable_retry"):
        assert race.loc[strategy, "lost_updates"] == 0, strategy
        assert ran.figures["lost_updates_per_10k"][strategy] == 0
    assert ran.figures["lost_updates_per_10k"]["read_modify_write"] > 0
    assert race.loc["serializable_retry", "retries"] > 0  # four clients on one row: the server refused some
    assert ran.figures["serializable_retries_per_10k"] == race.loc["serializable_retry", "retries_per_10k"]


def test_an_idempotency_key_stops_double_submits(ran: LessonResult) -> None:
    dup = ran.outputs["races"]["double_submit"].set_index("method")
    assert dup.loc["check_then_insert", "duplicates"] > 0
    assert dup.loc["idempotency_key", "duplicates"] == 0
    assert ran.figures["duplicates_with_idempotency_key"] == 0


def test_a_hot_row_makes_writers_wait_and_the_roll_up_is_exact(ran: LessonResult) -> None:
    hot = ran.outputs["hot_rows"]
    assert hot["roll_up"]["counter_right"], "the counter must hold every increment, appended or not"
    waits = ran.figures["hot_row_lock_wait_share"]
    assert waits["1"] == 0 and waits["8"] > 0
    runs = hot["runs"]
    assert (runs.loc[runs["method"].str.startswith("append"), "lock_wait_share"] == 0).all()
    assert all(tps > 0 for tps in ran.figures["hot_row_tps"].values())


def test_an_open_transaction_holds_back_vacuum(ran: LessonResult) -> None:
    mvcc = ran.figures["mvcc"]
    assert mvcc["dead_not_removable_open"] == transactions.MVCC_ROWS * 3
    assert mvcc["heap_fetches_open"] > 0
    assert mvcc["dead_not_removable_closed"] == 0 and mvcc["heap_fetches_closed"] == 0
    share = ran.figures["hot_update_share"]
    assert share["fillfactor_70"] > share["fillfactor_100"]


def test_lazy_loading_sends_one_statement_per_conversation(ran: LessonResult) -> None:
    n1 = ran.outputs["the_orm"]["n_plus_one"].set_index("loading")
    n = int(n1.loc["lazy", "conversations"])
    assert n == transactions.ORM_CONVERSATIONS
    assert ran.figures["orm_statements"] == {"lazy": 1 + n, "selectinload": 2, "joinedload": 1}
    assert n1["messages"].nunique() == 1 and n1["conversations"].nunique() == 1  # the same rows, three ways
    bulk = ran.figures["bulk_insert_statements"]
    assert bulk["unit_of_work_row_by_row"] == transactions.BULK_ROWS and bulk["copy"] == 1


def test_the_lesson_refuses_a_read_only_target(lab: LocalCluster) -> None:
    from types import SimpleNamespace

    from workbook.cluster import Target
    from workbook.errors import ReadOnlyTarget

    read_only = SimpleNamespace(target=Target.from_dsn(lab.target().primary.dsn))  # the steps use only lab.target
    with pytest.raises(ReadOnlyTarget):
        transactions.constraints(read_only)  # type: ignore[arg-type]
    with lab.target().connect() as conn:  # refused before anything was created
        assert conn.execute("SELECT to_regnamespace('shipped_fast')").fetchone() == (None,)


def test_notebook_runs_headless_and_stores_the_same_figures(
    lab: LocalCluster, ran: LessonResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBOOK_HOME", str(lab.home))
    monkeypatch.delenv("WORKBOOK_DSN", raising=False)
    before = _state(lab)
    with lab.target().connect() as conn:
        started = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    out = run_notebook(NOTEBOOK)  # the lesson is registered in workbook/lessons/__init__.py: the kernel finds it
    for needle in ("ForeignKeyViolation", "read_modify_write", "Lock:transactionid", "dead_not_removable",
                   "selectinload", "'pristine': True", "not quite: 6 measured"):  # fmt: skip
        assert needle in out, needle
    after = _state(lab)
    assert after == before, "the notebook left the dataset or the catalog changed"
    assert is_pristine(lab.target()) is True
    stored = ResultsStore(lab.home).lessons()
    mine = stored[(stored["lesson"] == "transactions") & (stored["source"] == "notebook") & (stored["created_at"] >= started)]
    assert len(mine) == 1
    assert figure_keys(mine["figures"].iloc[0]) == figure_keys(ran.figures)



def test_notebook_builder_writes_the_committed_notebook(tmp_path: Path) -> None:
    assert built_notebook(tmp_path, NOTEBOOK.stem) == NOTEBOOK.read_text(), "run python notebooks/_build.py"
