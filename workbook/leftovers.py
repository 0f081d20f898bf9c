"""Indexes and statistics a killed run left behind, found by the mark the workbook puts on them.

A real index knob (:class:`~workbook.experiment.knobs.Index`, ``compare --real``) and a
:class:`~workbook.experiment.knobs.Statistics` knob change the database for everyone until they
are reverted. A run killed with ``kill -9`` never reverts, and the object it left skews every
later verdict (the "baseline" now has the index). So whatever such a knob creates carries a
comment naming the session that created it::

    workbook: built by index messages_org_created on; backend 4242 started 2026-11-30 03:01:02.5+00

:func:`find_leftovers` lists marked objects whose session is gone (a live session's object is in
use and left alone). :func:`sweep_leftovers` drops them on the local cluster and reports them on
an external target (it is your database: the workbook says what to drop and does not). The CLI
and :func:`workbook.open_lab` sweep before they measure, and ``workbook dataset``/``status`` list
what is left.

A non-concurrent build is created and marked in one transaction, so it is never unmarked; a
``CONCURRENTLY`` build is marked right after it completes (it cannot share a transaction), so a
kill in that instant leaves an unmarked index. An index knob with ``on=False`` drops an index
that existed; killed, it cannot put it back, and nothing marks an absence: that is said in the
knob's docstring.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from .statement import fetch_rows

if TYPE_CHECKING:
    import psycopg

    from .cluster.target import Target

MARK = "workbook: built by "
_OWNER = re.compile(r"; backend (\d+) started (.+)$")

_FIND = """
SELECT 'index' AS kind, n.nspname, c.relname, t.relname, d.description, pg_relation_size(c.oid)
FROM pg_description d
JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass AND c.relkind = 'i'
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_index i ON i.indexrelid = c.oid
JOIN pg_class t ON t.oid = i.indrelid
WHERE d.description LIKE 'workbook: built by %%'
UNION ALL
SELECT 'statistics', n.nspname, e.stxname, t.relname, d.description, 0
FROM pg_description d
JOIN pg_statistic_ext e ON e.oid = d.objoid AND d.classoid = 'pg_statistic_ext'::regclass
JOIN pg_namespace n ON n.oid = e.stxnamespace
JOIN pg_class t ON t.oid = e.stxrelid
WHERE d.description LIKE 'workbook: built by %%'
ORDER BY 1, 2, 3
"""


@dataclass(frozen=True)
class Leftover:
    """A marked index or statistics object, and whether the session that built it still runs."""

    kind: str  # "index" or "statistics"
    schema: str
    name: str
    table: str
    built_by: str
    owner_alive: bool
    size_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def drop_sql(self) -> sql.Composed:
        what = sql.SQL("INDEX") if self.kind == "index" else sql.SQL("STATISTICS")
        return sql.SQL("DROP {} IF EXISTS {}").format(what, sql.Identifier(self.schema, self.name))

    def describe(self) -> str:
        return f"{self.kind} {self.schema}.{self.name} on {self.table} ({self.built_by})"


def owner_mark(conn: psycopg.Connection[Any], what: str) -> str:
    """The comment for an object this session builds: what built it, and which backend."""
    pid, started = fetch_rows(
        conn, "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    )[0]
    return f"{MARK}{what}; backend {pid} started {started}"


def mark(conn: psycopg.Connection[Any], kind: str, schema: str, name: str, what: str) -> None:
    """Put the owner mark on an index or statistics object this session just built."""
    on = sql.SQL("INDEX") if kind == "index" else sql.SQL("STATISTICS")
    fetch_rows(conn, sql.SQL("COMMENT ON {} {} IS {}").format(
        on, sql.Identifier(schema, name), sql.Literal(owner_mark(conn, what))))  # fmt: skip


def find_leftovers(conn: psycopg.Connection[Any], *, include_live: bool = False) -> list[Leftover]:
    """Marked objects whose building session is gone (or every marked one, ``include_live``)."""
    alive = {
        (int(pid), str(started))
        for pid, started in fetch_rows(conn, "SELECT pid, backend_start::text FROM pg_stat_activity WHERE backend_start IS NOT NULL")
    }
    out = []
    for kind, schema, name, table, comment, size in fetch_rows(conn, _FIND):
        m = _OWNER.search(comment)
        live = bool(m) and (int(m.group(1)), m.group(2)) in alive  # type: ignore[union-attr]
        built_by = comment[len(MARK) : m.start()] if m else comment[len(MARK) :]
        if live and not include_live:
            continue
        out.append(Leftover(kind, schema, name, table, built_by, live, int(size)))
    return out


def sweep_leftovers(
    target: Target, *, drop: bool | None = None, say: Callable[[str], None] | None = None
) -> list[Leftover]:
    """Find what killed runs left; drop it (the local cluster, or ``drop=True``) or report it.

    Returns the leftovers found; ``say`` gets one line for each (dropped, or what to run).
    """
    drop = target.kind == "local" if drop is None else drop
    if drop:
        target.require_writes("dropping indexes a killed run left behind")
    with target.connect() as conn:
        found = find_leftovers(conn)
        for item in found:
            if drop:
                with conn.transaction():
                    fetch_rows(conn, "SELECT set_config('lock_timeout', '5s', true)")
                    fetch_rows(conn, item.drop_sql())
                    if item.kind == "statistics":  # the planner forgets them only when re-analyzed
                        fetch_rows(conn, sql.SQL("ANALYZE {}").format(sql.Identifier(item.schema, item.table)))
                if say:
                    say(f"note: dropped {item.describe()}, left behind by a run that was killed; "
                        "later verdicts would have measured with it")  # fmt: skip
            elif say:
                say(f"warning: {item.describe()} was left behind by a killed run and skews later verdicts; "
                    f"drop it with: {item.drop_sql().as_string(conn)}")  # fmt: skip
    _sweep_slow_plan_capture(target, drop=drop, say=say)
    return found


def _sweep_slow_plan_capture(target: Target, *, drop: bool, say: Callable[[str], None] | None) -> None:
    """A slow-plan capture killed mid-run leaves auto_explain switched on for the database: undo it
    (or, where nothing is dropped, say so), unless that capture is still running."""
    from .errors import WorkbookError
    from .experiment import slow_plans

    if not drop:
        with target.connect() as conn:
            if slow_plans.left_on(conn) and say:
                say("warning: a slow-plan capture that was killed (or is running) left auto_explain switched on for "
                    "this database; the next capture (workbook bench --slow-plans MS --allow-writes) puts the "
                    "previous settings back")  # fmt: skip
        return
    try:
        previous = slow_plans.restore_leftover(target)
    except WorkbookError:  # a capture in progress owns the settings
        return
    if previous is not None and say:
        say("note: switched auto_explain off again, left on by a slow-plan capture that was killed")
