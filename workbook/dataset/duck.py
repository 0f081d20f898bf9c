"""A DuckDB copy of the loaded dataset, for the analytical-query comparison.

:func:`to_duckdb` reads every table out of PostgreSQL with ``COPY ... TO STDOUT`` (one table at a
time through a temporary CSV file next to the DuckDB file, so memory stays flat) and writes it into
a DuckDB database with matching column types: JSONB becomes DuckDB ``JSON`` holding PostgreSQL's
own text of the value, ``vector(384)`` becomes ``FLOAT[384]``. The copy reads what the server
holds, not what the generator would make, and :func:`workbook.dataset.checksum.duckdb_checksum`
proves it: the DuckDB checksum equals the PostgreSQL one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import WorkbookError
from .checksum import INFO_TABLE
from .loader import SCHEMA, dataset_info

if TYPE_CHECKING:
    import duckdb

    from ..cluster.target import Target

_DUCK_TYPES = {
    "bigint": "BIGINT", "integer": "INTEGER", "smallint": "SMALLINT", "text": "VARCHAR", "boolean": "BOOLEAN",
    "date": "DATE", "jsonb": "JSON", "json": "JSON", "timestamp with time zone": "TIMESTAMPTZ",
}  # fmt: skip


def _duck_type(data_type: str, numeric: tuple[int | None, int | None], udt: str, typmod_dims: int | None) -> str:
    if data_type == "numeric":
        precision, scale = numeric
        return f"DECIMAL({precision or 18},{scale or 0})"
    if data_type == "USER-DEFINED" and udt == "vector":
        if not typmod_dims:
            raise WorkbookError("a vector column without a dimension cannot be copied to DuckDB")
        return f"FLOAT[{typmod_dims}]"
    try:
        return _DUCK_TYPES[data_type]
    except KeyError:
        raise WorkbookError(f"no DuckDB type for PostgreSQL column type {data_type!r}") from None


def _table_columns(conn: Any) -> dict[str, list[tuple[str, str]]]:
    rows = conn.execute(
        """
        SELECT c.table_name, c.column_name, c.data_type, c.numeric_precision, c.numeric_scale, c.udt_name,
               CASE WHEN c.udt_name = 'vector' THEN a.atttypmod END
        FROM information_schema.columns c
        JOIN pg_attribute a ON a.attrelid = format('%%I.%%I', c.table_schema, c.table_name)::regclass
                           AND a.attname = c.column_name
        WHERE c.table_schema = %s AND c.table_name <> %s
        ORDER BY c.table_name, c.ordinal_position
        """,
        (SCHEMA, INFO_TABLE),
    ).fetchall()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype, prec, scale, udt, dims in rows:
        tables.setdefault(table, []).append((column, _duck_type(dtype, (prec, scale), udt, dims)))
    return tables


def check_duckdb_path(
    path: str | os.PathLike[str], *, force: bool = False, protected: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """``path`` made absolute, if a DuckDB copy may be written there; else a one-line WorkbookError.

    Refused: a folder, a missing or non-folder parent, a folder this process cannot write, an
    existing file unless ``force``, and any place inside a ``protected`` folder (the workbook
    home's ``secrets/``: the CLI passes it, and the default home's is always protected).
    """
    from ..cluster import default_home

    raw = os.fspath(path)
    if not isinstance(raw, str) or not raw.strip():
        raise WorkbookError("the DuckDB path is empty; give a file name such as ai_app.duckdb")
    given = Path(raw).expanduser()
    where = given.absolute()
    real = where.parent.resolve() / where.name
    for folder in (*protected, default_home() / "secrets"):
        guarded = Path(folder).expanduser().absolute().resolve()
        if real == guarded or guarded in real.parents:
            raise WorkbookError(
                f"refusing to write the DuckDB copy {raw!r} into the workbook's secrets folder "
                f"{str(guarded)!r}; choose another path"
            )
    if where.is_dir():
        raise WorkbookError(f"the DuckDB path {raw!r} is a folder; give a file name such as ai_app.duckdb")
    folder = where.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise WorkbookError(f"cannot write {raw!r}: folder {str(folder)!r} {what}; create it or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WorkbookError(f"cannot write {raw!r}: folder {str(folder)!r} is not writable; choose another path")
    if (where.exists() or where.is_symlink()) and not force:
        raise WorkbookError(f"{raw!r} already exists; pass --force (force=True) to replace it, or choose another path")
    return where


def to_duckdb(
    target: Target,
    path: str | os.PathLike[str],
    *,
    node: str = "primary",
    force: bool = False,
    protected: Iterable[str | os.PathLike[str]] = (),
) -> duckdb.DuckDBPyConnection:
    """Copy the dataset loaded in ``target`` into the DuckDB file ``path``.

    An existing ``path`` is replaced only with ``force=True``; see :func:`check_duckdb_path` for
    what else is refused (before anything is read). The copy is built in a temporary folder next
    to ``path`` and renamed into place at the end, so ``path`` appears whole or not at all, and
    nothing temporary is left behind by a failure or an interrupt. Returns an open DuckDB
    connection to the copy. Works on read-only targets (it only reads).
    """
    import duckdb

    path = check_duckdb_path(path, force=force, protected=protected)
    try:  # also the real test that the folder takes new files
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".workbook-tmp", dir=path.parent))
    except OSError as exc:
        raise WorkbookError(f"cannot write in {str(path.parent)!r}: {exc.strerror}; choose another path") from None
    try:
        tmp_path = work / "copy.duckdb"
        with target.connect(node) as conn:
            info = dataset_info(conn)
            if info is None:
                raise WorkbookError("no dataset is loaded in this target; run `workbook load` first")
            tables = _table_columns(conn)
            conn.execute("SET TIME ZONE 'UTC'")
            duck = duckdb.connect(str(tmp_path))
            try:
                duck.execute(f'CREATE SCHEMA "{SCHEMA}"')
                for table, columns in tables.items():
                    _copy_table(conn, duck, table, columns, work)
                duck.execute(
                    f'CREATE TABLE "{SCHEMA}"."{INFO_TABLE}" AS SELECT ? AS seed, ? AS scale, ? AS generator_version',
                    [info.seed, info.scale, info.generator_version],
                )
                duck.execute("CHECKPOINT")
            finally:
                duck.close()
        if path.is_dir():  # made meanwhile: os.replace would fail on it anyway
            raise WorkbookError(f"the DuckDB path {str(path)!r} became a folder; give a file name")
        os.replace(tmp_path, path)  # the copy appears whole or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return duckdb.connect(str(path))


def _copy_table(conn: Any, duck: Any, table: str, columns: list[tuple[str, str]], workdir: Path) -> None:
    create = ", ".join(f'"{name}" {dtype}' for name, dtype in columns)
    duck.execute(f'CREATE TABLE "{SCHEMA}"."{table}" ({create})')
    select = sql.SQL(", ").join(
        sql.SQL("CAST({} AS real[])").format(sql.Identifier(name)) if dtype.startswith("FLOAT[") else sql.Identifier(name)
        for name, dtype in columns
    )
    export = sql.SQL("COPY (SELECT {} FROM {} ORDER BY id) TO STDOUT (FORMAT csv)").format(
        select, sql.Identifier(SCHEMA, table)
    )
    read_types = {name: ("VARCHAR" if dtype.startswith("FLOAT[") else dtype) for name, dtype in columns}
    converted = ", ".join(
        f"CAST(string_split(trim(\"{name}\", '{{}}'), ',') AS {dtype})" if dtype.startswith("FLOAT[") else f'"{name}"'
        for name, dtype in columns
    )
    fd, csv_name = tempfile.mkstemp(prefix=f"{table}-", suffix=".csv", dir=workdir)
    try:
        with os.fdopen(fd, "wb") as fh, conn.cursor().copy(export) as copy:
            for block in copy:
                fh.write(block)
        duck.execute(
            f'INSERT INTO "{SCHEMA}"."{table}" SELECT {converted} FROM read_csv(?, columns = ?, header = false, '
            "quote = '\"', escape = '\"', allow_quoted_nulls = false, auto_detect = false)",
            [csv_name, read_types],
        )
    finally:
        os.unlink(csv_name)
