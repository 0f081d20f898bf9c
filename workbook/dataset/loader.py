"""Loading the sample dataset into a Target: atomic, streamed, COPY-bound.

The whole load is one transaction:

1. take an advisory lock (two loaders queue instead of interleaving);
2. create a fresh staging schema and the tables in it (``schema.sql``, section "tables");
3. ``COPY ... FREEZE`` every table from the generator, generation running in a thread while the
   previous batch is sent (Arrow's kernels and libpq's send release the GIL, so on two cores the
   server's ingest, not Python, sets the pace);
4. derive ``invoices`` and ``organisations.tokens_this_month`` in SQL; move each identity
   sequence past the largest id loaded, so the app's inserts get fresh ids;
5. add the foreign keys (section "constraints": one validating join each);
6. ``ANALYZE``, write ``dataset_info``;
7. drop the old ``ai_app`` schema and rename the staging one to ``ai_app``; commit.

So a reader sees either the old dataset or the new one, never half of one: a load that fails or is
killed (even with kill -9 mid-COPY) rolls back with its transaction and leaves the previous
dataset untouched. Tables created in the loading transaction let ``COPY FREEZE`` write rows
already frozen and all-visible, so the first queries do not pay for hint bits and index-only
scans work at once.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..errors import WorkbookError
from .generator import GENERATOR_VERSION, Generator, TableStream
from .paths import dataset_dir

if TYPE_CHECKING:
    from ..cluster.target import Target

SCHEMA = "ai_app"
STAGING = "ai_app__loading"
_LOCK_KEY = 0x5742_4C4F  # "WBLO": the dataset loader's advisory lock

ProgressFn = Callable[[str, int, int], None]  # (table, rows done in table, expected rows in table)


@dataclass(frozen=True)
class DatasetInfo:
    """What is loaded: the generator's parameters and what the load measured."""

    seed: int
    scale: float
    generator_version: int
    rows: dict[str, int]
    bytes: int
    load_seconds: float
    hot_orgs: list[int] = field(default_factory=list)
    cold_orgs: list[int] = field(default_factory=list)
    server_version: str = ""
    phases: dict[str, float] = field(default_factory=dict)  # seconds per load phase

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def mb_per_second(self) -> float:
        return self.bytes / 1e6 / self.load_seconds if self.load_seconds else 0.0


def schema_sections() -> dict[str, str]:
    """The sections of ``schema.sql`` ("tables", "constraints") as SQL text."""
    text = (dataset_dir() / "schema.sql").read_text()
    parts = re.split(r"^-- section: (\w+)\s*$", text, flags=re.MULTILINE)
    sections = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    if set(sections) != {"tables", "constraints"}:
        raise WorkbookError(f"schema.sql must have the sections 'tables' and 'constraints', found {sorted(sections)!r}")
    return sections


def _vector_schema(conn: psycopg.Connection[Any]) -> str:
    """Install pgvector if needed; return the schema its types live in."""
    row = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row:
        return str(row[0])
    if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
        raise WorkbookError(
            "the pgvector extension is not available on this server (chunks.embedding is vector(384)); "
            "install pgvector there, or use the embedded cluster, whose PostgreSQL ships it"
        )
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    row = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert row is not None
    return str(row[0])


class _Pipeline:
    """Generate every table's batches in one thread, running ahead of COPY by up to ``ahead`` bytes.

    One producer for all tables means the next table is being generated while the server still
    ingests the previous one; the byte bound keeps memory flat whatever the scale.
    """

    def __init__(self, streams: list[TableStream], ahead: int = 96 << 20) -> None:
        self._streams = streams
        self._ahead = ahead
        self._queued = 0
        self._cond = threading.Condition()
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="workbook-generate", daemon=True)

    def __enter__(self) -> _Pipeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        try:
            for stream in self._streams:
                for data, rows in stream.batches():
                    with self._cond:
                        while self._queued > self._ahead and not self._stop:
                            self._cond.wait()
                        if self._stop:
                            return
                        self._queued += len(data)
                    self._items.put((data, rows))
                self._items.put(None)  # end of this table
        except BaseException as exc:  # noqa: BLE001 - re-raised by the consumer
            self._items.put(exc)

    def batches(self) -> Iterator[tuple[bytes, int]]:
        """The current table's batches, until its end marker."""
        while True:
            item = self._items.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            with self._cond:
                self._queued -= len(item[0])
                self._cond.notify_all()
            yield item


def _copy_table(
    conn: psycopg.Connection[Any], stream: TableStream, batches: Iterator[tuple[bytes, int]], progress: ProgressFn | None
) -> tuple[int, int]:
    """COPY one table from its batches; return (rows, bytes)."""
    options = sql.SQL("FORMAT binary, FREEZE") if stream.format == "binary" else sql.SQL("FORMAT csv, FREEZE")
    stmt = sql.SQL("COPY {} ({}) FROM STDIN ({})").format(
        sql.Identifier(stream.name), sql.SQL(", ").join(map(sql.Identifier, stream.columns)), options
    )
    rows = size = 0
    with conn.cursor().copy(stmt) as copy:
        for data, n in batches:
            copy.write(data)
            rows += n
            size += len(data)
            if progress:
                progress(stream.name, rows, max(rows, stream.expected_rows))
    return rows, size


_DERIVED = """
INSERT INTO invoices (id, org_id, period_start, period_end, total_tokens, amount_usd, status)
SELECT row_number() OVER (ORDER BY m.month, m.org_id),
       m.org_id, m.month::date, (m.month + interval '1 month')::date, m.tokens,
       round(m.cost * CASE o.plan WHEN 'enterprise' THEN 0.8 WHEN 'team' THEN 0.9 ELSE 1.0 END
             + CASE o.plan WHEN 'pro' THEN 20 WHEN 'team' THEN 30 * 5 WHEN 'enterprise' THEN 2000 ELSE 0 END, 2),
       CASE WHEN m.month = max(m.month) OVER () THEN 'open'
            WHEN (m.org_id * 7 + extract(month FROM m.month)::int) % 19 = 0 THEN 'overdue'
            ELSE 'paid' END
FROM (SELECT org_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC') AS month,
             sum(prompt_tokens + completion_tokens) AS tokens, sum(cost_usd) AS cost
      FROM usage_events GROUP BY 1, 2) m
JOIN organisations o ON o.id = m.org_id;

UPDATE organisations o SET tokens_this_month = u.tokens
FROM (SELECT org_id, sum(prompt_tokens + completion_tokens) AS tokens FROM usage_events
      WHERE occurred_at >= date_trunc('month', (SELECT max(occurred_at) FROM usage_events))
      GROUP BY org_id) u
WHERE u.org_id = o.id;
"""

_INFO_DDL = """
CREATE TABLE dataset_info (
    seed integer NOT NULL, scale double precision NOT NULL, generator_version integer NOT NULL,
    rows json NOT NULL, bytes bigint NOT NULL, load_seconds double precision NOT NULL,
    hot_orgs bigint[] NOT NULL, cold_orgs bigint[] NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dataset_info IS 'written by workbook.dataset.load: which generated dataset this schema holds';
"""


def load(
    target: Target,
    scale: float = 0.01,
    seed: int = 42,
    *,
    progress: bool | ProgressFn = True,
    generator: Generator | None = None,
) -> DatasetInfo:
    """Generate the dataset at ``scale`` with ``seed`` and load it into ``target`` atomically.

    ``progress``: True for a progress bar (tqdm; a widget in Jupyter), False for none, or a
    callable ``(table, rows_done, rows_expected)``. A ``generator`` given replaces ``scale`` and
    ``seed`` (the CLI builds it first, so bad arguments fail before any server is touched).
    Replaces any dataset already loaded, in one
    transaction; on any error the previous dataset stays as it was.
    """
    target.require_writes("load the sample dataset")
    gen = generator or Generator(seed, scale)
    streams = gen.tables()
    bar: Any = None
    t0 = time.perf_counter()
    rows: dict[str, int] = {}
    phases: dict[str, float] = {}
    total_bytes = 0

    def lap(name: str) -> None:
        phases[name] = round(time.perf_counter() - t0 - sum(phases.values()), 3)

    try:
        with target.connect(autocommit=False) as conn:
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("SET LOCAL lock_timeout = '30s'")
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
            conn.execute("SET LOCAL TIME ZONE 'UTC'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            bar, report = _progress(progress, sum(s.expected_rows for s in streams))  # drawn once connected
            ext = _vector_schema(conn)
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(STAGING)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(STAGING)))
            conn.execute(sql.SQL("SET LOCAL search_path = {}, {}").format(sql.Identifier(STAGING), sql.Identifier(ext)))
            sections = schema_sections()
            conn.execute(sections["tables"])
            lap("setup")
            with _Pipeline(streams) as pipeline:
                for stream in streams:
                    n, b = _copy_table(conn, stream, pipeline.batches(), report)
                    rows[stream.name] = n
                    total_bytes += b
            lap("copy")
            conn.execute(_DERIVED)
            rows["invoices"] = conn.execute("SELECT count(*) FROM invoices").fetchone()[0]  # type: ignore[index]
            for table in rows:
                conn.execute(
                    sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), (SELECT max(id) FROM {}))").format(
                        sql.Literal(table), sql.Identifier(table)
                    )
                )
            lap("derive")
            conn.execute(sections["constraints"])
            lap("foreign_keys")
            conn.execute(_INFO_DDL)
            elapsed = time.perf_counter() - t0
            info = DatasetInfo(
                seed=gen.seed,
                scale=gen.scale,
                generator_version=GENERATOR_VERSION,
                rows=rows,
                bytes=total_bytes,
                load_seconds=round(elapsed, 3),
                hot_orgs=gen.hot_orgs(),
                cold_orgs=gen.cold_orgs(),
                server_version=conn.execute("SHOW server_version").fetchone()[0],  # type: ignore[index]
                phases=phases,
            )
            conn.execute(
                "INSERT INTO dataset_info (seed, scale, generator_version, rows, bytes, load_seconds, hot_orgs, cold_orgs)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (info.seed, info.scale, info.generator_version, json.dumps(rows), total_bytes, info.load_seconds,
                 info.hot_orgs, info.cold_orgs),
            )  # fmt: skip
            for table in rows:  # statistics come with the dataset: its first plans are not guesses
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
            lap("analyze")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
            conn.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(STAGING), sql.Identifier(SCHEMA)))
            conn.commit()
            lap("swap_commit")
    except psycopg.Error as exc:
        raise WorkbookError(f"loading the dataset failed and changed nothing (rolled back): {exc}") from exc
    finally:
        if bar is not None:
            bar.close()
    return DatasetInfo(**{**info.as_dict(), "load_seconds": round(time.perf_counter() - t0, 3)})


def _progress(progress: bool | ProgressFn, total: int) -> tuple[Any, ProgressFn | None]:
    if callable(progress):
        return None, progress
    if not progress:
        return None, None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="rows", unit_scale=True, desc="loading", leave=True)
    done: dict[str, int] = {}

    def report(table: str, n: int, expected: int) -> None:
        done[table] = n
        bar.set_postfix_str(table, refresh=False)
        bar.update(sum(done.values()) - bar.n)

    return bar, report


def dataset_info(conn: psycopg.Connection[Any]) -> DatasetInfo | None:
    """The dataset loaded in the connection's database, or None if there is none."""
    exists = conn.execute(
        "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'dataset_info'", (SCHEMA,)
    ).fetchone()
    if not exists:
        return None
    row = conn.execute(
        sql.SQL(
            "SELECT seed, scale, generator_version, rows, bytes, load_seconds, hot_orgs, cold_orgs,"
            " current_setting('server_version') FROM {}.dataset_info"
        ).format(sql.Identifier(SCHEMA))
    ).fetchone()
    if row is None:
        return None
    seed, scale, version, rows, size, secs, hot, cold, server = row
    return DatasetInfo(seed, scale, version, rows, size, secs, list(hot), list(cold), server)
