"""Knobs: reversible changes an experiment toggles, each with ``apply(conn)``/``revert(conn)``.

Every knob is idempotent (applying twice is applying once; reverting what was never applied does
nothing) and remembers the state it found, so ``revert`` restores exactly that state rather than
a default. ``with knob.applied(conn): ...`` reverts even when the body fails.

A knob's **scope** says how far its change reaches, and so how an experiment can use it:

* ``session``: only the connection it was applied on (a setting). Two connections, one with the
  knob and one without, can be timed in interleaved turns.
* ``transaction``: a what-if index, created in a transaction that is always rolled back. Other
  connections do not see it (so they can be the baseline, interleaved), and nothing is left.
* ``database``: a real index, statistics. Everyone sees it; before/after is measured in sequence.
* ``query``: a query-shape variant: nothing changes on the server.

SQL identifiers are composed with :mod:`psycopg.sql`; setting names go through ``set_config``.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..dataset.indexes import IndexSpec
from ..errors import WorkbookError
from ..leftovers import mark
from ..statement import fetch_rows

if TYPE_CHECKING:
    import psycopg

class Knob:
    """Base: subclasses set ``scope`` and implement ``_apply`` (returning what ``_revert`` needs to
    restore the state it found) and ``_revert``.

    What a knob found is kept per connection, not on the knob: the same knob can be applied to
    two arms' connections and reverted on each without one arm's state leaking into the other's.
    """

    scope: str = "session"

    def __init__(self) -> None:
        self._found: dict[int, Any] = {}  # id(connection) -> what _apply found there

    @property
    def label(self) -> str:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"knob": type(self).__name__, "label": self.label, "scope": self.scope}

    def is_applied(self, conn: psycopg.Connection[Any]) -> bool:
        return id(conn) in self._found

    def apply(self, conn: psycopg.Connection[Any]) -> None:
        """Apply on ``conn`` (a no-op when it already is)."""
        if id(conn) in self._found:
            return
        self._found[id(conn)] = self._apply(conn)

    def revert(self, conn: psycopg.Connection[Any]) -> None:
        """Restore on ``conn`` what ``apply`` found there (a no-op when it was not applied)."""
        if id(conn) not in self._found:
            return
        self._revert(conn, self._found.pop(id(conn)))

    @contextmanager
    def applied(self, conn: psycopg.Connection[Any]) -> Iterator[Knob]:
        self.apply(conn)
        try:
            yield self
        finally:
            self.revert(conn)

    def _apply(self, conn: psycopg.Connection[Any]) -> Any:
        raise NotImplementedError

    def _revert(self, conn: psycopg.Connection[Any], found: Any) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"


# --------------------------------------------------------------------------- settings
class Setting(Knob):
    """A server setting for this session only: ``Setting("work_mem", "64MB")``."""

    scope = "session"

    def __init__(self, name: str, value: str | int | float | bool) -> None:
        super().__init__()
        self.name = name
        self.value = ("on" if value else "off") if isinstance(value, bool) else str(value)

    @property
    def label(self) -> str:
        return f"{self.name} = {self.value}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": self.name, "value": self.value}

    def _apply(self, conn: psycopg.Connection[Any]) -> str:
        row = conn.execute("SELECT setting, context FROM pg_settings WHERE name = %s", (self.name,)).fetchone()
        if row is None:
            names = [r[0] for r in conn.execute("SELECT name FROM pg_settings").fetchall()]
            near = difflib.get_close_matches(self.name, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else "; see SELECT name FROM pg_settings"
            raise WorkbookError(f"unknown setting {self.name!r}{hint}")
        if row[1] not in ("user", "superuser"):
            raise WorkbookError(
                f"setting {self.name!r} cannot be changed for one session (its context is {row[1]!r}); "
                "it needs a server restart or reload, which an experiment does not do"
            )
        previous = str(conn.execute("SELECT current_setting(%s)", (self.name,)).fetchone()[0])  # type: ignore[index]
        try:
            conn.execute("SELECT set_config(%s, %s, false)", (self.name, self.value))
        except Exception as exc:
            raise WorkbookError(f"cannot set {self.name} = {self.value!r}: {' '.join(str(exc).split())}") from None
        return previous

    def _revert(self, conn: psycopg.Connection[Any], found: str) -> None:
        conn.execute("SELECT set_config(%s, %s, false)", (self.name, found))


# --------------------------------------------------------------------------- indexes
@dataclass
class IndexCost:
    """What an index costs: build time, size, and (when measured) insert slow-down."""

    name: str
    build_seconds: float | None = None
    size_bytes: int | None = None
    write_ratio: float | None = None  # insert time with the index / without (1.0 = free)
    write_ci: tuple[float, float] | None = None
    write_shapes: tuple[str, ...] = ()


def _index_exists(conn: psycopg.Connection[Any], spec: IndexSpec) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s", (spec.schema, spec.name)
    ).fetchone()
    return row is not None


def _index_size(conn: psycopg.Connection[Any], spec: IndexSpec) -> int:
    ident = sql.Identifier(spec.schema, spec.name).as_string(conn)
    return int(conn.execute("SELECT pg_relation_size(%s::regclass)", (ident,)).fetchone()[0])  # type: ignore[index]


class _IndexKnob(Knob):
    """What both index knobs share: the spec, and the cost measured when it is built."""

    def __init__(self, spec: IndexSpec) -> None:
        super().__init__()
        self.spec = spec
        self.cost = IndexCost(spec.name)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "index": self.spec.name, "table": f"{self.spec.schema}.{self.spec.table}",
                "build_seconds": self.cost.build_seconds, "size_bytes": self.cost.size_bytes,
                "ddl": self.spec.create(concurrently=True).as_string(None)}  # fmt: skip


class Index(_IndexKnob):
    """A real index, on (``on=True``) or off; revert restores what was there before.

    ``concurrently`` builds/drops without blocking writers (needs an autocommit connection).
    The build's time and the index's size are recorded in :attr:`cost`. An index it builds is
    marked as built by this session, so one left by a killed run is found and dropped by the
    next command (:mod:`workbook.leftovers`); an index that ``on=False`` dropped is
    not put back by a killed run (nothing can mark an absence).
    """

    scope = "database"

    def __init__(self, spec: IndexSpec, *, on: bool = True, concurrently: bool = False) -> None:
        super().__init__(spec)
        self.on = on
        self.concurrently = concurrently

    @property
    def label(self) -> str:
        return f"index {self.spec.name} {'on' if self.on else 'off'}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "on": self.on}

    def _create(self, conn: psycopg.Connection[Any]) -> None:
        # marked as this session's (workbook.leftovers): if the run is killed before it
        # reverts, the next command finds the index and drops it
        if self.concurrently:  # CONCURRENTLY cannot share a transaction with the comment
            t0 = time.perf_counter()
            fetch_rows(conn, self.spec.create(concurrently=True))
            self.cost.build_seconds = round(time.perf_counter() - t0, 4)
            mark(conn, "index", self.spec.schema, self.spec.name, self.label)
        else:
            with conn.transaction():
                t0 = time.perf_counter()
                fetch_rows(conn, self.spec.create())
                self.cost.build_seconds = round(time.perf_counter() - t0, 4)
                mark(conn, "index", self.spec.schema, self.spec.name, self.label)
        self.cost.size_bytes = _index_size(conn, self.spec)

    def _apply(self, conn: psycopg.Connection[Any]) -> bool:
        existed = _index_exists(conn, self.spec)
        if self.on and not existed:
            self._create(conn)
        elif not self.on and existed:
            fetch_rows(conn, self.spec.drop(concurrently=self.concurrently))
        return existed

    def _revert(self, conn: psycopg.Connection[Any], found: bool) -> None:
        if found and not self.on:
            fetch_rows(conn, self.spec.create(concurrently=self.concurrently))
        elif not found and self.on:
            fetch_rows(conn, self.spec.drop(concurrently=self.concurrently))


class WhatIfIndex(_IndexKnob):
    """A real index built inside a transaction that is always rolled back.

    The planner of *this* connection uses it (so plans and timings are real); other sessions
    never see it, and the rollback leaves the catalog exactly as before. While it exists the
    table takes no writes from other sessions (CREATE INDEX holds a SHARE lock): keep it short.
    """

    scope = "transaction"

    def __init__(self, spec: IndexSpec, *, lock_timeout_s: float = 10.0) -> None:
        super().__init__(spec)
        self.lock_timeout_s = lock_timeout_s

    @property
    def label(self) -> str:
        return f"what-if index {self.spec.name}"

    def _apply(self, conn: psycopg.Connection[Any]) -> Any:
        tx = conn.transaction(force_rollback=True)
        tx.__enter__()
        try:
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(self.lock_timeout_s * 1000)}ms",))
            t0 = time.perf_counter()
            fetch_rows(conn, self.spec.create())
            self.cost.build_seconds = round(time.perf_counter() - t0, 4)
            self.cost.size_bytes = _index_size(conn, self.spec)
        except BaseException as exc:
            tx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return tx

    def _revert(self, conn: psycopg.Connection[Any], found: Any) -> None:
        found.__exit__(None, None, None)


# --------------------------------------------------------------------------- statistics
def _qualified(conn: psycopg.Connection[Any], table: str) -> tuple[str, str]:
    """(schema, table) of a possibly unqualified table name, as the server resolves it."""
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(%s)",
        (table,),
    ).fetchone()
    if row is None:
        raise WorkbookError(f"no table {table!r} (give it as schema.table, e.g. ai_app.messages)")
    return str(row[0]), str(row[1])


class Statistics(Knob):
    """Extended statistics on correlated columns (``CREATE STATISTICS``), then ``ANALYZE``.

    Revert drops them and re-analyzes, so the planner forgets them again.
    """

    scope = "database"

    def __init__(self, table: str, columns: list[str] | tuple[str, ...],
                 kinds: tuple[str, ...] = ("ndistinct", "dependencies", "mcv"), name: str | None = None) -> None:  # fmt: skip
        super().__init__()
        if len(columns) < 2:
            raise WorkbookError("extended statistics need at least two columns")
        bad = [k for k in kinds if k not in ("ndistinct", "dependencies", "mcv")]
        if bad:
            raise WorkbookError(f"unknown statistics kinds {bad!r}; use ndistinct, dependencies, mcv")
        self.table = table
        self.columns = tuple(columns)
        self.kinds = kinds
        self.name = name or f"wb_stats_{table.split('.')[-1]}_{'_'.join(columns)}"[:63]

    @property
    def label(self) -> str:
        return f"statistics ({', '.join(self.kinds)}) on {self.table} ({', '.join(self.columns)})"

    def _apply(self, conn: psycopg.Connection[Any]) -> bool:
        schema, table = _qualified(conn, self.table)
        exists = conn.execute(
            "SELECT 1 FROM pg_statistic_ext e JOIN pg_namespace n ON n.oid = e.stxnamespace"
            " WHERE n.nspname = %s AND e.stxname = %s", (schema, self.name)
        ).fetchone()  # fmt: skip
        if not exists:
            with conn.transaction():  # created and marked together (workbook.leftovers)
                fetch_rows(conn,
                    sql.SQL("CREATE STATISTICS {} ({}) ON {} FROM {}").format(
                        sql.Identifier(schema, self.name),
                        sql.SQL(", ").join(sql.SQL(k) for k in self.kinds),  # checked against the fixed list above
                        sql.SQL(", ").join(map(sql.Identifier, self.columns)),
                        sql.Identifier(schema, table),
                    )
                )  # fmt: skip
                mark(conn, "statistics", schema, self.name, self.label)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
        return not exists  # whether this knob created them

    def _revert(self, conn: psycopg.Connection[Any], found: bool) -> None:
        schema, table = _qualified(conn, self.table)
        if found:
            conn.execute(sql.SQL("DROP STATISTICS IF EXISTS {}").format(sql.Identifier(schema, self.name)))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))


class StatisticsTarget(Knob):
    """A per-column statistics target (``ALTER TABLE ... SET STATISTICS n``) and a fresh ``ANALYZE``.

    Revert restores each column's previous target and re-analyzes.
    """

    scope = "database"

    def __init__(self, table: str, columns: list[str] | tuple[str, ...], target: int = 1000) -> None:
        super().__init__()
        if not 0 <= target <= 10000:
            raise WorkbookError(f"statistics target must be 0..10000, got {target!r}")
        self.table, self.columns, self.target = table, tuple(columns), int(target)

    @property
    def label(self) -> str:
        return f"statistics target {self.target} on {self.table} ({', '.join(self.columns)})"

    def _set(self, conn: psycopg.Connection[Any], schema: str, table: str, column: str, value: int) -> None:
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}").format(
                sql.Identifier(schema, table), sql.Identifier(column), sql.Literal(value)
            )
        )

    def _apply(self, conn: psycopg.Connection[Any]) -> dict[str, int]:
        schema, table = _qualified(conn, self.table)
        ident = sql.Identifier(schema, table).as_string(conn)
        previous: dict[str, int] = {}
        for col in self.columns:
            row = conn.execute(
                "SELECT coalesce(attstattarget, -1) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
                (ident, col),
            ).fetchone()
            if row is None:
                raise WorkbookError(f"table {self.table!r} has no column {col!r}")
            previous[col] = int(row[0])
        for col in self.columns:
            self._set(conn, schema, table, col, self.target)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
        return previous

    def _revert(self, conn: psycopg.Connection[Any], found: dict[str, int]) -> None:
        schema, table = _qualified(conn, self.table)
        for col, value in found.items():
            self._set(conn, schema, table, col, value)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))


# --------------------------------------------------------------------------- variants
class Variant(Knob):
    """Which way of writing the query shape to run: nothing changes on the server."""

    scope = "query"

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    @property
    def label(self) -> str:
        return f"variant {self.name}"

    def _apply(self, conn: psycopg.Connection[Any]) -> None:
        return None

    def _revert(self, conn: psycopg.Connection[Any], found: None) -> None:
        return None
