"""The sample AI app as most Python AI apps see it: typed SQLAlchemy 2 models of
``datasets/ai_app/schema.sql`` and an engine on any :class:`~workbook.cluster.Target`.

The models mirror the schema column for column (types, nullability, foreign keys; a test
reflects the loaded database and compares), so an ORM lesson measures the app's real tables.
They declare no ``CHECK`` or ``UNIQUE`` constraints of their own and never create tables: the
schema is the loader's, the models only read and write it.

``engine(target)`` speaks ``postgresql+psycopg`` (psycopg 3); the password goes into the
:class:`sqlalchemy.engine.URL` object, whose ``repr`` shows ``***`` in its place, and never into
a string. On a read-only target its sessions are read-only, as ``Target.connect`` makes them.
``counting(engine)`` records every statement the engine sends (one per ``cursor.execute``,
so an ``insertmanyvalues`` batch counts once).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Boolean, Date, ForeignKey, Integer, MetaData, Numeric, Text, event
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.engine import URL, Engine, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import UserDefinedType

from .dataset.loader import SCHEMA

if TYPE_CHECKING:
    from .cluster.target import Target

TZ = TIMESTAMP(timezone=True)


class Vector(UserDefinedType[list[float]]):
    """pgvector's ``vector(n)``, sent and read as its text form ``[x,y,...]``."""

    cache_ok = True

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def get_col_spec(self, **kw: Any) -> str:
        return f"vector({self.dim})"

    def bind_processor(self, dialect: Any) -> Callable[[Any], str | None]:
        def process(value: Any) -> str | None:
            return None if value is None else "[" + ",".join(repr(float(x)) for x in value) + "]"

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Callable[[Any], list[float] | None]:
        def process(value: Any) -> list[float] | None:
            if value is None:
                return None
            text = value.strip("[]")
            return [float(x) for x in text.split(",")] if text else []

        return process


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


def _fk(column: str, ondelete: str | None = None) -> ForeignKey:
    return ForeignKey(f"{SCHEMA}.{column}", ondelete=ondelete)


def _id() -> Mapped[int]:
    return mapped_column(BigInteger, primary_key=True, autoincrement=True)


class Organisation(Base):
    __tablename__ = "organisations"
    id: Mapped[int] = _id()
    name: Mapped[str] = mapped_column(Text)
    slug: Mapped[str] = mapped_column(Text)
    plan: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TZ)
    tokens_this_month: Mapped[int] = mapped_column(BigInteger, server_default="0")

    users: Mapped[list[User]] = relationship(back_populates="org")


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = _id()
    org_id: Mapped[int] = mapped_column(BigInteger, _fk("organisations.id"))
    email: Mapped[str] = mapped_column(Text)
    display_name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TZ)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    is_active: Mapped[bool] = mapped_column(Boolean, server_default="true")

    org: Mapped[Organisation] = relationship(back_populates="users")
    conversations: Mapped[list[Conversation]] = relationship(back_populates="user")


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = _id()
    org_id: Mapped[int] = mapped_column(BigInteger, _fk("organisations.id"))
    created_by: Mapped[int] = mapped_column(BigInteger, _fk("users.id"))
    name: Mapped[str] = mapped_column(Text)
    key_prefix: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(TZ)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(TZ)


class ModelConfig(Base):
    __tablename__ = "model_configs"
    id: Mapped[int] = _id()
    org_id: Mapped[int] = mapped_column(BigInteger, _fk("organisations.id"))
    name: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(TZ)


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[int] = _id()
    org_id: Mapped[int] = mapped_column(BigInteger, _fk("organisations.id"))
    user_id: Mapped[int] = mapped_column(BigInteger, _fk("users.id"))
    model_config_id: Mapped[int | None] = mapped_column(BigInteger, _fk("model_configs.id"))
    title: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(TZ)
    last_activity_at: Mapped[dt.datetime] = mapped_column(TZ)
    message_count: Mapped[int] = mapped_column(Integer)

    user: Mapped[User] = relationship(back_populates="conversations")
    # lazy="select" (the default, said out loud): each conversation's messages are read when first touched
    messages: Mapped[list[Message]] = relationship(back_populates="conversation", lazy="select", order_by="Message.id")


class Message(Base):
    __tablename__ = "messages"
    id: Mapped[int] = _id()
    conversation_id: Mapped[int] = mapped_column(BigInteger, _fk("conversations.id", ondelete="CASCADE"))
    org_id: Mapped[int] = mapped_column(BigInteger, _fk("organisations.id"))
    user_id: Mapped[int | None] = mapped_column(BigInteger, _fk("users.id"))
    role: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(TZ)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default="{}")

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class UsageEvent(Base):
    __tablename__ = "usage_events"
    id: Mapped[int] = _id()
    org_id: Mapped[int] = mapped_column(BigInteger, _fk("organisations.id"))
    user_id: Mapped[int] = mapped_column(BigInteger, _fk("users.id"))
    api_key_id: Mapped[int | None] = mapped_column(BigInteger, _fk("api_keys.id"))
    conversation_id: Mapped[int | None] = mapped_column(BigInteger, _fk("conversations.id", ondelete="SET NULL"))
    message_id: Mapped[int | None] = mapped_column(BigInteger, _fk("messages.id", ondelete="SET NULL"))
    model: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(12, 6))
    occurred_at: Mapped[dt.datetime] = mapped_column(TZ)


class Invoice(Base):
    __tablename__ = "invoices"
    id: Mapped[int] = _id()
    org_id: Mapped[int] = mapped_column(BigInteger, _fk("organisations.id"))
    period_start: Mapped[dt.date] = mapped_column(Date)
    period_end: Mapped[dt.date] = mapped_column(Date)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    amount_usd: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    status: Mapped[str] = mapped_column(Text)


class AuditLog(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = _id()
    org_id: Mapped[int] = mapped_column(BigInteger, _fk("organisations.id"))
    actor_user_id: Mapped[int | None] = mapped_column(BigInteger, _fk("users.id"))
    action: Mapped[str] = mapped_column(Text)
    target_type: Mapped[str] = mapped_column(Text)
    target_id: Mapped[int | None] = mapped_column(BigInteger)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    occurred_at: Mapped[dt.datetime] = mapped_column(TZ)


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[int] = _id()
    org_id: Mapped[int] = mapped_column(BigInteger, _fk("organisations.id"))
    uploaded_by: Mapped[int] = mapped_column(BigInteger, _fk("users.id"))
    title: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    mime_type: Mapped[str] = mapped_column(Text)
    byte_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(TZ)

    chunks: Mapped[list[Chunk]] = relationship(back_populates="document", order_by="Chunk.chunk_index")


class Chunk(Base):
    __tablename__ = "chunks"
    id: Mapped[int] = _id()
    document_id: Mapped[int] = mapped_column(BigInteger, _fk("documents.id", ondelete="CASCADE"))
    org_id: Mapped[int] = mapped_column(BigInteger, _fk("organisations.id"))
    chunk_index: Mapped[int] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[list[float]] = mapped_column(Vector(384))
    content: Mapped[str] = mapped_column(Text)

    document: Mapped[Document] = relationship(back_populates="chunks")


class FeatureFlag(Base):
    __tablename__ = "feature_flags"
    id: Mapped[int] = _id()
    org_id: Mapped[int | None] = mapped_column(BigInteger, _fk("organisations.id"))
    key: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean)
    rollout_percent: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(TZ)


MODELS: tuple[type[Base], ...] = (
    Organisation, User, ApiKey, ModelConfig, Conversation, Message, UsageEvent, Invoice, AuditLog, Document,
    Chunk, FeatureFlag,
)  # fmt: skip


def url(target: Target, node: str = "primary") -> URL:
    """The SQLAlchemy URL of ``node`` (psycopg 3 driver); its ``repr`` hides the password."""
    from .cluster.target import dsn_params

    params = dict(dsn_params(target.endpoint(node).dsn))
    host = params.pop("host", None)
    port = params.pop("port", None)
    query: dict[str, str] = {}
    if host and ("/" in host or "," in host):  # a socket directory or several hosts: libpq reads them from the query
        query["host"] = host
        host = None
    if port and not port.isdigit():
        query["port"] = port
        port = None
    user, password, dbname = params.pop("user", None), params.pop("password", None), params.pop("dbname", None)
    query.update({k: str(v) for k, v in params.items() if v not in (None, "")})
    return URL.create(
        "postgresql+psycopg", username=user, password=password, host=host, port=int(port) if port else None,
        database=dbname, query=query,
    )  # fmt: skip


def engine(target: Target, node: str = "primary", **kwargs: Any) -> Engine:
    """A SQLAlchemy engine on ``node`` of ``target``; read-only targets get read-only sessions.

    ``kwargs`` go to :func:`sqlalchemy.create_engine` (e.g. ``use_insertmanyvalues=False``,
    ``poolclass=NullPool``). Dispose of it (``engine.dispose()``) when done.
    """
    connect_args: dict[str, Any] = {"connect_timeout": 5, "application_name": "workbook-orm"}
    if not target.allow_writes:
        connect_args["options"] = "-c default_transaction_read_only=on"
    connect_args.update(kwargs.pop("connect_args", {}))
    kwargs.setdefault("pool_pre_ping", True)  # a dataset reset ends every session: pooled ones reconnect
    return create_engine(url(target, node), connect_args=connect_args, **kwargs)


@contextmanager
def counting(bind: Engine) -> Iterator[list[str]]:
    """The statements ``bind`` sends while the block runs, in order (one per cursor execute)."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        sent.append(statement)

    event.listen(bind, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(bind, "before_cursor_execute", record)


__all__ = [
    "MODELS", "ApiKey", "AuditLog", "Base", "Chunk", "Conversation", "Document", "FeatureFlag", "Invoice", "Message",
    "ModelConfig", "Organisation", "UsageEvent", "User", "Vector", "counting", "engine", "url",
]  # fmt: skip
