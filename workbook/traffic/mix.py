"""Workloads: a weighted mix of query shapes, and the parameter pools both drivers draw from.

A :class:`Mix` names what an app does and how often (``{"conversation_latest_messages": 8,
"insert_message": 2}``); the built-in ones (:data:`MIXES`) are the AI app's traffic. A mix entry
is a catalog shape (``"shape"`` or ``"shape:variant"``) or a user's own SQL
(:class:`CustomQuery`, checked by :func:`workbook.statement.check_statement`: one statement,
nothing a rollback cannot contain).

Parameters are sampled **up front**, not per request: :func:`prepare` asks each shape's samplers
for ``pool_size`` parameter sets, hot tenants with probability ``hot_share`` (the Zipf head that
gets most traffic), cold ones otherwise. Both drivers then pick from these pools, so the load
generator never queries the database to decide what to send (that would be load too), and
pgbench and the Python driver send exactly the same statements with the same values.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import WorkbookError
from ..statement import check_statement

if TYPE_CHECKING:
    import psycopg

    from ..cluster import Target


@dataclass(frozen=True)
class CustomQuery:
    """A user's own statement in a mix: psycopg named placeholders filled by catalog samplers.

    ``CustomQuery("SELECT count(*) FROM ai_app.messages WHERE org_id = %(org_id)s", samplers=("org",))``
    """

    sql: str
    samplers: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Mix:
    """A named, weighted set of requests: ``Mix("mine", {"conversation_latest_messages": 8, "insert_message": 2})``.

    Keys of ``weights`` are shape names, ``"shape:variant"``, or names of entries in ``custom``.
    Weights are relative (any positive numbers).
    """

    name: str
    weights: Mapping[str, float]
    custom: Mapping[str, CustomQuery | str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.weights:
            raise WorkbookError(f"mix {self.name!r} has no entries; e.g. Mix('mine', {{'api_key_lookup': 1}})")
        for key, w in self.weights.items():
            if not isinstance(w, int | float) or not w > 0:
                raise WorkbookError(f"mix {self.name!r}: weight of {key!r} must be a positive number, got {w!r}")


#: the AI app's traffic, as the lessons use it
MIXES: dict[str, Mix] = {
    m.name: m
    for m in (
        Mix("chat", {"conversation_latest_messages": 40, "insert_message": 20, "bump_conversation_activity": 20,
                     "increment_org_usage": 15, "semantic_search_in_org": 5},
            description="a chat turn: open the conversation, insert the message, bump it, count usage; now and then RAG"),
        Mix("read", {"conversation_latest_messages": 50, "api_key_lookup": 20, "user_conversation_list:lateral": 15,
                     "usage_per_org_per_day": 10, "semantic_search_in_org": 5},
            description="the read side of chat plus the usage dashboard"),
        Mix("ingest", {"insert_message": 60, "bump_conversation_activity": 25, "increment_org_usage": 15},
            description="writes only: messages in, counters up"),
        Mix("analytics", {"usage_per_org_per_day": 40, "tokens_by_model": 20, "monthly_invoice_totals": 20,
                          "messages_by_model:containment": 20},
            description="dashboards and reports: scans and aggregates"),
        Mix("point", {"api_key_lookup": 1}, description="one primary-key-sized lookup: the cheapest request"),
    )
}  # fmt: skip


def get_mix(mix: str | Mix) -> Mix:
    """A built-in mix by name, or the Mix given."""
    if isinstance(mix, Mix):
        return mix
    try:
        return MIXES[mix]
    except (KeyError, TypeError):
        raise WorkbookError(f"no mix {mix!r}; built-in mixes: {', '.join(MIXES)} (or pass a Mix(...))") from None


@dataclass(frozen=True)
class Request:
    """One entry of a prepared mix: its statements, kind, weight and sampled parameter sets."""

    name: str  # the mix key: "shape", "shape:variant" or a custom name
    kind: str  # "read" or "write"
    statements: tuple[str, ...]  # more than one for a per-row loop (Python driver only)
    weight: float
    params: tuple[dict[str, Any], ...]
    tiers: tuple[str, ...]

    @property
    def is_write(self) -> bool:
        return self.kind == "write"


@dataclass(frozen=True)
class PreparedMix:
    """A mix resolved against a database: what each driver sends, with parameter pools."""

    name: str
    requests: tuple[Request, ...]
    hot_share: float
    seed: int

    @property
    def writes(self) -> bool:
        return any(r.is_write for r in self.requests)

    @property
    def reads(self) -> tuple[Request, ...]:
        return tuple(r for r in self.requests if not r.is_write)

    @property
    def write_requests(self) -> tuple[Request, ...]:
        return tuple(r for r in self.requests if r.is_write)

    def probabilities(self, requests: tuple[Request, ...] | None = None) -> np.ndarray:
        reqs = self.requests if requests is None else requests
        w = np.array([r.weight for r in reqs], dtype=float)
        return w / w.sum()


def resolve(mix: Mix) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...], dict[str, Any]]]:
    """(key, kind, statements, samplers, defaults) of each entry, checked, without a database.

    Unknown shapes or variants and bad custom SQL are refused here, before anything starts.
    """
    from ..dataset import load_shapes
    from ..dataset.samplers import SAMPLERS

    shapes = load_shapes()
    out: list[tuple[str, str, tuple[str, ...], tuple[str, ...], dict[str, Any]]] = []
    for key in mix.weights:
        if key in mix.custom:
            cq = mix.custom[key]
            cq = CustomQuery(cq) if isinstance(cq, str) else cq
            st = check_statement(cq.sql, what=f"mix {mix.name!r} entry {key!r}")
            unknown = [s for s in cq.samplers if s not in SAMPLERS]
            if unknown:
                raise WorkbookError(f"mix {mix.name!r} entry {key!r}: unknown samplers {unknown!r}; known: {sorted(SAMPLERS)}")
            out.append((key, "read" if st.is_read else "write", (cq.sql,), tuple(cq.samplers), dict(cq.defaults)))
            continue
        shape_name, _, variant = key.partition(":")
        if shape_name not in shapes:
            raise WorkbookError(
                f"mix {mix.name!r}: no query shape {shape_name!r} (nor a custom entry of that name); "
                f"known shapes: {', '.join(shapes)}"
            )
        s = shapes[shape_name]
        v = s.variant(variant or None)
        out.append((key, s.kind, v.statements, s.params, dict(s.defaults)))
    return out


def prepare(
    target: Target,
    mix: str | Mix,
    *,
    pool_size: int = 16,
    hot_share: float = 0.8,
    seed: int = 0,
    conn: psycopg.Connection[Any] | None = None,
) -> PreparedMix:
    """Sample ``pool_size`` parameter sets per entry (hot tenants with probability ``hot_share``).

    The k-th set of a tier asks the samplers for their k-th candidate, so a pool rotates through
    several tenants and conversations instead of hammering one cached row.
    """
    m = get_mix(mix)
    if not 0 <= hot_share <= 1:
        raise WorkbookError(f"hot_share must be between 0 and 1, got {hot_share!r}")
    if pool_size < 1:
        raise WorkbookError(f"pool_size must be at least 1, got {pool_size!r}")
    entries = resolve(m)
    from ..dataset.samplers import sample

    rng = np.random.default_rng(seed)
    own = conn is None
    c = target.connect(application_name="workbook-traffic-sampler") if own else conn
    assert c is not None
    try:
        entries = _without_vectors(m, entries, c)
        requests = []
        for key, kind, statements, samplers, defaults in entries:
            params: list[dict[str, Any]] = []
            tiers: list[str] = []
            counters = {"hot": 0, "cold": 0}
            for _ in range(pool_size):
                tier = "hot" if rng.random() < hot_share else "cold"
                values = dict(defaults)
                for name in samplers:
                    values.update(sample(name, c, tier, counters[tier]))
                counters[tier] += 1
                params.append(values)
                tiers.append(tier)
            requests.append(Request(key, kind, statements, float(m.weights[key]), tuple(params), tuple(tiers)))
    finally:
        if own:
            c.close()
    return PreparedMix(m.name, tuple(requests), hot_share, seed)


def _without_vectors(m: Mix, entries: list[Any], conn: psycopg.Connection[Any]) -> list[Any]:
    """The entries, less those that search embeddings when the dataset has none (a server without
    pgvector: see workbook.dataset.loader.NO_VECTORS); says so once on stderr."""
    from ..dataset.loader import has_vectors

    vector = [e[0] for e in entries if "query_embedding" in e[3]]
    if not vector or has_vectors(conn):
        return entries
    kept = [e for e in entries if e[0] not in vector]
    if not kept:
        raise WorkbookError(f"mix {m.name!r} only searches embeddings, and this dataset has none (the server has no pgvector)")
    print(f"note: mix {m.name!r} runs without {', '.join(vector)}: the dataset has no embeddings "
          "(the server has no pgvector)", file=sys.stderr)  # fmt: skip
    return kept
