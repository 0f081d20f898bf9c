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
import tempfile
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


def to_duckdb(target: Target, path: str | os.PathLike[str], *, node: str = "primary") -> duckdb.DuckDBPyConnection:
    """Copy the dataset loaded in ``target`` into the DuckDB file ``path`` (replacing it).

    Returns an open DuckDB connection to the copy. Works on read-only targets (it only reads).
    """
    import duckdb

    path = Path(path)
    with target.connect(node) as conn:
        info = dataset_info(conn)
        if info is None:
            raise WorkbookError("no dataset is loaded in this target; run `workbook load` first")
        tables = _table_columns(conn)
        conn.execute("SET TIME ZONE 'UTC'")
        tmp_path = path.with_name(path.name + ".tmp")
        tmp_path.unlink(missing_ok=True)
        duck = duckdb.connect(str(tmp_path))
        try:
            duck.execute(f'CREATE SCHEMA "{SCHEMA}"')
            for table, columns in tables.items():
                _copy_table(conn, duck, table, columns, path.parent)
            duck.execute(
                f'CREATE TABLE "{SCHEMA}"."{INFO_TABLE}" AS SELECT ? AS seed, ? AS scale, ? AS generator_version',
                [info.seed, info.scale, info.generator_version],
            )
            duck.execute("CHECKPOINT")
        finally:
            duck.close()
    os.replace(tmp_path, path)  # the copy appears whole or not at all
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
