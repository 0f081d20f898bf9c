"""Content checksums of the loaded dataset, computed by the database that holds it.

A table's checksum is ``md5`` over the ``md5`` of each row's canonical text, in primary-key
order; the dataset's checksum is ``md5`` over ``"table:checksum"`` lines in table-name order.
The canonical text of a value is chosen so PostgreSQL and DuckDB produce the same characters:
integers, text, booleans, numerics, dates and JSON as text; timestamps as whole epoch seconds;
embeddings as their integer multiples of 2⁻¹⁶ (the generator stores them at that precision), so
no float formatting is involved. Equal checksums mean equal rows, column by column.

Computing it reads every row (about 2 s per million messages, plus the embeddings).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import WorkbookError
from .generator import QUANTUM
from .loader import SCHEMA

if TYPE_CHECKING:
    import duckdb
    import psycopg

INFO_TABLE = "dataset_info"
NULL_TEXT = "\\N"

# data_type as reported by information_schema.columns -> canonical kind
_KINDS = {
    "bigint": "plain", "integer": "plain", "smallint": "plain", "text": "plain", "character varying": "plain",
    "boolean": "plain", "numeric": "plain", "date": "plain", "jsonb": "plain", "json": "plain",
    "timestamp with time zone": "epoch", "USER-DEFINED": "vector",
    "BIGINT": "plain", "INTEGER": "plain", "SMALLINT": "plain", "VARCHAR": "plain", "BOOLEAN": "plain",
    "DATE": "plain", "JSON": "plain", "TIMESTAMP WITH TIME ZONE": "epoch",
}  # fmt: skip


@dataclass(frozen=True)
class Checksum:
    """The dataset's checksum and each table's."""

    value: str
    tables: dict[str, str]

    def __str__(self) -> str:
        return self.value


def _kind(data_type: str) -> str:
    if data_type.startswith(("DECIMAL", "numeric")):
        return "plain"
    if data_type.startswith("FLOAT[") or data_type == "USER-DEFINED":
        return "vector"
    try:
        return _KINDS[data_type]
    except KeyError:
        raise WorkbookError(f"no canonical form for column type {data_type!r}; extend workbook.dataset.checksum") from None


def _expression(column: str, kind: str, dialect: str) -> str:
    col = f'"{column}"'  # names come from information_schema and are quoted for both engines
    if kind == "epoch":
        text = f"CAST(CAST(extract(epoch FROM {col}) AS BIGINT) AS TEXT)"
    elif kind == "vector" and dialect == "postgres":
        text = (
            f"(SELECT string_agg(CAST(CAST(v * {QUANTUM} AS integer) AS text), ',' ORDER BY o)"
            f" FROM unnest(CAST({col} AS real[])) WITH ORDINALITY AS u(v, o))"
        )
    elif kind == "vector":
        text = f"array_to_string(list_transform({col}, lambda x: CAST(x * {QUANTUM} AS INTEGER)), ',')"
    else:
        text = f"CAST({col} AS TEXT)"
    return f"coalesce({text}, '{NULL_TEXT}')"


def table_query(table: str, columns: Iterable[tuple[str, str]], dialect: str) -> str:
    """The query that returns one table's checksum in ``dialect`` ("postgres" or "duckdb")."""
    row = " || '|' || ".join(_expression(name, _kind(dtype), dialect) for name, dtype in columns)
    # the comment marks the workbook's own bookkeeping in pg_stat_statements (``workbook top`` leaves it out)
    return f'SELECT /* workbook: dataset checksum */ md5(coalesce(string_agg(md5({row}), \'\' ORDER BY "id"), \'\')) FROM "{SCHEMA}"."{table}"'


def _combine(tables: dict[str, str]) -> Checksum:
    text = "".join(f"{name}:{value}\n" for name, value in sorted(tables.items()))
    return Checksum(hashlib.md5(text.encode()).hexdigest(), dict(sorted(tables.items())))


_COLUMNS_SQL = (
    "SELECT table_name, column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = '{schema}' AND table_name <> '{info}' ORDER BY table_name, ordinal_position"
)


def _columns(rows: list[tuple[str, str, str]]) -> dict[str, list[tuple[str, str]]]:
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in rows:
        tables.setdefault(table, []).append((column, dtype))
    if not tables:
        raise WorkbookError(f"no dataset found (schema {SCHEMA!r} has no tables); load it first with `workbook load`")
    return tables


def checksum(conn: psycopg.Connection[Any]) -> Checksum:
    """The checksum of the dataset loaded in the connection's PostgreSQL database."""
    rows = conn.execute(sql.SQL(_COLUMNS_SQL.format(schema=SCHEMA, info=INFO_TABLE))).fetchall()
    return _combine(_run(_columns(rows), "postgres", lambda q: conn.execute(sql.SQL(q)).fetchone()))


def duckdb_checksum(con: duckdb.DuckDBPyConnection) -> Checksum:
    """The same checksum computed by DuckDB over a copy made by :func:`to_duckdb`."""
    rows = con.execute(_COLUMNS_SQL.format(schema=SCHEMA, info=INFO_TABLE)).fetchall()
    return _combine(_run(_columns(rows), "duckdb", lambda q: con.execute(q).fetchall()[0]))


def _run(tables: dict[str, list[tuple[str, str]]], dialect: str, fetch: Callable[[str], Any]) -> dict[str, str]:
    return {table: fetch(table_query(table, cols, dialect))[0] for table, cols in tables.items()}
