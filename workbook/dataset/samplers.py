"""Parameter samplers for query shapes: real values from the loaded data, hot or cold.

``hot`` picks from the biggest tenants (``dataset_info.hot_orgs``, the Zipf head) and frequent
values; ``cold`` from small tenants and rare values. ``k`` picks the k-th candidate, so repeated
timings can rotate through several parameter sets instead of hammering one cached row. Every
sampler is deterministic for a given dataset, tier and k.

The samplers read the sample schema (``ai_app``); the tier's sort direction is composed with
:mod:`psycopg.sql`; on the unindexed starting point
the few that scan a big table take tens of milliseconds at SF 1, once per experiment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from psycopg import sql

from ..errors import WorkbookError
from .generator import ANCHOR, Vocabulary

if TYPE_CHECKING:
    import psycopg

TIERS = ("hot", "cold")
Sampler = Callable[["psycopg.Connection[Any]", str, int], dict[str, Any]]
SAMPLERS: dict[str, Sampler] = {}


def sampler(fn: Sampler) -> Sampler:
    SAMPLERS[fn.__name__] = fn
    return fn


def sample(name: str, conn: psycopg.Connection[Any], tier: str = "hot", k: int = 0) -> dict[str, Any]:
    if tier not in TIERS:
        raise WorkbookError(f"tier must be one of {TIERS}, got {tier!r}")
    try:
        fn = SAMPLERS[name]
    except KeyError:
        raise WorkbookError(f"no sampler {name!r}; known: {sorted(SAMPLERS)}") from None
    import psycopg

    try:
        return fn(conn, tier, k)
    except psycopg.errors.UndefinedTable as exc:
        raise WorkbookError(
            f"no sample dataset in this database ({exc.diag.message_primary}); load it with 'workbook load' "
            "(or point --dsn/--home at the database that has it)"
        ) from None


def _one(conn: psycopg.Connection[Any], query: str | sql.Composable, params: tuple[Any, ...] | dict[str, Any], what: str) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    if row is None:
        raise WorkbookError(f"the loaded dataset has no {what} to sample; is it loaded (workbook load)?")
    return tuple(row)


@sampler
def org(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``org_id``: one of the largest tenants (hot) or a small one (cold)."""
    column = sql.Identifier("hot_orgs" if tier == "hot" else "cold_orgs")
    (org_id,) = _one(
        conn,
        sql.SQL("SELECT {c}[1 + %s %% cardinality({c})] FROM ai_app.dataset_info").format(c=column),
        (k,),
        "dataset_info row",
    )
    return {"org_id": int(org_id)}


@sampler
def user(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``user_id`` (and its ``org_id``): the org's most active users."""
    params = org(conn, tier, k)
    (user_id,) = _one(
        conn,
        "SELECT user_id FROM ai_app.conversations WHERE org_id = %(org)s"
        " GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1"
        " OFFSET %(k)s %% (SELECT greatest(1, count(DISTINCT user_id)) FROM ai_app.conversations WHERE org_id = %(org)s)",
        {"org": params["org_id"], "k": k % 3},  # a small tenant may have fewer users than that
        "conversation",
    )
    return {**params, "user_id": int(user_id)}


@sampler
def conversation(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``conversation_id`` with its ``org_id`` and ``user_id``: a long one (hot) or a short one (cold)."""
    params = org(conn, tier, k)
    cid, uid = _one(
        conn,
        sql.SQL("SELECT id, user_id FROM ai_app.conversations WHERE org_id = %(org)s ORDER BY message_count {}, id LIMIT 1"
                " OFFSET %(k)s %% (SELECT greatest(1, count(*)) FROM ai_app.conversations WHERE org_id = %(org)s)")
        .format(_direction(tier)),
        {"org": params["org_id"], "k": k % 5},  # a small tenant (SF 1's cold ones) may have only 2 conversations
        "conversation",
    )
    return {**params, "conversation_id": int(cid), "user_id": int(uid)}


@sampler
def model(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``model``: a frequent model (hot: low selectivity) or the rarest ones (cold)."""
    (name,) = _one(
        conn,
        sql.SQL("SELECT model FROM ai_app.usage_events GROUP BY model ORDER BY count(*) {}, model LIMIT 1 OFFSET %s")
        .format(_direction(tier)),
        (k % 2,),
        "usage event",
    )
    return {"model": name}


@sampler
def term(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``term`` for full-text search: a topic's most frequent word (hot) or one of its rarest (cold)."""
    vocab = Vocabulary()
    words = vocab.topic_words[k % len(vocab.topic_words)]
    return {"term": words[0] if tier == "hot" else words[-1]}


@sampler
def day_range(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``since``/``until``: the last 30 days of the dataset (hot) or its last day (cold)."""
    days = 30 if tier == "hot" else 1
    until = ANCHOR - 86400 * (k % 7)
    return {"since": _iso(until - days * 86400), "until": _iso(until)}


@sampler
def month(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``month_start``: an invoiced month (hot: the latest complete one)."""
    (start,) = _one(
        conn,
        sql.SQL("SELECT DISTINCT period_start FROM ai_app.invoices WHERE status <> 'open' ORDER BY period_start {} LIMIT 1")
        .format(_direction(tier)),
        (),
        "invoice",
    )
    return {"month_start": start}


@sampler
def actor(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``actor_user_id``: the busiest actor in the org's audit log."""
    params = org(conn, tier, k)
    (uid,) = _one(
        conn,
        "SELECT actor_user_id FROM ai_app.audit_log WHERE org_id = %s AND actor_user_id IS NOT NULL"
        " GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
        (params["org_id"],),
        "audit entry",
    )
    return {**params, "actor_user_id": int(uid)}


@sampler
def page(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """A deep page of an org's message feed: ``offset`` and the equivalent keyset cursor.

    ``after_created_at``/``after_id`` are the last row of the previous page, so OFFSET and keyset
    variants return the same page.
    """
    params = org(conn, tier, k)
    (count,) = _one(conn, "SELECT count(*) FROM ai_app.messages WHERE org_id = %s", (params["org_id"],), "message")
    size = 20
    wanted = 2000 if tier == "hot" else 100
    offset = max(size, min(wanted, count - size))
    created, mid = _one(
        conn,
        "SELECT created_at, id FROM ai_app.messages WHERE org_id = %s ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET %s",
        (params["org_id"], offset - 1),
        "message",
    )
    return {**params, "page_size": size, "offset": offset, "after_created_at": created, "after_id": int(mid)}


@sampler
def chunk_org(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``org_id`` of a tenant with documents: the largest corpus (hot) or a small one (cold)."""
    (org_id,) = _one(
        conn,
        sql.SQL("SELECT org_id FROM ai_app.chunks GROUP BY org_id HAVING count(*) >= 10 ORDER BY count(*) {}, org_id"
                " LIMIT 1 OFFSET %s").format(_direction(tier)),  # fmt: skip
        (k % 3,),
        "chunk",
    )
    return {"org_id": int(org_id)}


@sampler
def query_embedding(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``query_embedding`` (pgvector text): the vector of a chunk picked by a fixed hash of its id,
    as a user's question lands near some topic. It ignores the tier (any tenant's chunk will do)."""
    (vec,) = _one(
        conn,
        "SELECT embedding::text FROM ai_app.chunks ORDER BY (id * 2654435761) %% 1000003 LIMIT 1 OFFSET %s",
        (k,),
        "chunk",
    )
    return {"query_embedding": vec}


@sampler
def api_key(conn: psycopg.Connection[Any], tier: str, k: int) -> dict[str, Any]:
    """``key_prefix`` of an active API key of the org."""
    params = org(conn, tier, k)
    (prefix,) = _one(
        conn,
        "SELECT key_prefix FROM ai_app.api_keys WHERE org_id = %s ORDER BY revoked_at IS NOT NULL, id LIMIT 1",
        (params["org_id"],),
        "api key",
    )
    return {**params, "key_prefix": prefix}


def _direction(tier: str) -> sql.SQL:
    """Largest first for the hot tier, smallest first for the cold one."""
    return sql.SQL("DESC" if tier == "hot" else "ASC")


def _iso(epoch: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()
