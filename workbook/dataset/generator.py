"""The deterministic generator of the sample AI-app dataset.

``Generator(seed, scale)`` describes every table of ``datasets/ai_app/schema.sql`` as a stream of
COPY-ready batches. Same seed and scale give byte-identical streams (nothing reads the clock or
the environment); the number of rows is linear in the scale (SF 1 ≈ 1M messages).

What makes the data worth measuring on (each figure is asserted by ``tests/test_dataset_*``):

- **Skewed tenants**: organisations are Zipf-weighted (exponent :data:`ORG_ZIPF`), so a few huge
  tenants hold most conversations and the long tail is tiny: the top 1% of organisations hold
  about 23% of all messages at SF 0.05 (100 orgs), 54% at SF 1 (2,000 orgs) and 62% at SF 3
  (:func:`expected_top_share` gives the model's value; the tests check the data against it).
  Users inside an organisation are skewed again. Which ids are the big tenants is shuffled by the
  seed, so "hot" is not simply "id 1".
- **Bursty time**: conversations start over :data:`DAYS` days before :data:`ANCHOR`, weighted by a
  growth trend, weekdays over weekends, three launch-day bursts and a diurnal curve that peaks in
  the afternoon (UTC); messages follow with model latencies and human think times.
- **Log-normal conversation lengths** (median ≈ 8, mean ≈ 12, a few hundred at most).
- **JSONB metadata** whose keys appear at stated frequencies (:data:`METADATA_FREQUENCIES`),
  e.g. ``tool_calls`` on 30% and ``feedback`` on 2% of assistant messages.
- **Token counts** proportional to content length (≈ 4 characters a token, ±8%).
- **Clustered embeddings**: each document has a topic and one of :data:`SUBCLUSTERS` sub-clusters
  per topic; a chunk is its cluster centre plus a per-document and a per-chunk offset, normalised
  and stored at 2⁻¹⁶ precision (so PostgreSQL and DuckDB can checksum them exactly). ANN recall on
  such data is meaningful, unlike on uniform random vectors.

Memory: rows are produced in fixed-size batches (a few MB each); what is held for the whole run
is a handful of numeric arrays per organisation, user, conversation and document (about 60 bytes
per conversation: ~5 MB at SF 1), never per message.

Why numpy + pyarrow: numpy draws the numbers; Arrow's C++ kernels assemble the strings (content,
JSON, timestamps) and write CSV at a few hundred MB/s, so the generator outpaces the server's COPY
ingest on a 2-core machine, which is what lets the load overlap generation and stay COPY-bound.
"""

from __future__ import annotations

import io
import math
import tomllib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..errors import WorkbookError
from .paths import dataset_dir

GENERATOR_VERSION = 1
ANCHOR = 1790726400  # 2026-09-30 00:00:00 UTC: the dataset's "now"; nothing reads the clock
DAYS = 90
DIM = 384
SUBCLUSTERS = 4
ORG_ZIPF = 1.1
QUANTUM = 65536  # embeddings are multiples of 1/QUANTUM

# per SF 1
MESSAGES_PER_SF = 1_000_000
ORGS_PER_SF = 2_000
USERS_PER_SF = 50_000
DOCUMENTS_PER_SF = 10_000
AUDIT_PER_SF = 200_000

# Share of assistant messages (or user/tool messages, as named) carrying each metadata key.
METADATA_FREQUENCIES: dict[str, tuple[str, float]] = {
    "model": ("assistant", 1.0),
    "latency_ms": ("assistant", 1.0),
    "finish_reason": ("assistant", 1.0),
    "temperature": ("assistant", 0.60),
    "tool_calls": ("assistant", 0.30),
    "tags": ("assistant", 0.15),
    "cached": ("assistant", 0.08),
    "feedback": ("assistant", 0.02),
    "client": ("user", 1.0),
    "attachments": ("user", 0.05),
    "tool": ("tool", 1.0),
}
FEEDBACK_DOWN = 0.35  # share of feedback that is a thumbs-down
FEEDBACK_DOWN_UNRESOLVED = 0.6  # share of thumbs-down not yet resolved

ROLES = ("system", "user", "assistant", "tool")
SYSTEM, USER, ASSISTANT, TOOL = range(4)

CONVERSATIONS_PER_BATCH = 2_000
DOCUMENTS_PER_BATCH = 400
ROWS_PER_BATCH = 25_000
POOL_PER_TOPIC = 256

_CSV = pacsv.WriteOptions(include_header=False, batch_size=8192)


@dataclass(frozen=True)
class TableStream:
    """One table's rows as COPY input: ``batches()`` yields ``(data, rows)`` pairs.

    CSV timestamps are UTC wall times without a zone: COPY them in a session with ``TIME ZONE 'UTC'``.
    """

    name: str
    columns: tuple[str, ...]
    format: str  # "csv" or "binary"
    expected_rows: int  # exact except where noted by `approximate`
    batches: Callable[[], Iterator[tuple[bytes, int]]]
    approximate: bool = False


def expected_top_share(n_orgs: int, top_fraction: float = 0.01, exponent: float = ORG_ZIPF) -> float:
    """The share of conversations the Zipf model gives the top ``top_fraction`` of organisations."""
    w = np.arange(1, n_orgs + 1, dtype=float) ** -exponent
    top = max(1, math.ceil(n_orgs * top_fraction))
    return float(w[:top].sum() / w.sum())


def _key(name: str) -> int:
    return zlib.crc32(name.encode())


def _ts(seconds: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """Epoch seconds as a zone-less timestamp column: the CSV says UTC wall time (``2026-09-01 12:00:00``).

    COPY must run with ``TIME ZONE 'UTC'`` (the loader sets it). Arrow writes zone-less
    timestamps 20x faster than ``strftime`` or zoned ones, and timestamps are a quarter of the
    generator's time otherwise.
    """
    return pa.array(seconds.astype("datetime64[s]"), mask=mask)


def _csv(columns: dict[str, pa.Array | np.ndarray]) -> bytes:
    table = pa.table({k: (v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v)) for k, v in columns.items()})
    out = io.BytesIO()
    pacsv.write_csv(table, out, _CSV)
    return out.getvalue()


def _strings(values: np.ndarray | list[str]) -> pa.Array:
    return pa.array(values, type=pa.string())


def _segment_starts(lengths: np.ndarray) -> np.ndarray:
    return np.cumsum(lengths) - lengths


def _within_segment_cumsum(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of ``x`` restarted at each segment (segments given by lengths)."""
    cs = np.cumsum(x)
    starts = _segment_starts(lengths)
    base = cs[starts] - x[starts]
    return cs - np.repeat(base, lengths)


class Vocabulary:
    """The words and catalogues in ``datasets/ai_app/vocabulary.toml``."""

    def __init__(self, path: Path | None = None) -> None:
        path = path or dataset_dir() / "vocabulary.toml"
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        self.common: list[str] = data["common"].split()
        self.topics: list[str] = list(data["topics"])
        self.topic_words: list[list[str]] = [data["topics"][t].split() for t in self.topics]
        self.first_names: list[str] = data["names"]["first"].split()
        self.last_names: list[str] = data["names"]["last"].split()
        self.org_syllables: list[str] = data["names"]["org_syllables"].split()
        cat = data["models"]["catalog"]
        self.models: list[str] = [m[0] for m in cat]
        self.price_in = np.array([m[1] for m in cat]) / 1000.0
        self.price_out = np.array([m[2] for m in cat]) / 1000.0
        self.latency_ms = np.array([m[3] for m in cat], dtype=float)
        pop = np.array([m[4] for m in cat], dtype=float)
        self.model_popularity = pop / pop.sum()
        c = data["catalogues"]
        self.clients: list[str] = c["clients"]
        self.tools: list[str] = c["tools"]
        self.finish_reasons: list[str] = c["finish_reasons"]
        self.tags: list[str] = c["tags"]
        self.audit_actions: list[tuple[str, str]] = [(str(a[0]), str(a[1])) for a in c["audit_actions"]]
        self.sources: list[str] = c["sources"]
        self.mime_types: list[str] = c["mime_types"]
        self.config_names: list[str] = c["config_names"]
        self.flags: list[str] = c["flags"]


class Generator:
    """The dataset at one seed and scale, as COPY streams in load order (:meth:`tables`)."""

    def __init__(self, seed: int = 42, scale: float = 0.01, *, vocabulary: Vocabulary | None = None) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise WorkbookError(f"seed must be a non-negative integer, got {seed!r}")
        if not (isinstance(scale, (int, float)) and 0.0005 <= scale <= 100):
            raise WorkbookError(f"scale must be between 0.0005 and 100 (SF 1 is about 1M messages), got {scale!r}")
        self.seed = seed
        self.scale = float(scale)
        self.vocab = vocabulary or Vocabulary()
        self.n_orgs = max(20, round(ORGS_PER_SF * scale))
        self.n_users = max(4 * self.n_orgs, round(USERS_PER_SF * scale))
        self.n_documents = max(20, round(DOCUMENTS_PER_SF * scale))
        self.n_audit = max(200, round(AUDIT_PER_SF * scale))

    def rng(self, *keys: str | int) -> np.random.Generator:
        """A generator seeded by (seed, version, keys): each purpose and batch has its own stream."""
        parts = [self.seed, GENERATOR_VERSION] + [k if isinstance(k, int) else _key(k) for k in keys]
        return np.random.default_rng(parts)

    # ----------------------------------------------------------------- organisations and users
    @cached_property
    def org_weight(self) -> np.ndarray:
        """Zipf weight of each organisation, indexed by org id - 1 (ranks shuffled by the seed)."""
        ranks = self.rng("org-ranks").permutation(self.n_orgs)
        w = (ranks + 1.0) ** -ORG_ZIPF
        return w / w.sum()

    @cached_property
    def org_rank(self) -> np.ndarray:
        return np.argsort(np.argsort(-self.org_weight, kind="stable"), kind="stable")

    @cached_property
    def org_users(self) -> tuple[np.ndarray, np.ndarray]:
        """(first user index, user count) per organisation; users are numbered org by org."""
        share = self.org_weight**0.7
        share /= share.sum()
        counts = 1 + np.floor(share * (self.n_users - self.n_orgs)).astype(np.int64)
        return _segment_starts(counts), counts

    @property
    def users_total(self) -> int:
        return int(self.org_users[1].sum())

    @cached_property
    def user_org(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_orgs), self.org_users[1])

    def _pick_user(self, org: np.ndarray, rng: np.random.Generator, skew: float = 1.8) -> np.ndarray:
        """A user index in each org, early members more active (u**skew puts mass near 0)."""
        start, count = self.org_users
        return start[org] + np.floor(count[org] * rng.random(len(org)) ** skew).astype(np.int64)

    def _pick_org(self, n: int, rng: np.random.Generator) -> np.ndarray:
        cdf = np.cumsum(self.org_weight)
        return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), self.n_orgs - 1)

    @cached_property
    def org_created(self) -> np.ndarray:
        rng = self.rng("org-created")
        return ANCHOR - DAYS * 86400 - rng.integers(86400, 700 * 86400, self.n_orgs)

    @cached_property
    def org_topic(self) -> np.ndarray:
        return self.rng("org-topic").integers(0, len(self.vocab.topics), self.n_orgs)

    @cached_property
    def org_model(self) -> np.ndarray:
        p = self.vocab.model_popularity
        return self.rng("org-model").choice(len(p), self.n_orgs, p=p)

    @cached_property
    def org_size(self) -> np.ndarray:
        """Each organisation's size relative to the largest, dampened (sqrt): drives per-org counts."""
        return (self.org_weight / self.org_weight.max()) ** 0.5

    @cached_property
    def org_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(first api key index, key count) per organisation."""
        counts = 1 + self.rng("org-keys").poisson(0.5 + 6 * self.org_size)
        return _segment_starts(counts), counts

    @cached_property
    def org_configs(self) -> tuple[np.ndarray, np.ndarray]:
        """(first model config index, config count) per organisation."""
        counts = np.minimum(len(self.vocab.config_names), 1 + self.rng("org-configs").poisson(0.3 + 3 * self.org_size))
        return _segment_starts(counts), counts

    def hot_orgs(self, n: int = 3) -> list[int]:
        """Ids of the ``n`` largest tenants (by Zipf weight)."""
        return [int(i) + 1 for i in np.argsort(-self.org_weight, kind="stable")[:n]]

    def cold_orgs(self, n: int = 3) -> list[int]:
        """Ids of small but not empty tenants: around the 80th percentile of rank."""
        order = np.argsort(-self.org_weight, kind="stable")
        at = int(self.n_orgs * 0.8)
        return [int(i) + 1 for i in order[at : at + n]]

    # ----------------------------------------------------------------- conversations (plan)
    @cached_property
    def conversations(self) -> dict[str, np.ndarray]:
        """Per-conversation arrays, ids in start-time order (as a serial id would be)."""
        rng = self.rng("conversations")
        mean_len = math.exp(2.0 + 0.9**2 / 2) + 1
        n = max(50, round(MESSAGES_PER_SF * self.scale / mean_len))
        org = self._pick_org(n, rng)
        user = self._pick_user(org, rng)
        start = np.sort(self._start_times(n, rng))
        # sorting start times after drawing org/user keeps the pairing random, ids time-ordered
        length = np.clip(np.floor(rng.lognormal(2.0, 0.9, n)).astype(np.int64) + 1, 1, 400)
        topic = np.where(rng.random(n) < 0.65, self.org_topic[org], rng.integers(0, len(self.vocab.topics), n))
        model = np.where(
            rng.random(n) < 0.7,
            self.org_model[org],
            rng.choice(len(self.vocab.models), n, p=self.vocab.model_popularity),
        )
        cfg_start, cfg_count = self.org_configs
        config = np.where(rng.random(n) < 0.8, cfg_start[org] + rng.integers(0, 1 << 30, n) % cfg_count[org], -1)
        key_start, key_count = self.org_keys
        api_key = np.where(rng.random(n) < 0.25, key_start[org] + rng.integers(0, 1 << 30, n) % key_count[org], -1)
        has_system = rng.random(n) < 0.10
        status = rng.choice(3, n, p=[0.70, 0.25, 0.05])
        return {
            "org": org,
            "user": user,
            "start": start,
            "length": length,
            "topic": topic,
            "model": model,
            "config": config,
            "api_key": api_key,
            "has_system": has_system,
            "status": status,
            "first_message": _segment_starts(length),
        }

    @property
    def n_conversations(self) -> int:
        return len(self.conversations["org"])

    @property
    def n_messages(self) -> int:
        return int(self.conversations["length"].sum())

    def day_weights(self) -> np.ndarray:
        """Relative traffic of each of the DAYS days: trend x weekday x launch bursts."""
        d = np.arange(DAYS)
        trend = 1.0 + 0.6 * d / DAYS
        weekday = (ANCHOR // 86400 - DAYS + d + 3) % 7  # 0 = Monday (1970-01-01 was a Thursday)
        week = np.where(weekday >= 5, 0.55, 1.0)
        burst = np.ones(DAYS)
        for day in self.rng("bursts").choice(np.arange(5, DAYS - 2), 3, replace=False):
            burst[day] *= 3.0
            burst[day + 1] *= 1.8
        w = trend * week * burst
        return w / w.sum()

    @staticmethod
    def hour_weights() -> np.ndarray:
        h = np.arange(24)
        w = 0.15 + np.exp(-(((h - 15) / 3.5) ** 2)) + 0.35 * np.exp(-(((h - 21) / 2.0) ** 2))
        return w / w.sum()

    def _start_times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        day = rng.choice(DAYS, n, p=self.day_weights())
        hour = rng.choice(24, n, p=self.hour_weights())
        base = ANCHOR - DAYS * 86400
        return base + day * 86400 + hour * 3600 + rng.integers(0, 3600, n)

    # ----------------------------------------------------------------- text
    @cached_property
    def passages(self) -> tuple[pa.Array, np.ndarray]:
        """Per topic, POOL_PER_TOPIC short then POOL_PER_TOPIC long passages; and their lengths."""
        rng = self.rng("passages")
        v = self.vocab
        out: list[str] = []
        for words in v.topic_words:
            for kind_median in (10, 34):
                for _ in range(POOL_PER_TOPIC):
                    k = max(3, int(rng.lognormal(math.log(kind_median), 0.45)))
                    topical = rng.random(k) < 0.45
                    tw = np.minimum(rng.zipf(1.4, k) - 1, len(words) - 1)
                    cw = np.minimum(rng.zipf(1.3, k) - 1, len(v.common) - 1)
                    text = " ".join(words[a] if t else v.common[b] for t, a, b in zip(topical, tw, cw))
                    out.append(text[0].upper() + text[1:] + ("?" if kind_median == 10 and rng.random() < 0.4 else "."))
        arr = _strings(out)
        return arr, np.array([len(s) for s in out], dtype=np.int64)

    def _pool_index(self, topic: np.ndarray, long: bool, rng: np.random.Generator) -> np.ndarray:
        return topic * 2 * POOL_PER_TOPIC + (POOL_PER_TOPIC if long else 0) + rng.integers(0, POOL_PER_TOPIC, len(topic))

    @cached_property
    def titles(self) -> list[list[str]]:
        rng = self.rng("titles")
        result = []
        for words in self.vocab.topic_words:
            pool = []
            for _ in range(64):
                k = int(rng.integers(2, 6))
                pick = [words[i] for i in np.minimum(rng.zipf(1.5, k) - 1, len(words) - 1)]
                pool.append(" ".join(pick).capitalize())
            result.append(pool)
        return result

    # ----------------------------------------------------------------- message skeletons
    def _skeleton(self, batch: int) -> dict[str, np.ndarray]:
        """Numeric columns of the messages of conversations [batch*B, (batch+1)*B)."""
        conv = self.conversations
        a = batch * CONVERSATIONS_PER_BATCH
        b = min(a + CONVERSATIONS_PER_BATCH, self.n_conversations)
        rng = self.rng("messages", batch)
        lengths = conv["length"][a:b]
        n = int(lengths.sum())
        ci = np.repeat(np.arange(a, b), lengths)
        pos = np.arange(n) - np.repeat(_segment_starts(lengths), lengths)
        has_sys = conv["has_system"][ci].astype(np.int64)
        role = np.where(pos < has_sys, SYSTEM, np.where((pos - has_sys) % 2 == 0, USER, ASSISTANT))
        tool_calls = (role == ASSISTANT) & (rng.random(n) < METADATA_FREQUENCIES["tool_calls"][1])
        follows = np.zeros(n, dtype=bool)
        follows[1:] = tool_calls[:-1] & (ci[1:] == ci[:-1]) & (role[1:] == USER)
        role = np.where(follows, TOOL, role)

        topic = conv["topic"][ci]
        p1 = np.where(role == ASSISTANT, self._pool_index(topic, True, rng), self._pool_index(topic, False, rng))
        p2 = np.where(role == ASSISTANT, self._pool_index(topic, True, rng), -1)
        p3 = np.where((role == ASSISTANT) & (rng.random(n) < 0.35), self._pool_index(topic, True, rng), -1)
        plen = self.passages[1]
        chars = plen[p1] + np.where(p2 >= 0, plen[p2] + 1, 0) + np.where(p3 >= 0, plen[p3] + 1, 0)
        tokens = np.maximum(1, np.round(chars / 4.0 * rng.lognormal(0.0, 0.08, n))).astype(np.int64)

        model = conv["model"][ci]
        latency = np.round(self.vocab.latency_ms[model] * rng.lognormal(0.0, 0.45, n) * (1 + tokens / 800)).astype(np.int64)
        think = rng.lognormal(math.log(45), 1.0, n)
        think = np.where(rng.random(n) < 0.04, rng.lognormal(math.log(3 * 3600), 0.8, n), think)
        gap = np.select(
            [pos == 0, role == ASSISTANT, role == TOOL, role == SYSTEM],
            [0.0, latency / 1000.0, rng.uniform(0.2, 3.0, n), 0.0],
            default=np.where(pos <= has_sys, rng.uniform(0, 2, n), think),
        )
        created = conv["start"][ci] + np.floor(_within_segment_cumsum(gap, lengths)).astype(np.int64)
        context = _within_segment_cumsum(tokens, lengths) - tokens  # tokens before this message
        first_id = int(conv["first_message"][a]) + 1
        return {
            "id": np.arange(first_id, first_id + n, dtype=np.int64),
            "conv": ci,
            "pos": pos,
            "role": role,
            "p1": p1,
            "p2": p2,
            "p3": p3,
            "tokens": tokens,
            "model": model,
            "latency": latency,
            "tool_calls": tool_calls,
            "created": created,
            "context": context,
            "u": rng.random((n, 8)),  # uniform draws for the optional metadata keys
            "pick": rng.integers(0, 1 << 30, (n, 4)),
        }

    @property
    def n_message_batches(self) -> int:
        return math.ceil(self.n_conversations / CONVERSATIONS_PER_BATCH)

    # ----------------------------------------------------------------- table streams
    def tables(self) -> list[TableStream]:
        """Every table of the schema except ``invoices`` (derived in SQL after load), in FK order."""
        n_keys = int(self.org_keys[1].sum())
        n_configs = int(self.org_configs[1].sum())
        n_chunks = int(self.document_plan["chunks"].sum())
        return [
            TableStream("organisations", ("id", "name", "slug", "plan", "created_at"), "csv", self.n_orgs, self._organisations),
            TableStream(
                "users",
                ("id", "org_id", "email", "display_name", "role", "created_at", "last_seen_at", "is_active"),
                "csv",
                self.users_total,
                self._users,
            ),
            TableStream(
                "api_keys",
                ("id", "org_id", "created_by", "name", "key_prefix", "key_hash", "created_at", "last_used_at", "revoked_at"),
                "csv",
                n_keys,
                self._api_keys,
            ),
            TableStream("model_configs", ("id", "org_id", "name", "config", "created_at"), "csv", n_configs, self._model_configs),
            TableStream(
                "conversations",
                ("id", "org_id", "user_id", "model_config_id", "title", "status", "started_at", "last_activity_at", "message_count"),
                "csv",
                self.n_conversations,
                self._conversations,
            ),
            TableStream(
                "messages",
                ("id", "conversation_id", "org_id", "user_id", "role", "content", "token_count", "created_at", "metadata"),
                "csv",
                self.n_messages,
                self._messages,
            ),
            TableStream(
                "usage_events",
                (
                    "id", "org_id", "user_id", "api_key_id", "conversation_id", "message_id", "model",
                    "prompt_tokens", "completion_tokens", "cost_usd", "occurred_at",
                ),
                "csv",
                round(self.n_messages * 0.47),
                self._usage_events,
                approximate=True,
            ),
            TableStream(
                "audit_log",
                ("id", "org_id", "actor_user_id", "action", "target_type", "target_id", "payload", "occurred_at"),
                "csv",
                self.n_audit,
                self._audit_log,
            ),
            TableStream(
                "documents",
                ("id", "org_id", "uploaded_by", "title", "source", "mime_type", "byte_size", "created_at"),
                "csv",
                self.n_documents,
                self._documents,
            ),
            TableStream(
                "chunks",
                ("id", "document_id", "org_id", "chunk_index", "token_count", "embedding", "content"),
                "binary",
                n_chunks,
                self._chunks,
            ),
            TableStream(
                "feature_flags",
                ("id", "org_id", "key", "enabled", "rollout_percent", "updated_at"),
                "csv",
                len(self._flag_rows()[0]),
                self._feature_flags,
            ),
        ]

    def _organisations(self) -> Iterator[tuple[bytes, int]]:
        rng = self.rng("organisations")
        syl = self.vocab.org_syllables
        n = self.n_orgs
        k = rng.integers(2, 4, n)
        parts = rng.integers(0, len(syl), (n, 3))
        names = ["".join(syl[p] for p in parts[i, : k[i]]).capitalize() for i in range(n)]
        suffix = rng.choice(["AI", "Labs", "Inc", "Health", "Legal", "Cloud", "Studio", "Bank"], n)
        full = [f"{a} {b}" for a, b in zip(names, suffix)]
        ids = np.arange(1, n + 1)
        slugs = [f"{a.lower()}-{b.lower()}-{i}" for a, b, i in zip(names, suffix, ids)]
        pct = self.org_rank / n
        plan = np.select([pct < 0.02, pct < 0.12, pct < 0.42], ["enterprise", "team", "pro"], default="free")
        yield _csv(
            {"id": ids, "name": _strings(full), "slug": _strings(slugs), "plan": _strings(plan), "created_at": _ts(self.org_created)}
        ), n

    def _users(self) -> Iterator[tuple[bytes, int]]:
        rng = self.rng("users")
        n = self.users_total
        org = self.user_org
        start, _ = self.org_users
        ids = np.arange(1, n + 1)
        local = ids - 1 - start[org]
        v = self.vocab
        first = pa.array(rng.integers(0, len(v.first_names), n))
        last = pa.array(rng.integers(0, len(v.last_names), n))
        display = pc.binary_join_element_wise(
            pc.take(_strings([f.capitalize() for f in v.first_names]), first),
            pc.take(_strings([x.capitalize() for x in v.last_names]), last),
            " ",
        )
        email = pc.binary_join_element_wise(
            pc.take(_strings(v.first_names), first), ".", pc.take(_strings(v.last_names), last), ".",
            pc.cast(pa.array(ids), pa.string()), "@org", pc.cast(pa.array(org + 1), pa.string()), ".example", "",
        )  # fmt: skip
        role = np.where(local == 0, "owner", np.where(local <= 2, "admin", "member"))
        created = self.org_created[org] + np.where(local == 0, 0, rng.integers(3600, 300 * 86400, n))
        created = np.minimum(created, ANCHOR - 86400)
        seen = np.maximum(created, ANCHOR - rng.integers(0, 30 * 86400, n))
        yield _csv(
            {
                "id": ids,
                "org_id": org + 1,
                "email": email,
                "display_name": display,
                "role": _strings(role),
                "created_at": _ts(created),
                "last_seen_at": _ts(seen, mask=rng.random(n) < 0.1),
                "is_active": rng.random(n) < 0.95,
            }
        ), n

    def _api_keys(self) -> Iterator[tuple[bytes, int]]:
        rng = self.rng("api-keys")
        _, count = self.org_keys
        n = int(count.sum())
        org = np.repeat(np.arange(self.n_orgs), count)
        ids = np.arange(1, n + 1, dtype=np.uint64)
        prefix = [f"wb_{int(x):08x}" for x in (ids * np.uint64(2654435761)) % np.uint64(1 << 32)]  # a bijection: unique
        key_hash = [bytes(r).hex() for r in rng.integers(0, 256, (n, 32), dtype=np.uint8)]
        names = rng.choice(["production", "staging", "ci", "backend", "zapier", "notebook", "mobile"], n)
        created = self.org_created[org] + rng.integers(86400, 200 * 86400, n)
        revoked = rng.random(n) < 0.15
        owner = self.org_users[0][org] + 1
        yield _csv(
            {
                "id": ids.astype(np.int64),
                "org_id": org + 1,
                "created_by": owner,
                "name": _strings(names),
                "key_prefix": _strings(prefix),
                "key_hash": _strings(key_hash),
                "created_at": _ts(created),
                "last_used_at": _ts(ANCHOR - rng.integers(0, 20 * 86400, n), mask=rng.random(n) < 0.2),
                "revoked_at": _ts(created + rng.integers(86400, 60 * 86400, n), mask=~revoked),
            }
        ), n

    def _model_configs(self) -> Iterator[tuple[bytes, int]]:
        rng = self.rng("model-configs")
        start, count = self.org_configs
        n = int(count.sum())
        org = np.repeat(np.arange(self.n_orgs), count)
        local = np.arange(n) - start[org]
        v = self.vocab
        models = np.where(local == 0, self.org_model[org], rng.choice(len(v.models), n, p=v.model_popularity))
        rows = []
        for i in range(n):
            tools = [v.tools[t] for t in sorted(set(rng.integers(0, len(v.tools), int(rng.integers(0, 4)))))]
            rows.append(
                '{"model": "%s", "temperature": %.1f, "max_tokens": %d, "tools": [%s], "system_prompt": "%s"}'  # noqa: UP031 (the generator's bytes are its contract)
                % (
                    v.models[models[i]],
                    rng.integers(0, 11) / 10,
                    int(rng.choice([256, 512, 1024, 2048, 4096])),
                    ", ".join(f'"{t}"' for t in tools),
                    f"You are the {v.config_names[local[i]]} assistant.",
                )
            )
        yield _csv(
            {
                "id": np.arange(1, n + 1),
                "org_id": org + 1,
                "name": _strings([v.config_names[i] for i in local]),
                "config": _strings(rows),
                "created_at": _ts(self.org_created[org] + rng.integers(3600, 100 * 86400, n)),
            }
        ), n

    def _conversations(self) -> Iterator[tuple[bytes, int]]:
        conv = self.conversations
        for batch in range(self.n_message_batches):
            sk = self._skeleton(batch)
            a = batch * CONVERSATIONS_PER_BATCH
            b = min(a + CONVERSATIONS_PER_BATCH, self.n_conversations)
            lengths = conv["length"][a:b]
            last = sk["created"][np.cumsum(lengths) - 1]
            rng = self.rng("conversation-rows", batch)
            topic = conv["topic"][a:b]
            titles = [self.titles[t][i] for t, i in zip(topic, rng.integers(0, 64, b - a))]
            cfg = conv["config"][a:b]
            yield _csv(
                {
                    "id": np.arange(a + 1, b + 1),
                    "org_id": conv["org"][a:b] + 1,
                    "user_id": conv["user"][a:b] + 1,
                    "model_config_id": pa.array(cfg + 1, mask=cfg < 0),
                    "title": _strings(titles),
                    "status": pc.take(_strings(["active", "archived", "deleted"]), pa.array(conv["status"][a:b])),
                    "started_at": _ts(conv["start"][a:b]),
                    "last_activity_at": _ts(last),
                    "message_count": lengths,
                }
            ), b - a

    def _messages(self) -> Iterator[tuple[bytes, int]]:
        conv = self.conversations
        pool = self.passages[0]
        for batch in range(self.n_message_batches):
            sk = self._skeleton(batch)
            n = len(sk["id"])
            p2, p3 = sk["p2"], sk["p3"]
            content = pc.binary_join_element_wise(
                pc.take(pool, pa.array(sk["p1"])),
                pc.take(pool, pa.array(np.maximum(p2, 0), mask=p2 < 0)),
                pc.take(pool, pa.array(np.maximum(p3, 0), mask=p3 < 0)),
                " ",
                null_handling="skip",
            )
            role = sk["role"]
            user = np.where(role == USER, conv["user"][sk["conv"]] + 1, 0)
            yield _csv(
                {
                    "id": sk["id"],
                    "conversation_id": sk["conv"] + 1,
                    "org_id": conv["org"][sk["conv"]] + 1,
                    "user_id": pa.array(user, mask=role != USER),
                    "role": pc.take(_strings(list(ROLES)), pa.array(role)),
                    "content": content,
                    "token_count": sk["tokens"],
                    "created_at": _ts(sk["created"]),
                    "metadata": self._metadata(sk),
                }
            ), n

    def _metadata(self, sk: dict[str, np.ndarray]) -> pa.Array:
        """The JSON text of each message's metadata, assembled column-wise by Arrow kernels."""
        v = self.vocab
        n = len(sk["id"])
        role, u, pick = sk["role"], sk["u"], sk["pick"]
        asst, usr, tool = role == ASSISTANT, role == USER, role == TOOL
        empty = pa.array([""] * n, type=pa.string())

        def opt(mask: np.ndarray, values: pa.Array | str) -> pa.Array:
            vals = values if isinstance(values, pa.Array) else pa.array([values] * n, type=pa.string())
            return pc.if_else(pa.array(mask), vals, empty)

        def s(x: np.ndarray) -> pa.Array:
            return pc.cast(pa.array(x), pa.string())

        def take(names: list[str], idx: np.ndarray) -> pa.Array:
            return pc.take(_strings(names), pa.array(idx % len(names)))

        join = pc.binary_join_element_wise
        finish = np.where(sk["tool_calls"], 2, np.where(u[:, 0] < 0.04, 1, 0))
        has_fb = asst & (u[:, 1] < METADATA_FREQUENCIES["feedback"][1])
        down = u[:, 2] < FEEDBACK_DOWN
        unresolved = down & (u[:, 3] < FEEDBACK_DOWN_UNRESOLVED)
        feedback = join(
            ', "feedback": {"rating": "',
            pc.if_else(pa.array(down), "down", "up"),
            '", "resolved": ',
            pc.if_else(pa.array(unresolved), "false", "true"),
            "}",
            "",
        )
        assistant = join(
            '{"model": "',
            take(v.models, sk["model"]),
            '", "latency_ms": ',
            s(sk["latency"]),
            ', "finish_reason": "',
            take(v.finish_reasons, finish),
            '"',
            opt(asst & (u[:, 4] < METADATA_FREQUENCIES["temperature"][1]), join(', "temperature": ', s(pick[:, 0] % 11 / 10), "")),
            opt(
                sk["tool_calls"],
                join(', "tool_calls": [{"id": "call_', s(sk["id"]), '", "name": "', take(v.tools, pick[:, 1]), '"}]', ""),
            ),
            opt(asst & (u[:, 5] < METADATA_FREQUENCIES["tags"][1]), join(', "tags": ["', take(v.tags, pick[:, 2]), '"]', "")),
            opt(asst & (u[:, 6] < METADATA_FREQUENCIES["cached"][1]), ', "cached": true'),
            opt(has_fb, feedback),
            "}",
            "",
        )
        user = join(
            '{"client": "',
            take(v.clients, pick[:, 3]),
            '"',
            opt(usr & (u[:, 7] < METADATA_FREQUENCIES["attachments"][1]), join(', "attachments": ', s(1 + pick[:, 0] % 3), "")),
            "}",
            "",
        )
        tool_meta = join('{"tool": "', take(v.tools, pick[:, 1]), '", "duration_ms": ', s(50 + pick[:, 2] % 4000), "}", "")
        system = pa.array(['{"template": "support-v3"}'] * n, type=pa.string())
        return pc.if_else(pa.array(asst), assistant, pc.if_else(pa.array(usr), user, pc.if_else(pa.array(tool), tool_meta, system)))

    def _usage_events(self) -> Iterator[tuple[bytes, int]]:
        conv = self.conversations
        v = self.vocab
        for batch in range(self.n_message_batches):
            sk = self._skeleton(batch)
            sel = sk["role"] == ASSISTANT
            ci = sk["conv"][sel]
            model = sk["model"][sel]
            prompt = np.minimum(sk["context"][sel] + 180, 128_000)
            completion = sk["tokens"][sel]
            cost = np.round(prompt * v.price_in[model] + completion * v.price_out[model], 6)
            key = conv["api_key"][ci]
            yield _csv(
                {
                    "id": sk["id"][sel],  # one event per assistant message: it shares the message's id
                    "org_id": conv["org"][ci] + 1,
                    "user_id": conv["user"][ci] + 1,
                    "api_key_id": pa.array(key + 1, mask=key < 0),
                    "conversation_id": ci + 1,
                    "message_id": sk["id"][sel],
                    "model": pc.take(_strings(v.models), pa.array(model)),
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "cost_usd": pc.cast(pa.array(cost), pa.string()),
                    "occurred_at": _ts(sk["created"][sel]),
                }
            ), int(sel.sum())

    def _audit_log(self) -> Iterator[tuple[bytes, int]]:
        n = self.n_audit
        times = np.sort(self._start_times(n, self.rng("audit-times")))
        actions = self.vocab.audit_actions
        act_p = np.arange(1, len(actions) + 1, dtype=float) ** -1.0
        act_p /= act_p.sum()
        for k, a in enumerate(range(0, n, ROWS_PER_BATCH)):
            b = min(a + ROWS_PER_BATCH, n)
            m = b - a
            rng = self.rng("audit", k)
            org = self._pick_org(m, rng)
            actor = self._pick_user(org, rng)
            system_actor = rng.random(m) < 0.05
            act = rng.choice(len(actions), m, p=act_p)
            target_type = np.array([t for _, t in actions])[act]
            limits = {
                "user": self.users_total,
                "conversation": self.n_conversations,
                "message": self.n_messages,
                "document": self.n_documents,
                "api_key": int(self.org_keys[1].sum()),
                "organisation": self.n_orgs,
                "model_config": int(self.org_configs[1].sum()),
            }
            target_id = np.array([1 + int(r) % limits[t] for t, r in zip(target_type, rng.integers(0, 1 << 40, m))])
            target_id = np.where(target_type == "organisation", org + 1, target_id)
            ip = [f"10.{x >> 16 & 255}.{x >> 8 & 255}.{x & 255}" for x in rng.integers(0, 1 << 24, m)]
            payload = pc.binary_join_element_wise(
                '{"ip": "',
                _strings(ip),
                '", "user_agent": "',
                pc.take(_strings(["web/5.2", "ios/3.1", "android/3.0", "api/1", "cli/0.9"]), pa.array(rng.integers(0, 5, m))),
                '", "request_id": "req_',
                pc.cast(pa.array(rng.integers(1 << 40, 1 << 41, m)), pa.string()),
                '"}',
                "",
            )
            yield _csv(
                {
                    "id": np.arange(a + 1, b + 1),
                    "org_id": org + 1,
                    "actor_user_id": pa.array(actor + 1, mask=system_actor),
                    "action": _strings([actions[i][0] for i in act]),
                    "target_type": _strings(target_type),
                    "target_id": target_id,
                    "payload": payload,
                    "occurred_at": _ts(times[a:b]),
                }
            ), m

    # ----------------------------------------------------------------- documents and chunks
    @cached_property
    def document_plan(self) -> dict[str, np.ndarray]:
        rng = self.rng("documents")
        n = self.n_documents
        org = self._pick_org(n, rng)
        chunks = np.clip(np.round(rng.lognormal(2.0, 0.6, n)).astype(np.int64), 1, 120)
        return {
            "org": org,
            "uploader": self._pick_user(org, rng),
            "topic": np.where(rng.random(n) < 0.7, self.org_topic[org], rng.integers(0, len(self.vocab.topics), n)),
            "sub": rng.integers(0, SUBCLUSTERS, n),
            "created": np.sort(self._start_times(n, rng)),
            "chunks": chunks,
            "first_chunk": _segment_starts(chunks),
        }

    @cached_property
    def centres(self) -> np.ndarray:
        """Unit cluster centres, one per (topic, sub-cluster)."""
        c = self.rng("centres").standard_normal((len(self.vocab.topics) * SUBCLUSTERS, DIM))
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    def _documents(self) -> Iterator[tuple[bytes, int]]:
        d = self.document_plan
        rng = self.rng("document-rows")
        n = self.n_documents
        v = self.vocab
        titles = [self.titles[t][i] for t, i in zip(d["topic"], rng.integers(0, 64, n))]
        yield _csv(
            {
                "id": np.arange(1, n + 1),
                "org_id": d["org"] + 1,
                "uploaded_by": d["uploader"] + 1,
                "title": _strings(titles),
                "source": pc.take(_strings(v.sources), pa.array(rng.integers(0, len(v.sources), n))),
                "mime_type": pc.take(_strings(v.mime_types), pa.array(rng.integers(0, len(v.mime_types), n))),
                "byte_size": d["chunks"] * rng.integers(1500, 4000, n),
                "created_at": _ts(d["created"]),
            }
        ), n

    def embeddings(self, doc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Quantised unit vectors for chunks of the given documents (one row per chunk)."""
        d = self.document_plan
        cluster = d["topic"][doc] * SUBCLUSTERS + d["sub"][doc]
        uniq, inverse = np.unique(doc, return_inverse=True)
        doc_offset = self.rng("doc-offsets", int(uniq[0])).standard_normal((len(uniq), DIM)) * (0.6 / math.sqrt(DIM))
        noise = rng.standard_normal((len(doc), DIM)) * (0.5 / math.sqrt(DIM))
        e = self.centres[cluster] + doc_offset[inverse] + noise
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        return (np.round(e * QUANTUM) / QUANTUM).astype(np.float32)

    def _chunks(self) -> Iterator[tuple[bytes, int]]:
        d = self.document_plan
        pool, _ = self.passages
        header = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
        rowtype = np.dtype(
            [
                ("ncols", ">i2"), ("l1", ">i4"), ("id", ">i8"), ("l2", ">i4"), ("doc", ">i8"), ("l3", ">i4"), ("org", ">i8"),
                ("l4", ">i4"), ("idx", ">i4"), ("l5", ">i4"), ("tokens", ">i4"), ("l6", ">i4"), ("dim", ">i2"),
                ("unused", ">i2"), ("vec", ">f4", (DIM,)), ("l7", ">i4"),
            ]
        )  # fmt: skip
        for k, a in enumerate(range(0, self.n_documents, DOCUMENTS_PER_BATCH)):
            b = min(a + DOCUMENTS_PER_BATCH, self.n_documents)
            rng = self.rng("chunks", k)
            counts = d["chunks"][a:b]
            doc = np.repeat(np.arange(a, b), counts)
            m = len(doc)
            first = int(d["first_chunk"][a])
            topic = d["topic"][doc]
            p1 = self._pool_index(topic, True, rng)
            p2 = self._pool_index(topic, True, rng)
            text = pc.binary_join_element_wise(pc.take(pool, pa.array(p1)), pc.take(pool, pa.array(p2)), " ").to_pylist()
            encoded = [t.encode() for t in text]
            rec = np.zeros(m, dtype=rowtype)
            rec["ncols"], rec["l1"], rec["l2"], rec["l3"], rec["l4"], rec["l5"] = 7, 8, 8, 8, 4, 4
            rec["l6"], rec["dim"] = 4 + 4 * DIM, DIM
            rec["id"] = np.arange(first + 1, first + m + 1)
            rec["doc"] = doc + 1
            rec["org"] = d["org"][doc] + 1
            rec["idx"] = np.arange(m) - np.repeat(_segment_starts(counts), counts)
            rec["tokens"] = [max(1, round(len(t) / 4)) for t in encoded]
            rec["vec"] = self.embeddings(doc, rng)
            rec["l7"] = [len(t) for t in encoded]
            raw = rec.tobytes()
            size = rowtype.itemsize
            parts = [header] if k == 0 else []
            for i, t in enumerate(encoded):
                parts.append(raw[i * size : (i + 1) * size])
                parts.append(t)
            if b == self.n_documents:
                parts.append(b"\xff\xff")
            yield b"".join(parts), m

    def _flag_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(org index or -1, flag index) for every feature-flag row."""
        flags = len(self.vocab.flags)
        big = np.argsort(-self.org_weight, kind="stable")[: max(1, self.n_orgs // 10)]
        rng = self.rng("flag-orgs")
        orgs = [np.full(flags, -1)]
        keys = [np.arange(flags)]
        for o in np.sort(big):
            chosen = np.sort(rng.choice(flags, 3, replace=False))
            orgs.append(np.full(3, o))
            keys.append(chosen)
        return np.concatenate(orgs), np.concatenate(keys)

    def _feature_flags(self) -> Iterator[tuple[bytes, int]]:
        org, key = self._flag_rows()
        n = len(org)
        rng = self.rng("flags")
        enabled = rng.random(n) < 0.6
        yield _csv(
            {
                "id": np.arange(1, n + 1),
                "org_id": pa.array(org + 1, mask=org < 0),
                "key": pc.take(_strings(self.vocab.flags), pa.array(key)),
                "enabled": enabled,
                "rollout_percent": np.where(enabled, rng.choice([5, 10, 25, 50, 100], n), 0),
                "updated_at": _ts(ANCHOR - rng.integers(0, 120 * 86400, n)),
            }
        ), n
