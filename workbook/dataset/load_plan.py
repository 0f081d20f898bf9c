"""The load as steps with dependencies: which tables each COPY lane fills, what finishes them.

``schema.sql`` is split like a pg_dump: the tables (with their primary keys, unique and check
constraints) are created before their rows are copied, the foreign keys added after, each
validated by one join. Here that file becomes a plan the loader's sessions work through together:

* **lanes**: the tables each COPY session fills, in order. ``messages`` holds ~60 % of the bytes,
  so it has a lane of its own and every other table shares the second one; a server backend
  ingests one COPY at a time on one core, so two lanes keep both cores of a small machine busy.
* **finishing steps**, each run as soon as the tables it reads are committed: every ``ADD FOREIGN
  KEY`` (child and parent in), ``ANALYZE`` of each table, moving each identity sequence past the
  ids loaded, and deriving ``invoices`` and ``organisations.tokens_this_month`` from
  ``usage_events``. Each step is one transaction: a step holds its locks only while it runs, so
  two sessions' steps can wait for each other but never deadlock.

:class:`Board` hands the steps out to whichever session is free, in the order listed here.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..errors import WorkbookError
from .paths import dataset_dir

#: the lane of its own: the table that is most of the bytes
BIG_TABLE = "messages"
#: the event a step waits for: the table's COPY committed
COPIED = "copied:{}"
DERIVED = "derived"

_TABLE = re.compile(r"^CREATE TABLE (\w+) \(.*?^\);", re.MULTILINE | re.DOTALL)
_FOREIGN_KEY = re.compile(r"^ALTER TABLE\s+(\w+)\s+ADD FOREIGN KEY\s*\([^)]*\)\s*REFERENCES\s+(\w+)\b[^;]*;", re.MULTILINE)

INVOICES_SQL = """
INSERT INTO invoices (id, org_id, period_start, period_end, total_tokens, amount_usd, status)
SELECT row_number() OVER (ORDER BY m.month, m.org_id),
       m.org_id, m.month::date, (m.month + interval '1 month')::date, m.tokens,
       round(m.cost * CASE o.plan WHEN 'enterprise' THEN 0.8 WHEN 'team' THEN 0.9 ELSE 1.0 END
             + CASE o.plan WHEN 'pro' THEN 20 WHEN 'team' THEN 30 * 5 WHEN 'enterprise' THEN 2000 ELSE 0 END, 2),
       CASE WHEN m.month = max(m.month) OVER () THEN 'open'
            WHEN (m.org_id * 7 + extract(month FROM m.month)::int) % 19 = 0 THEN 'overdue'
            ELSE 'paid' END
FROM (SELECT org_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC') AS month,
             sum(prompt_tokens + completion_tokens) AS tokens, sum(cost_usd) AS cost
      FROM usage_events GROUP BY 1, 2) m
JOIN organisations o ON o.id = m.org_id
"""

TOKENS_THIS_MONTH_SQL = """
UPDATE organisations o SET tokens_this_month = u.tokens
FROM (SELECT org_id, sum(prompt_tokens + completion_tokens) AS tokens FROM usage_events
      WHERE occurred_at >= date_trunc('month', (SELECT max(occurred_at) FROM usage_events))
      GROUP BY org_id) u
WHERE u.org_id = o.id
"""


def schema_sections() -> dict[str, str]:
    """The sections of ``schema.sql`` ("tables", "constraints") as SQL text."""
    text = (dataset_dir() / "schema.sql").read_text()
    parts = re.split(r"^-- section: (\w+)\s*$", text, flags=re.MULTILINE)
    sections = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    if set(sections) != {"tables", "constraints"}:
        raise WorkbookError(f"schema.sql must have the sections 'tables' and 'constraints', found {sorted(sections)!r}")
    return sections


@dataclass(frozen=True)
class ForeignKey:
    child: str
    parent: str
    ddl: str  # the ALTER TABLE ... ADD FOREIGN KEY statement from schema.sql


@dataclass(frozen=True)
class Schema:
    """``schema.sql`` by table: each table's CREATE TABLE and the foreign keys to add after its rows."""

    tables: dict[str, str]
    foreign_keys: tuple[ForeignKey, ...]

    @classmethod
    def read(cls) -> Schema:
        sections = schema_sections()
        tables = {m.group(1): m.group(0) for m in _TABLE.finditer(sections["tables"])}
        fks = tuple(ForeignKey(m.group(1), m.group(2), m.group(0)) for m in _FOREIGN_KEY.finditer(sections["constraints"]))
        statements = sections["constraints"].count(";")
        if len(fks) != statements:
            raise WorkbookError(
                f"schema.sql's constraints section has {statements} statements but {len(fks)} are "
                "'ALTER TABLE <child> ADD FOREIGN KEY (...) REFERENCES <parent> ...;': write each foreign key that way"
            )
        unknown = {t for fk in fks for t in (fk.child, fk.parent)} - set(tables)
        if unknown:
            raise WorkbookError(f"schema.sql has foreign keys on tables it does not create: {sorted(unknown)}")
        return cls(tables, fks)


Run = Callable[[psycopg.Connection[Any]], None]


@dataclass(frozen=True)
class Step:
    """One finishing statement (or transaction): runs once everything in ``needs`` has happened."""

    name: str
    needs: frozenset[str]
    run: Run
    gives: str | None = None  # the event it marks when done


def _statement(query: sql.Composed | sql.SQL | str) -> Run:
    def run(conn: psycopg.Connection[Any]) -> None:
        conn.execute(query)

    return run


def _add_foreign_key(fk: ForeignKey, rows: dict[str, int]) -> Run:
    def run(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            if rows.get(fk.parent, 0) > rows.get(fk.child, 0):
                # The validating join (child LEFT JOIN parent WHERE parent key IS NULL) is planned
                # as a hash of the child probed with every parent key; when the parent is the
                # bigger side, those probes miss the CPU caches. Measured for usage_events ->
                # messages at SF 1: 0.65 s hashed, 0.24 s merged against the primary key's
                # index-only scan (COPY FREEZE leaves every page all-visible). So merge.
                conn.execute("SET LOCAL enable_hashjoin = off")
            conn.execute(fk.ddl)

    return run


def _derive(schema: Schema, rows: dict[str, int]) -> Run:
    def run(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute(schema.tables["invoices"])
            rows["invoices"] = conn.execute(INVOICES_SQL).rowcount
            conn.execute(TOKENS_THIS_MONTH_SQL)

    return run


def _setval(table: str) -> Run:
    return _statement(
        sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), (SELECT max(id) FROM {}))").format(
            sql.Literal(table), sql.Identifier(table)
        )
    )


def lanes(tables: Iterable[str]) -> tuple[list[str], list[str]]:
    """The two COPY lanes: the big table alone, every other table in the given (foreign-key) order."""
    order = list(tables)
    return [t for t in order if t == BIG_TABLE], [t for t in order if t != BIG_TABLE]


def finishing_steps(schema: Schema, copied: Iterable[str], rows: dict[str, int]) -> list[Step]:
    """Every step after the COPYs, in the order a free session should prefer them.

    ``copied``: the tables the lanes fill (all but ``invoices``, which is derived). ``rows`` is
    filled in as tables commit; steps read it when they run.
    """
    copied = list(copied)
    have = {t: frozenset({COPIED.format(t)}) for t in copied}
    have["invoices"] = frozenset({DERIVED})
    missing = set(schema.tables) - set(have)
    if missing:
        raise WorkbookError(f"the generator has no rows for the tables {sorted(missing)} that schema.sql creates")
    steps = [
        Step(
            "derive invoices and organisations.tokens_this_month",
            have["usage_events"] | have["organisations"],
            _derive(schema, rows),
            gives=DERIVED,
        )
    ]
    # foreign keys first: the ones on the big tables are the longest and nothing else needs them
    for fk in sorted(schema.foreign_keys, key=lambda k: k.child != BIG_TABLE):
        steps.append(Step(f"foreign key {fk.child} -> {fk.parent}", have[fk.child] | have[fk.parent], _add_foreign_key(fk, rows)))
    for table in [*copied, "invoices"]:
        # organisations is analyzed after the derivation has filled in tokens_this_month
        needs = have[table] | (frozenset({DERIVED}) if table == "organisations" else frozenset())
        steps.append(Step(f"analyze {table}", needs, _statement(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))))
        steps.append(Step(f"sequence of {table}", have[table], _setval(table)))
    return steps


class Board:
    """Finishing steps handed to whichever session is free, as soon as what they need has happened.

    Sessions mark events (``copied:<table>``), :meth:`take` a ready step, and report it
    :meth:`done`. The first failure stops everyone: :meth:`take` then returns None.
    """

    def __init__(self, steps: list[Step], copying: int) -> None:
        self._pending = list(steps)
        self._events: set[str] = set()
        self._cond = threading.Condition()
        self._busy = copying  # sessions copying or running a step
        self.error: BaseException | None = None

    def mark(self, event: str) -> None:
        with self._cond:
            self._events.add(event)
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """Record the first failure; every session stops at its next step."""
        with self._cond:
            if self.error is None:
                self.error = exc
            self._cond.notify_all()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def take(self) -> Step | None:
        """The first ready step (the caller is busy until it finishes); None when all are done or one failed."""
        with self._cond:
            while True:
                if self.error is not None or not self._pending:
                    return None
                for i, step in enumerate(self._pending):
                    if step.needs <= self._events:
                        self._busy += 1
                        return self._pending.pop(i)
                if self._busy == 0:  # nobody can mark what the rest wait for
                    waiting = {s.name: sorted(s.needs - self._events) for s in self._pending}
                    self.error = WorkbookError(f"the load plan is stuck: these steps wait for events nothing gives: {waiting}")
                    self._cond.notify_all()
                    return None
                self._cond.wait()

    def _finished(self, step: Step | None) -> None:
        with self._cond:
            if step is not None and step.gives:
                self._events.add(step.gives)
            self._busy -= 1
            self._cond.notify_all()

    def work(self, conn: psycopg.Connection[Any]) -> None:
        """Run ready steps on ``conn`` until none are left (the caller has just become free)."""
        self._finished(None)
        while (step := self.take()) is not None:
            try:
                step.run(conn)
            except BaseException as exc:
                # recorded before this session counts as free, so nobody reports "stuck" instead
                self.fail(WorkbookError(f"{step.name}: {exc}") if isinstance(exc, psycopg.Error) else exc)
                self._finished(None)
                raise
            self._finished(step)
