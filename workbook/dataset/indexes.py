"""The candidate-index catalog (``datasets/ai_app/indexes.toml``) and its DDL.

Identifiers (index name, schema, table) are composed with :mod:`psycopg.sql`. Key expressions,
INCLUDE columns and partial predicates are SQL fragments taken from the catalog file, which is
part of the project (not user input). Creating an index that exists and dropping one that does
not are both no-ops (``IF [NOT] EXISTS``), so toggles are idempotent.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from ..errors import WorkbookError
from ..statement import check_fragment
from .loader import SCHEMA
from .paths import dataset_dir

METHODS = ("btree", "gin", "gist", "brin", "hash", "hnsw", "ivfflat")


@dataclass(frozen=True)
class IndexSpec:
    name: str
    table: str
    keys: tuple[str, ...]
    method: str = "btree"
    include: tuple[str, ...] = ()
    where: str | None = None
    with_: dict[str, int | float | str] = field(default_factory=dict)
    serves: tuple[str, ...] = ()
    lesson: str = ""
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        """Names are composed as identifiers; the SQL fragments (keys, WHERE) must each be one
        expression, since they are spliced into the CREATE INDEX statement."""
        for label, value in (("name", self.name), ("table", self.table), ("schema", self.schema)):
            if not isinstance(value, str) or not value or "\x00" in value:
                raise WorkbookError(f"index {label} must be a non-empty str, got {value!r}")
        if len(self.name.encode()) > 63:
            raise WorkbookError(f"index name {self.name!r} is longer than PostgreSQL's 63 bytes; shorten it")
        if self.method not in METHODS:
            raise WorkbookError(f"index {self.name!r}: unknown method {self.method!r}; use one of {METHODS}")
        if isinstance(self.keys, str) or not self.keys:
            raise WorkbookError(f"index {self.name!r}: keys must be a non-empty tuple of key expressions")
        for key in self.keys:
            check_fragment(key, what=f"index {self.name!r} key")
        if self.where is not None:
            check_fragment(self.where, what=f"index {self.name!r} WHERE clause")
        for col in self.include:
            if not isinstance(col, str) or not col:
                raise WorkbookError(f"index {self.name!r}: INCLUDE columns must be names, got {col!r}")

    def create(self, *, concurrently: bool = False) -> sql.Composed:
        """``CREATE INDEX [CONCURRENTLY] IF NOT EXISTS ...``."""
        parts = [
            sql.SQL("CREATE INDEX {}IF NOT EXISTS {} ON {} USING {} ({})").format(
                sql.SQL("CONCURRENTLY " if concurrently else ""),
                sql.Identifier(self.name),
                sql.Identifier(self.schema, self.table),
                sql.SQL(self.method),
                sql.SQL(", ").join(sql.SQL(k) for k in self.keys),
            )
        ]
        if self.include:
            parts.append(sql.SQL(" INCLUDE ({})").format(sql.SQL(", ").join(map(sql.Identifier, self.include))))
        if self.with_:
            parts.append(
                sql.SQL(" WITH ({})").format(
                    sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in self.with_.items())
                )
            )
        if self.where:
            parts.append(sql.SQL(" WHERE {}").format(sql.SQL(self.where)))
        return sql.Composed(parts)

    def drop(self, *, concurrently: bool = False) -> sql.Composed:
        return sql.SQL("DROP INDEX {}IF EXISTS {}").format(
            sql.SQL("CONCURRENTLY " if concurrently else ""), sql.Identifier(self.schema, self.name)
        )


def indexes_for(shape: str) -> list[IndexSpec]:
    """The catalog's candidate indexes that serve the query shape ``shape``."""
    return [s for s in load_indexes().values() if shape in s.serves]


def load_indexes(path: Path | None = None) -> dict[str, IndexSpec]:
    """Every candidate index, by name, in catalog order."""
    path = path or dataset_dir() / "indexes.toml"
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    specs = {}
    for name, entry in data.items():
        method = entry.get("method", "btree")
        if method not in METHODS:
            raise WorkbookError(f"{path}: index {name!r} has unknown method {method!r}; use one of {METHODS}")
        if not entry.get("keys"):
            raise WorkbookError(f"{path}: index {name!r} has no keys")
        specs[name] = IndexSpec(
            name=name,
            table=entry["table"],
            keys=tuple(entry["keys"]),
            method=method,
            include=tuple(entry.get("include", ())),
            where=entry.get("where"),
            with_=dict(entry.get("with", {})),
            serves=tuple(entry.get("serves", ())),
            lesson=entry.get("lesson", ""),
        )
    return specs
