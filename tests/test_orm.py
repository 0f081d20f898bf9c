"""workbook.orm on the shared lab: the models are the schema (reflected and compared column by
column), the engine hides its password and keeps a read-only target read-only, and the statement
counter counts what is sent."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from workbook import orm
from workbook.cluster import LocalCluster, Target
from workbook.cluster.target import dsn_params

from .conftest import REPO

SCHEMA_SQL = (REPO / "datasets" / "ai_app" / "schema.sql").read_text()
TABLES = re.findall(r"^CREATE TABLE (\w+) \(", SCHEMA_SQL, flags=re.M)


@pytest.fixture(scope="module")
def engine(lab: LocalCluster) -> Iterator[Engine]:
    eng = orm.engine(lab.target())
    yield eng
    eng.dispose()


def _norm(type_text: str) -> str:
    return re.sub(r",\s+", ",", type_text.lower())


def test_the_models_are_the_tables_of_schema_sql() -> None:
    assert len(TABLES) == 12
    assert sorted(m.__tablename__ for m in orm.MODELS) == sorted(TABLES)
    assert sorted(t.name for t in orm.Base.metadata.sorted_tables) == sorted(TABLES)


@pytest.mark.parametrize("table", TABLES)
def test_model_matches_the_database(engine: Engine, table: str) -> None:
    """Columns (order, type, nullability), primary key and foreign keys (with ON DELETE) as loaded."""
    model = orm.Base.metadata.tables[f"ai_app.{table}"]
    insp = inspect(engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy does not know pgvector's type: compared below by name
        columns = insp.get_columns(table, schema="ai_app")
    assert [c["name"] for c in columns] == [c.name for c in model.columns]
    for reflected in columns:
        assert reflected["nullable"] == model.columns[reflected["name"]].nullable, f"{table}.{reflected['name']} nullability"
    with engine.connect() as conn:
        types: dict[str, str] = dict(conn.execute(text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"
        ), {"t": f"ai_app.{table}"}).all())  # fmt: skip
    for col in model.columns:
        declared = col.type.compile(dialect=postgresql.dialect())
        assert _norm(declared) == _norm(types[col.name]), f"{table}.{col.name}: model {declared}, database {types[col.name]}"
    assert insp.get_pk_constraint(table, schema="ai_app")["constrained_columns"] == [c.name for c in model.primary_key]

    def fk_set(fks: list[Any]) -> set[tuple[Any, ...]]:
        return {(tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]),
                 (f.get("options") or {}).get("ondelete")) for f in fks}  # fmt: skip

    declared_fks = [{"constrained_columns": [e.parent.name for e in fk.elements], "referred_table": fk.referred_table.name,
                     "referred_columns": [e.column.name for e in fk.elements], "options": {"ondelete": fk.ondelete}}
                    for fk in model.foreign_key_constraints]  # fmt: skip
    assert fk_set(insp.get_foreign_keys(table, schema="ai_app")) == fk_set(declared_fks)


def test_the_url_hides_the_password(lab: LocalCluster) -> None:
    target = lab.target()
    password = dsn_params(target.primary.dsn).get("password")
    url = orm.url(target)
    assert url.drivername == "postgresql+psycopg"
    assert password and url.password == password
    assert password not in repr(url) and password not in str(url) and "***" in repr(url)
    eng = orm.engine(target)
    try:
        assert password not in repr(eng)
    finally:
        eng.dispose()


def test_a_read_only_target_gets_read_only_sessions(lab: LocalCluster) -> None:
    read_only = Target.from_dsn(lab.target().primary.dsn)
    eng = orm.engine(read_only)
    try:
        with eng.connect() as conn:
            assert conn.execute(text("SHOW default_transaction_read_only")).scalar() == "on"
    finally:
        eng.dispose()


def test_loading_counts_and_types(engine: Engine) -> None:
    with Session(engine) as s, orm.counting(engine) as sent:
        chunk = s.scalars(select(orm.Chunk).limit(1)).one()
        assert len(chunk.embedding) == 384 and all(isinstance(x, float) for x in chunk.embedding)
        assert len(sent) == 1
        conv = s.scalars(select(orm.Conversation).where(orm.Conversation.message_count > 0).limit(1)).one()
        assert len(conv.messages) > 0 and len(sent) == 3  # the lazy load is one more statement
        assert all(m.conversation_id == conv.id for m in conv.messages)
        assert isinstance(conv.messages[0].metadata_, dict)
