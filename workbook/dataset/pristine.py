"""The pristine dataset: a file-level copy of the database taken before anything writes to it,
and a reset that puts it back in about the time it takes to copy the files.

A write workload (the traffic engine's ``chat`` or ``ingest`` mix) really inserts and updates
rows; the lessons after it would measure a different dataset from the one its checksum names.
Reloading takes seconds per scale factor (generate, COPY, validate, analyze). PostgreSQL can copy
a whole database at file level instead (``CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY``),
which needs no re-validation or statistics and replicates to the standbys as one WAL record:

* :func:`protect` takes the copy (``<db>__pristine``) once per load, right before the first
  write, while the data is still as loaded; it records which load it copied in the copy's
  comment, so a later load makes a new one.
* :func:`mark_written` notes on the working database (its comment) that a run wrote to it;
  :func:`is_pristine` says whether the dataset is as loaded (a copy exists for this load, and no
  workbook run has written since). Writes made outside the workbook are not seen.
* :func:`reset` builds ``<db>__resetting`` from the copy, then drops the working database (its
  sessions are ended: ``WITH (FORCE)``) and renames the new one into its place. If building the
  new copy fails, nothing has been dropped.

These need the right to create databases (the local cluster's superuser has it); on a managed
server without it, :func:`reset` says so and the way back is ``workbook load``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import WorkbookError
from .loader import SCHEMA

if TYPE_CHECKING:
    import psycopg

    from ..cluster.target import Target

SUFFIX = "__pristine"
_COPY_MARK = "workbook: pristine copy of the dataset loaded at "
_WRITTEN_MARK = "workbook: written by "


@dataclass(frozen=True)
class ResetResult:
    database: str
    seconds: float
    ended_sessions: int


def _names(target: Target) -> tuple[str, str]:
    from ..cluster.target import dsn_params

    db = dsn_params(target.primary.dsn).get("dbname") or "postgres"
    if db == "postgres":
        raise WorkbookError("the dataset lives in the 'postgres' database, which cannot be reset by copy; use workbook load")
    return db, f"{db}{SUFFIX}"[:63]


def _admin(target: Target) -> psycopg.Connection[Any]:
    """A connection to the 'postgres' database of the primary (CREATE/DROP DATABASE run from there)."""
    import psycopg

    from ..cluster.target import dsn_params
    from ..errors import ConnectionFailed

    params = {**dsn_params(target.primary.dsn), "dbname": "postgres"}
    try:
        return psycopg.connect(**params, autocommit=True, connect_timeout=5, application_name="workbook")  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot reach the primary's 'postgres' database to copy the dataset: {' '.join(str(exc).split())[:200]}") from None


def _comment(conn: psycopg.Connection[Any], db: str) -> str | None:
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (db,)
    ).fetchone()
    return None if row is None else (row[0] or "")


def _loaded_at(target: Target) -> str | None:
    with target.connect() as conn:
        reg = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.dataset_info",)).fetchone()
        if reg is None or reg[0] is None:
            return None
        row = conn.execute(sql.SQL("SELECT loaded_at::text FROM {}").format(sql.Identifier(SCHEMA, "dataset_info"))).fetchone()
    return None if row is None else str(row[0])


def _strategy(conn: psycopg.Connection[Any]) -> sql.Composable:
    return sql.SQL(" STRATEGY FILE_COPY") if conn.info.server_version >= 150000 else sql.SQL("")


def _copy(conn: psycopg.Connection[Any], source: str, dest: str) -> None:
    """CREATE DATABASE dest as a file copy of source (no session may be connected to source)."""
    import psycopg

    others = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (source,)).fetchone()[0]  # type: ignore[index]
    if others:  # a template may have no sessions: end them (a reset ends them anyway)
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                     (source,))  # fmt: skip
        deadline = time.monotonic() + 5
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (source,)).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                raise WorkbookError(f"sessions on {source!r} did not end; close them and try again")
            time.sleep(0.02)
    try:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(dest), sql.Identifier(source))
                     + _strategy(conn))  # fmt: skip
    except psycopg.errors.InsufficientPrivilege:
        raise WorkbookError(
            "copying the dataset needs the right to create databases (CREATEDB), which this user lacks; "
            "after a write workload, 'workbook load' restores the dataset instead"
        ) from None


def protect(target: Target) -> bool:
    """Take the pristine copy if this load has none yet; True when one exists for this load afterwards.

    Call it before the first write: the copy is of the data as it is now.
    """
    target.require_writes("copying the dataset before a write workload")
    loaded_at = _loaded_at(target)
    if loaded_at is None:
        raise WorkbookError("no sample dataset is loaded to protect; run `workbook load` first")
    db, copy = _names(target)
    with _admin(target) as conn:
        if _comment(conn, copy) == _COPY_MARK + loaded_at:
            return True
        if (_comment(conn, db) or "").startswith(_WRITTEN_MARK):
            return False  # written since the load: too late for a pristine copy of it
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))
        _copy(conn, db, copy)
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(copy), sql.Literal(_COPY_MARK + loaded_at)))
    return True


def mark_written(target: Target, what: str) -> None:
    """Note on the working database that ``what`` wrote to the dataset."""
    db, _ = _names(target)
    with _admin(target) as conn:
        stamp = conn.execute("SELECT now()::text").fetchone()[0]  # type: ignore[index]
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(db), sql.Literal(f"{_WRITTEN_MARK}{what} at {stamp}")))  # fmt: skip


def is_pristine(target: Target) -> bool | None:
    """True: as loaded; False: a workbook run wrote to it since; None: cannot tell (no dataset)."""
    if _loaded_at(target) is None:
        return None
    db, _ = _names(target)
    with _admin(target) as conn:
        return not (_comment(conn, db) or "").startswith(_WRITTEN_MARK)


def reset(target: Target) -> ResetResult:
    """Put the dataset back as it was loaded (from the pristine copy); ends the database's sessions."""
    target.require_writes("resetting the dataset")
    db, copy = _names(target)
    fresh = f"{db}__resetting"[:63]
    t0 = time.perf_counter()
    with _admin(target) as conn:
        mark = _comment(conn, copy)
        if not mark or not mark.startswith(_COPY_MARK):
            raise WorkbookError(
                "there is no pristine copy of this dataset (it is taken before the first write workload); "
                "'workbook load' restores the dataset instead"
            )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(fresh)))
        _copy(conn, copy, fresh)  # if this fails, the working database is untouched
        ended = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,)).fetchone()[0]  # type: ignore[index]
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(fresh), sql.Identifier(db)))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(db)))
    return ResetResult(db, round(time.perf_counter() - t0, 3), int(ended))
