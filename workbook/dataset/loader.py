"""Loading the sample dataset into a Target: atomic for readers, streamed, two COPYs at a time.

A bare COPY keeps one server backend, so one core, busy. The loader keeps two busy, as
``pg_restore --jobs`` does, and does what a dataset needs after its rows are in (23 validated
foreign keys, ANALYZE, the derived invoices) while other tables are still being copied
(:mod:`.plan` has the steps and what each waits for):

1. on a *control* session: a session advisory lock (two loaders queue instead of interleaving),
   drop any staging schema a killed load left behind, create a fresh one;
2. two lanes, each its own session and generator thread (Arrow's kernels and libpq's send release
   the GIL, so generation keeps up with the server): ``messages`` in one, every other table in
   foreign-key order in the other. Each table is created and filled with ``COPY ... FREEZE`` in
   one transaction, so its rows arrive frozen and all-visible: the first queries pay no hint
   bits and index-only scans work at once;
3. a lane done with its COPYs takes finishing steps as soon as the tables they read are
   committed: foreign keys, ANALYZE, identity sequences, the derived invoices;
4. on the control session, one transaction writes ``dataset_info``, drops the old ``ai_app``
   schema and renames the staging one to ``ai_app``.

On a server without pgvector (many self-hosted and older ones) the dataset loads without its
vector column (``chunks.embedding``): the load says so once, :attr:`DatasetInfo.vectors` is False,
and the lessons and report sections that need vectors say they were skipped and why.

Readers see the old dataset or the new one, never part of one: nothing is in ``ai_app`` until that
last transaction commits. A load that fails (a server error, a lost session, Ctrl-C in Jupyter)
cancels its sessions and drops its staging schema. One killed outright (kill -9) cannot clean
up: its committed staging tables stay, never named ``ai_app`` and without ``dataset_info``, until
the next load drops them first (:func:`stale_staging` reports them).
"""

from __future__ import annotations

import json
import queue
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..errors import WorkbookError
from .generator import GENERATOR_VERSION, Generator, TableStream
from .load_plan import COPIED, Board, Schema, finishing_steps, lanes

if TYPE_CHECKING:
    import pandas as pd

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
    #: chunks.embedding was loaded (False: the server has no pgvector; see :data:`NO_VECTORS`)
    vectors: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def mb_per_second(self) -> float:
        return self.bytes / 1e6 / self.load_seconds if self.load_seconds else 0.0


#: what a load without pgvector says (once), and what the lessons needing vectors say instead of running
NO_VECTORS = (
    "this server has no pgvector extension: the dataset is loaded without chunks.embedding, and the lessons and "
    "report sections that need vectors are skipped; install pgvector there (or use the embedded cluster) to run them"
)
EMBEDDING = "embedding"
_EMBEDDING_LINE = re.compile(rf"^\s*{EMBEDDING}\s+vector\(\d+\)[^\n]*\n", re.MULTILINE)


def _vector_schema(conn: psycopg.Connection[Any]) -> str | None:
    """Install pgvector if needed; return the schema its types live in; None when the server has none."""
    row = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row:
        return str(row[0])
    if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
        return None
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    row = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert row is not None
    return str(row[0])


def has_vectors(conn: psycopg.Connection[Any]) -> bool:
    """Does the loaded dataset have its embeddings (``chunks.embedding``)? False on a server without pgvector."""
    row = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = 'chunks' AND column_name = %s",
        (SCHEMA, EMBEDDING),
    ).fetchone()
    return row is not None


def without_column(stream: TableStream, column: str) -> TableStream:
    """``stream`` (binary COPY) without ``column``: each row's field is cut out as the rows go by."""
    index = stream.columns.index(column)
    if stream.format != "binary":
        raise WorkbookError(f"internal: cutting a column out of a {stream.format} stream is not supported")

    def batches() -> Iterator[tuple[bytes, int]]:
        pending = b""
        header_done = False
        for data, rows in stream.batches():
            buf = pending + data
            out: list[bytes] = []
            pos = 0
            if not header_done:  # signature (11 bytes), flags, header extension length and area: kept
                ext = struct.unpack_from(">i", buf, 15)[0]
                pos = 19 + ext
                out.append(buf[:pos])
                header_done = True
            while pos + 2 <= len(buf):
                (nfields,) = struct.unpack_from(">h", buf, pos)
                if nfields == -1:  # the trailer
                    out.append(buf[pos : pos + 2])
                    pos += 2
                    continue
                end, fields = pos + 2, []
                for _ in range(nfields):
                    (length,) = struct.unpack_from(">i", buf, end)
                    fields.append((end, end + 4 + max(length, 0)))
                    end += 4 + max(length, 0)
                out.append(struct.pack(">h", nfields - 1))
                out.extend(buf[a:b] for i, (a, b) in enumerate(fields) if i != index)
                pos = end
            pending = buf[pos:]
            yield b"".join(out), rows

    columns = tuple(c for c in stream.columns if c != column)
    return TableStream(stream.name, columns, stream.format, stream.expected_rows, batches, stream.approximate)


class _Pipeline:
    """Generate a lane's tables' batches in one thread, running ahead of COPY by up to ``ahead`` bytes.

    One producer for the lane's tables means the next table is being generated while the server
    still ingests the previous one; the byte bound keeps memory flat whatever the scale.
    """

    def __init__(self, streams: list[TableStream], ahead: int = 64 << 20) -> None:
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


def copy_statement(stream: TableStream) -> sql.Composed:
    """``COPY <table> (<columns>) FROM STDIN (FORMAT csv|binary, FREEZE)`` for one generated table."""
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {}, FREEZE)").format(
        sql.Identifier(stream.name),
        sql.SQL(", ").join(map(sql.Identifier, stream.columns)),
        sql.SQL("binary" if stream.format == "binary" else "csv"),
    )


def _failed(exc: BaseException, target: Target) -> WorkbookError:
    """The one error a failed load raises; it says so when the failure was the server going down."""
    from ..cluster.target import redact_text

    reason = redact_text(" ".join(str(exc).split()), *(e.dsn for e in target.endpoints))
    try:
        with target.connect(connect_timeout=3):
            pass
    except WorkbookError:  # the server itself is gone, not only this load's session
        start = "run 'workbook up'" if target.kind == "local" else "start the server again"
        return WorkbookError(
            f"loading the dataset failed: the server is down ({reason}); the loaded dataset is unchanged "
            f"(the next load drops what this one staged); {start}, then load again"
        )
    return WorkbookError(f"loading the dataset failed and changed nothing (rolled back): {reason}")


class _Stopped(Exception):
    """Another session of the load failed: this one stops (its transaction rolls back)."""


class _Load:
    """One load's shared state: the sessions, the finishing board, rows and bytes, progress, timings."""

    def __init__(self, target: Target, gen: Generator) -> None:
        self.target = target
        self.gen = gen
        self.streams = {s.name: s for s in gen.tables()}
        self.schema = Schema.read()
        self.rows: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.board = Board(finishing_steps(self.schema, self.streams, self.rows), copying=2)
        self.updates: queue.SimpleQueue[tuple[str, int, int]] = queue.SimpleQueue()
        self.sessions: list[psycopg.Connection[Any]] = []
        self.threads: list[threading.Thread] = []
        self.locked = False  # the control session (sessions[0]) holds the loader's advisory lock
        self.t0 = time.perf_counter()
        self.copied_at = self.t0
        self.phases: dict[str, float] = {}
        self.vectors = True

    def without_vectors(self) -> None:
        """Load ``chunks`` without its embedding column (the server has no pgvector)."""
        ddl = _EMBEDDING_LINE.sub("", self.schema.tables["chunks"])
        self.schema = Schema({**self.schema.tables, "chunks": ddl}, self.schema.foreign_keys)
        self.streams["chunks"] = without_column(self.streams["chunks"], EMBEDDING)
        self.board = Board(finishing_steps(self.schema, self.streams, self.rows), copying=2)
        self.vectors = False

    def lap(self, name: str, at: float | None = None) -> None:
        end = time.perf_counter() if at is None else at
        self.phases[name] = round(end - self.t0 - sum(self.phases.values()), 3)

    def session(self, search_path: sql.Composed | None = None) -> psycopg.Connection[Any]:
        conn = self.target.connect(autocommit=True, application_name="workbook load")
        self.sessions.append(conn)
        conn.execute("SET statement_timeout = 0")
        conn.execute("SET lock_timeout = '30s'")
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute("SET TIME ZONE 'UTC'")  # the generator's CSV holds UTC wall times
        if search_path is not None:
            conn.execute(search_path)
        return conn

    def lane(self, conn: psycopg.Connection[Any], tables: list[str]) -> None:
        """COPY ``tables`` in order, one transaction each, then take finishing steps."""
        try:
            streams = [self.streams[t] for t in tables]
            with _Pipeline(streams) as pipeline:
                for stream in streams:
                    with conn.transaction():
                        conn.execute(self.schema.tables[stream.name])
                        self.rows[stream.name], self.sizes[stream.name] = self.copy(conn, stream, pipeline.batches())
                    self.copied_at = max(self.copied_at, time.perf_counter())
                    self.board.mark(COPIED.format(stream.name))
            self.board.work(conn)
        except BaseException as exc:  # noqa: BLE001 - the main thread raises the first failure
            self.board.fail(exc)

    def copy(self, conn: psycopg.Connection[Any], stream: TableStream, batches: Iterator[tuple[bytes, int]]) -> tuple[int, int]:
        """COPY one table from its batches; return (rows, bytes)."""
        rows = size = 0
        with conn.cursor().copy(copy_statement(stream)) as copy:
            for data, n in batches:
                if self.board.failed:
                    raise _Stopped
                copy.write(data)
                rows += n
                size += len(data)
                self.updates.put((stream.name, rows, max(rows, stream.expected_rows)))
        return rows, size

    def run_lanes(self, report: ProgressFn | None) -> None:
        """Both lanes to the end, progress drawn from this (the caller's) thread."""
        sessions = self.sessions[:2]
        for conn, tables in zip(sessions, lanes(self.streams), strict=True):
            self.threads.append(threading.Thread(target=self.lane, args=(conn, tables), name="workbook-load", daemon=True))
        for thread in self.threads:
            thread.start()
        while True:
            alive = any(t.is_alive() for t in self.threads)
            try:
                update = self.updates.get(timeout=0.05)
            except queue.Empty:
                if not alive:
                    break
                continue
            if report:
                report(*update)
        error = self.board.error
        if isinstance(error, (psycopg.Error, WorkbookError)):
            raise _failed(error, self.target) from error
        if error is not None:
            raise error

    def lock(self) -> None:
        """Take the loader's advisory lock on the control session: loads queue, never interleave."""
        try:
            self.sessions[0].execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        except psycopg.errors.LockNotAvailable:
            raise WorkbookError(
                "another load of the dataset has been running on this database for over 30 s; "
                "wait for it to finish (or stop it) and load again"
            ) from None
        self.locked = True

    def abandon(self, exc: BaseException) -> None:
        """Stop every session (their transactions roll back), drop the staging schema, close.

        Only a load that holds the lock touches the staging schema: a load that never got it must
        not drop the one another load is filling.
        """
        self.board.fail(exc)
        for conn, thread in zip(self.sessions, self.threads, strict=False):
            if thread.is_alive():  # busy in a COPY or a finishing step: interrupt it
                with suppress(Exception):
                    conn.cancel_safe(timeout=5)
        for thread in self.threads:
            thread.join(timeout=60)
        dropped = not self.locked
        for _ in range(2):  # twice: a cancel sent above may land on the first try
            if dropped or self.sessions[0].closed:
                break
            with suppress(psycopg.Error):
                self.sessions[0].execute(_DROP_STAGING)
                dropped = True
        self.close()
        if not dropped:  # the control session is gone, and its lock with it (once its backend exits)
            with suppress(Exception), self.target.connect(autocommit=True) as conn:
                conn.execute("SET lock_timeout = '10s'")
                conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
                conn.execute(_DROP_STAGING)

    def close(self) -> None:
        for conn in self.sessions:
            with suppress(Exception):
                conn.close()


def _search_path(ext: str | None) -> sql.Composed:
    """The staging schema first, then pgvector's (if the server has it)."""
    names = [STAGING] if ext is None else [STAGING, ext]
    return sql.SQL("SET search_path = {}").format(sql.SQL(", ").join(map(sql.Identifier, names)))


_DROP_STAGING = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(STAGING))

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
    say: Callable[[str], None] | None = None,
) -> DatasetInfo:
    """Generate the dataset at ``scale`` with ``seed`` and load it into ``target`` atomically.

    ``progress``: True for a progress bar (tqdm; a widget in Jupyter), False for none, or a
    callable ``(table, rows_done, rows_expected)``, always called from the caller's thread. A
    ``generator`` given replaces ``scale`` and ``seed`` (the CLI builds it first, so bad arguments
    fail before any server is touched). Replaces any dataset already loaded; on any error the
    previous dataset stays as it was. Uses two sessions of ``target``. On a server without pgvector
    the dataset loads without ``chunks.embedding`` and ``say`` (default: a "note:" line on stderr)
    is told so once.
    """
    target.require_writes("load the sample dataset")
    job = _Load(target, generator or Generator(seed, scale))
    gen = job.gen
    bar: Any = None
    try:
        control = job.session()
        job.lock()
        ext = _vector_schema(control)
        if ext is None:
            job.without_vectors()
            (say or _note)(NO_VECTORS)
        control.execute(_DROP_STAGING)
        control.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(STAGING)))
        control.execute(_search_path(ext))
        job.session(_search_path(ext))
        bar, report = _progress(progress, sum(s.expected_rows for s in job.streams.values()))  # drawn once connected
        job.lap("setup")
        job.run_lanes(report)
        job.lap("copy", at=job.copied_at)
        job.lap("finish")
        total_bytes = sum(job.sizes.values())
        info = DatasetInfo(
            seed=gen.seed,
            scale=gen.scale,
            generator_version=GENERATOR_VERSION,
            rows={t: job.rows[t] for t in [*job.streams, "invoices"]},  # load order, invoices last
            bytes=total_bytes,
            load_seconds=round(time.perf_counter() - job.t0, 3),
            hot_orgs=gen.hot_orgs(),
            cold_orgs=gen.cold_orgs(),
            server_version=control.execute("SHOW server_version").fetchone()[0],  # type: ignore[index]
            phases=job.phases,
            vectors=job.vectors,
        )
        with control.transaction():
            control.execute(_INFO_DDL)
            control.execute(
                "INSERT INTO dataset_info (seed, scale, generator_version, rows, bytes, load_seconds, hot_orgs, cold_orgs)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (info.seed, info.scale, info.generator_version, json.dumps(info.rows), total_bytes, info.load_seconds,
                 info.hot_orgs, info.cold_orgs),
            )  # fmt: skip
            control.execute("ANALYZE dataset_info")
            control.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
            control.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(sql.Identifier(STAGING), sql.Identifier(SCHEMA)))
        job.lap("swap_commit")
        _forget_writes(control)
        job.close()
    except BaseException as exc:
        job.abandon(exc)
        if isinstance(exc, psycopg.Error):
            raise _failed(exc, target) from exc
        raise
    finally:
        if bar is not None:
            bar.close()
    return DatasetInfo(**{**info.as_dict(), "load_seconds": round(time.perf_counter() - job.t0, 3)})


def _note(line: str) -> None:
    print(f"note: {line}", file=sys.stderr, flush=True)


def _forget_writes(conn: psycopg.Connection[Any]) -> None:
    """A new load is pristine: clear the note a write workload left on the database (see pristine.py)."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(conn.info.dbname)))
    except psycopg.errors.InsufficientPrivilege:
        pass  # not the database's owner: there is no note of ours to clear either


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
    return DatasetInfo(seed, scale, version, rows, size, secs, list(hot), list(cold), server, vectors=has_vectors(conn))


def stale_staging(conn: psycopg.Connection[Any]) -> int | None:
    """Bytes a killed load left in its staging schema; None if there is none (or a load is running)."""
    row = conn.execute(
        "SELECT (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c WHERE c.relnamespace = n.oid),"
        " EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        "         AND classid = 0 AND objid = %s AND objsubid = 1)"
        " FROM pg_namespace n WHERE n.nspname = %s",
        (_LOCK_KEY, STAGING),
    ).fetchone()
    if row is None or row[1]:
        return None
    return int(row[0])


def table_sizes(target: Target) -> pd.DataFrame:
    """Rows (the planner's count) and on-disk size of each table of the dataset, biggest first."""
    import pandas as pd

    with target.connect() as conn:
        rows = conn.execute(
            "SELECT c.relname AS table, c.reltuples::bigint AS rows,"
            " pg_size_pretty(pg_total_relation_size(c.oid)) AS size, pg_total_relation_size(c.oid) AS bytes"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname <> %s"
            " ORDER BY pg_total_relation_size(c.oid) DESC",
            (SCHEMA, "dataset_info"),
        ).fetchall()
    return pd.DataFrame(rows, columns=["table", "rows", "size", "bytes"])
