"""The load plan: schema.sql split into tables and foreign keys, lanes, finishing steps, the board.

The loader runs this plan against a real server (tests/test_dataset_load.py checks the result: every
foreign key validated, every table analyzed, rows frozen); these tests pin the plan's logic that
a load cannot show on its own: no step runs before what it needs, and a plan that can never finish
fails loudly instead of hanging.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from workbook.dataset.generator import Generator
from workbook.dataset.load_plan import COPIED, DERIVED, Board, Schema, Step, finishing_steps, lanes
from workbook.errors import WorkbookError


@pytest.fixture(scope="module")
def schema() -> Schema:
    return Schema.read()


def test_schema_sql_splits_into_every_table_and_every_foreign_key(schema: Schema) -> None:
    streams = [s.name for s in Generator(42, 0.01).tables()]
    assert set(schema.tables) == {*streams, "invoices"}
    assert all(ddl.startswith(f"CREATE TABLE {t} (") and ddl.endswith(");") for t, ddl in schema.tables.items())
    assert len(schema.foreign_keys) == 23
    assert {(fk.child, fk.parent) for fk in schema.foreign_keys} >= {
        ("messages", "conversations"), ("usage_events", "messages"), ("chunks", "documents"), ("invoices", "organisations"),
    }  # fmt: skip
    # the generator emits parents before children: the rest lane's order is a valid load order
    position = {t: i for i, t in enumerate(streams)}
    assert all(position[fk.parent] < position[fk.child] for fk in schema.foreign_keys if fk.child != "invoices")


def test_messages_has_a_lane_of_its_own_and_every_table_is_copied_once() -> None:
    streams = [s.name for s in Generator(42, 0.01).tables()]
    big, rest = lanes(streams)
    assert big == ["messages"]
    assert rest == [t for t in streams if t != "messages"]


def test_every_foreign_key_analyze_and_sequence_waits_for_the_tables_it_reads(schema: Schema) -> None:
    streams = [s.name for s in Generator(42, 0.01).tables()]
    steps = {s.name: s for s in finishing_steps(schema, streams, {})}
    for fk in schema.foreign_keys:
        step = steps[f"foreign key {fk.child} -> {fk.parent}"]
        child = DERIVED if fk.child == "invoices" else COPIED.format(fk.child)
        assert step.needs == {child, COPIED.format(fk.parent)}
    for table in [*streams, "invoices"]:
        assert f"analyze {table}" in steps and f"sequence of {table}" in steps
    # tokens_this_month is derived after the COPY: organisations' statistics must come after it
    assert DERIVED in steps["analyze organisations"].needs
    assert steps["derive invoices and organisations.tokens_this_month"].gives == DERIVED


def test_a_table_the_generator_does_not_fill_is_refused(schema: Schema) -> None:
    streams = [s.name for s in Generator(42, 0.01).tables() if s.name != "chunks"]
    with pytest.raises(WorkbookError, match="chunks"):
        finishing_steps(schema, streams, {})


def test_the_board_runs_each_step_after_what_it_needs_across_sessions() -> None:
    """Two 'lanes' mark events at different times; three sessions share the steps."""
    ran: list[tuple[str, float]] = []
    marked: dict[str, float] = {}
    lock = threading.Lock()

    def step(name: str, *needs: str, gives: str | None = None) -> Step:
        def run(conn: Any) -> None:
            time.sleep(0.01)
            with lock:
                ran.append((name, time.monotonic()))

        return Step(name, frozenset(needs), run, gives)

    steps = [step("d", "c", "x"), step("a", "copied:1"), step("b", "copied:1", "copied:2", gives="c"), step("e", "copied:2")]
    board = Board(steps, copying=2)

    def lane(events: list[str], delay: float) -> None:
        for e in events:
            time.sleep(delay)
            with lock:
                marked[e] = time.monotonic()
            board.mark(e)
        board.work(None)  # type: ignore[arg-type]

    threads = [threading.Thread(target=lane, args=(["copied:1"], 0.02)), threading.Thread(target=lane, args=(["copied:2", "x"], 0.05))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert board.error is None
    when = dict(ran)
    assert sorted(when) == ["a", "b", "d", "e"]
    assert when["a"] > marked["copied:1"] and when["e"] > marked["copied:2"]
    assert when["b"] > max(marked["copied:1"], marked["copied:2"])
    assert when["d"] > max(when["b"], marked["x"])


def test_a_plan_that_can_never_finish_fails_instead_of_hanging() -> None:
    ran: list[str] = []
    board = Board([Step("orphan", frozenset({"copied:nowhere"}), lambda conn: ran.append("orphan"))], copying=1)
    done = threading.Event()

    def lane() -> None:
        board.work(None)  # type: ignore[arg-type]
        done.set()

    threading.Thread(target=lane, daemon=True).start()
    assert done.wait(5), "the board waited forever for an event nothing gives"
    assert ran == []
    assert isinstance(board.error, WorkbookError) and "orphan" in str(board.error) and "copied:nowhere" in str(board.error)


def test_a_failing_step_stops_every_session_and_is_the_error_reported() -> None:
    def boom(conn: Any) -> None:
        raise RuntimeError("validation failed")

    later: list[str] = []
    board = Board(
        [Step("first", frozenset(), boom), Step("second", frozenset({"copied:t"}), lambda conn: later.append("second"))],
        copying=2,
    )
    with pytest.raises(RuntimeError):
        board.work(None)  # type: ignore[arg-type]
    board.mark("copied:t")
    board.work(None)  # type: ignore[arg-type]  # the other session: finds the board failed
    assert later == []
    assert isinstance(board.error, RuntimeError) and "validation failed" in str(board.error)
