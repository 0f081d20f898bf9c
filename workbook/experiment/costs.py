"""What an index costs: build time, size, and the slow-down of the writes that must maintain it.

Measured, not estimated. Each round runs the write shapes ``reps`` times in a transaction without
the index and ``reps`` times in a transaction with it (built inside that transaction), both rolled
back, the order alternating between rounds so neither side always goes first. Nothing is left:
not the index, not the rows written.

For a table that no write shape of the catalog touches (any table of your own database), the
writes are a bulk ``INSERT`` of a sample of its own rows into an empty copy of it (``LIKE ...
INCLUDING ALL``) created inside the rolled-back transaction: index maintenance is paid per row
with the table's real value distribution.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..dataset.indexes import IndexSpec
from ..dataset.shapes import QueryShape, load_shapes
from ..statement import fetch_rows
from .knobs import IndexCost, _index_size
from .timing import bootstrap_ratio
from .wire import wire_runner

if TYPE_CHECKING:
    import psycopg

    from ..cluster.target import Target


def write_shapes_for(table: str) -> list[QueryShape]:
    """The catalog's write shapes that write to ``table`` (a name in the sample schema)."""
    return [s for s in load_shapes().values() if s.kind == "write" and table in s.tables]


def index_costs(
    target: Target,
    spec: IndexSpec,
    *,
    shapes: list[QueryShape] | None = None,
    rounds: int = 4,
    reps: int = 25,
    tier: str = "hot",
    sample_rows: int = 1000,
    lock_timeout_s: float = 10.0,
) -> IndexCost:
    """Build time, size and write slow-down (with/without, 95 % CI) of ``spec``; leaves nothing behind."""
    target.require_writes(f"measuring the cost of index {spec.name!r} (everything is rolled back)")
    shapes = write_shapes_for(spec.table) if shapes is None and spec.schema == "ai_app" else (shapes or [])
    cost = IndexCost(spec.name, write_shapes=tuple(s.name for s in shapes) or ("bulk insert of sample rows",))
    without: list[float] = []
    with_: list[float] = []
    with target.connect() as conn:
        for r in range(rounds):
            for indexed in ((False, True) if r % 2 == 0 else (True, False)):
                with conn.transaction(force_rollback=True):  # one fresh transaction per side, rolled back
                    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_s * 1000)}ms",))
                    if shapes:
                        work, build = _shape_writes(conn, shapes, tier, r), spec
                    else:
                        work, build = _bulk_copy_writes(conn, spec, sample_rows)
                    if indexed:
                        t0 = time.perf_counter()
                        fetch_rows(conn, build.create())
                        if cost.build_seconds is None and build is spec:
                            cost.build_seconds = round(time.perf_counter() - t0, 4)
                            cost.size_bytes = _index_size(conn, spec)
                    work(3)  # untimed: the first executions prepare statements and load pages
                    (with_ if indexed else without).extend(work(reps))
    if cost.build_seconds is None:  # generic path: build and size of the real index, rolled back too
        with target.connect() as conn, conn.transaction(force_rollback=True):
            t0 = time.perf_counter()
            fetch_rows(conn, spec.create())
            cost.build_seconds = round(time.perf_counter() - t0, 4)
            cost.size_bytes = _index_size(conn, spec)
    ratio, lo, hi = bootstrap_ratio(with_, without)
    cost.write_ratio, cost.write_ci = round(ratio, 4), (round(lo, 4), round(hi, 4))
    return cost


def _shape_writes(
    conn: psycopg.Connection[Any], shapes: list[QueryShape], tier: str, round_: int
) -> Callable[[int], list[float]]:
    # prepared and timed at libpq (workbook.experiment.wire); the caller's transaction rolls them all back
    runners = [wire_runner(conn, s, s.default_variant, [s.sample(conn, tier, round_)], rollback_writes=False) for s in shapes]

    def work(reps: int) -> list[float]:
        out = []
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            for run in runners:
                run()
            out.append((time.perf_counter_ns() - t0) / 1e6)
        return out

    return work


def _bulk_copy_writes(
    conn: psycopg.Connection[Any], spec: IndexSpec, sample_rows: int
) -> tuple[Callable[[int], list[float]], IndexSpec]:
    copy_name = f"wb_cost_{spec.table}"[:63]
    src = sql.Identifier(spec.schema, spec.table)
    dst = sql.Identifier(spec.schema, copy_name)
    sample = sql.Identifier("wb_cost_sample")
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(dst, src))
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT * FROM {} LIMIT {}").format(
        sample, src, sql.Literal(sample_rows)))  # fmt: skip
    build = dataclasses.replace(spec, table=copy_name, name=f"wb_cost_{spec.name}"[:63])
    insert = sql.SQL("INSERT INTO {} SELECT * FROM {}").format(dst, sample)
    truncate = sql.SQL("TRUNCATE {}").format(dst)

    def work(reps: int) -> list[float]:
        out = []
        for _ in range(max(1, reps // 5)):  # each rep is a few thousand rows: fewer, bigger samples
            conn.execute(truncate)
            t0 = time.perf_counter_ns()
            conn.execute(insert)
            out.append((time.perf_counter_ns() - t0) / 1e6)
        return out

    return work, build
