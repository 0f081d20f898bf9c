"""The results store: every run and comparison, appended to a DuckDB file in the workbook home.

Plain data in (dicts of JSON-able values), DataFrames out. DuckDB lets one process at a time
open a file for writing, so each call opens the file, does its work and closes it at once; a
writer that finds the file locked (another notebook appending at the same moment) waits and
retries with jittered back-off until ``lock_timeout_s``. Rows are inserted in one transaction
per call, so a run is stored whole or not at all, and two writers never lose each other's runs.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import WorkbookError

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

T = TypeVar("T")
FILENAME = "results.duckdb"

_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    comparison_id VARCHAR,
    arm VARCHAR,               -- 'baseline' / 'treatment' / NULL for a single run
    shape VARCHAR,
    variant VARCHAR,
    tier VARCHAR,
    label VARCHAR,
    sql VARCHAR,
    params JSON,
    knobs JSON,
    plan JSON,
    plan_summary VARCHAR,
    findings JSON,
    samples_ms DOUBLE[],
    median_ms DOUBLE,
    p95_ms DOUBLE,
    cache VARCHAR,
    context JSON
);
CREATE TABLE IF NOT EXISTS comparisons (
    comparison_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    shape VARCHAR,
    baseline_run VARCHAR,
    treatment_run VARCHAR,
    ratio DOUBLE,
    ci_low DOUBLE,
    ci_high DOUBLE,
    verdict VARCHAR,
    verdict_kind VARCHAR,
    interleaved BOOLEAN,
    knobs JSON,
    extra JSON,
    context JSON
);
CREATE TABLE IF NOT EXISTS lessons (
    lesson_run_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    lesson VARCHAR NOT NULL,
    source VARCHAR,            -- 'notebook' (steps one cell at a time) or 'run' (report, CLI)
    seconds DOUBLE,
    figures JSON,
    comparison_ids JSON
);
CREATE TABLE IF NOT EXISTS load_runs (
    load_run_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    sweep_id VARCHAR,          -- the runs of one capacity sweep share it
    mix VARCHAR,
    driver VARCHAR,            -- 'pgbench' / 'python'
    route VARCHAR,
    clients INTEGER,
    rate DOUBLE,
    duration_s DOUBLE,
    elapsed_s DOUBLE,
    tps DOUBLE,
    transactions BIGINT,
    p50_ms DOUBLE,
    p95_ms DOUBLE,
    p99_ms DOUBLE,
    max_ms DOUBLE,
    mean_ms DOUBLE,
    latency_ci JSON,
    errors JSON,
    by_node JSON,
    timeline JSON,
    wrote BOOLEAN,
    dataset_pristine BOOLEAN,
    dataset_changes JSON,
    cancelled BOOLEAN,
    events JSON,
    settings JSON,
    notes JSON,
    usl JSON                   -- the sweep's fit, on each of its runs
);
CREATE TABLE IF NOT EXISTS slow_plans (
    plan_id VARCHAR PRIMARY KEY,      -- node + log time + pid + duration + text: a log read twice stores each once
    capture_id VARCHAR,               -- the plans of one capture (one workload) share it
    captured_at TIMESTAMPTZ,          -- when the server logged it
    node VARCHAR,
    pid INTEGER,
    duration_ms DOUBLE,
    shape VARCHAR,                    -- the query shape its text maps to (as pg_stat_statements' do)
    query VARCHAR,                    -- redacted: DSNs, passwords, password = '...' literals
    plan JSON,                        -- auto_explain's JSON (Query Text, Plan ...)
    plan_summary VARCHAR,
    internal BOOLEAN,                 -- the workbook's or the load generator's own bookkeeping
    threshold_ms DOUBLE,
    source VARCHAR                    -- 'bench', 'lesson:observability' ...
);
CREATE TABLE IF NOT EXISTS datasets (
    dataset_key VARCHAR PRIMARY KEY,  -- server system identifier + load time
    checksum VARCHAR NOT NULL,
    computed_at TIMESTAMPTZ NOT NULL
);
"""

RUN_COLUMNS = (
    "run_id", "created_at", "comparison_id", "arm", "shape", "variant", "tier", "label", "sql", "params",
    "knobs", "plan", "plan_summary", "findings", "samples_ms", "median_ms", "p95_ms", "cache", "context",
)  # fmt: skip
COMPARISON_COLUMNS = (
    "comparison_id", "created_at", "shape", "baseline_run", "treatment_run", "ratio", "ci_low", "ci_high",
    "verdict", "verdict_kind", "interleaved", "knobs", "extra", "context",
)  # fmt: skip
_JSON = {"params", "knobs", "plan", "findings", "context", "extra"}
LOAD_RUN_COLUMNS = (
    "load_run_id", "created_at", "sweep_id", "mix", "driver", "route", "clients", "rate", "duration_s", "elapsed_s",
    "tps", "transactions", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "latency_ci", "errors", "by_node",
    "timeline", "wrote", "dataset_pristine", "dataset_changes", "cancelled", "events", "settings", "notes", "usl",
)  # fmt: skip
SLOW_PLAN_COLUMNS = (
    "plan_id", "capture_id", "captured_at", "node", "pid", "duration_ms", "shape", "query", "plan", "plan_summary",
    "internal", "threshold_ms", "source",
)  # fmt: skip
_LOAD_JSON = {"latency_ci", "errors", "by_node", "timeline", "dataset_changes", "events", "settings", "notes", "usl"}


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text or "resource temporarily" in text)


class ResultsStore:
    """``ResultsStore(home)`` → ``home/results.duckdb`` (created on first write)."""

    def __init__(self, home: str | Path, *, lock_timeout_s: float = 60.0) -> None:
        home = Path(home)
        self.path = home / FILENAME if home.suffix != ".duckdb" else home
        self.lock_timeout_s = lock_timeout_s
        self.lock_waits = 0  # how often this instance found the file locked by another process and waited
        self._checksums: dict[str, str] = {}  # dataset key -> checksum, as read or stored by this instance

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    # ---- connections -----------------------------------------------------------------
    def _retry(self, fn: Callable[[], T]) -> T:
        import duckdb

        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.01
        while True:
            try:
                return fn()
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    raise WorkbookError(
                        f"cannot open the results store {str(self.path)!r}: {' '.join(str(exc).split())}; "
                        "another process holds it for too long (close other notebooks' stores) or it is not writable"
                    ) from None
            self.lock_waits += 1
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        import duckdb

        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)

        def open_() -> duckdb.DuckDBPyConnection:
            con = duckdb.connect(str(self.path), read_only=not write)
            if write:
                con.execute(_DDL)
            return con

        con = self._retry(open_)
        try:
            yield con
        finally:
            con.close()

    # ---- writing ---------------------------------------------------------------------
    def append(self, runs: list[dict[str, Any]], comparison: dict[str, Any] | None = None) -> None:
        """Store runs (and the comparison they belong to) in one transaction."""

        def encode(row: dict[str, Any], columns: tuple[str, ...]) -> list[Any]:
            return [json.dumps(row.get(c), default=str) if c in _JSON and row.get(c) is not None else row.get(c)
                    for c in columns]  # fmt: skip

        with self._connect(write=True) as con:  # _connect waits for another writer's lock
            con.execute("BEGIN")
            if runs:
                con.executemany(
                    f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                    [encode(r, RUN_COLUMNS) for r in runs],
                )
            if comparison is not None:
                con.execute(
                    f"INSERT INTO comparisons ({', '.join(COMPARISON_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(COMPARISON_COLUMNS))})",
                    encode(comparison, COMPARISON_COLUMNS),
                )
            con.execute("COMMIT")

    def append_lesson(self, record: dict[str, Any]) -> None:
        """Store one lesson's result: its figures and the comparisons it measured."""
        columns = ("lesson_run_id", "created_at", "lesson", "source", "seconds", "figures", "comparison_ids")
        values = [json.dumps(record.get(c), default=str) if c in ("figures", "comparison_ids") else record.get(c)
                  for c in columns]  # fmt: skip
        with self._connect(write=True) as con:
            con.execute(f"INSERT INTO lessons ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values)

    def lessons(self) -> pd.DataFrame:
        """Every stored lesson result, oldest first (``figures`` decoded to dicts)."""
        import pandas as pd

        if not self.path.exists():
            return pd.DataFrame()
        with self._connect(write=False) as con:
            if not _has_table(con, "lessons"):
                return pd.DataFrame()
            df = con.execute("SELECT * FROM lessons ORDER BY created_at").df()
        for c in ("figures", "comparison_ids"):
            df[c] = df[c].map(lambda v: json.loads(v) if isinstance(v, str) else v)
        return df

    def append_load_runs(self, records: list[dict[str, Any]]) -> None:
        """Store load runs (``LoadRun.record()`` dicts, e.g. one sweep's) in one transaction."""
        values = [[json.dumps(r.get(c), default=str) if c in _LOAD_JSON and r.get(c) is not None else r.get(c)
                   for c in LOAD_RUN_COLUMNS] for r in records]  # fmt: skip
        with self._connect(write=True) as con:
            con.execute("BEGIN")
            con.executemany(f"INSERT INTO load_runs ({', '.join(LOAD_RUN_COLUMNS)}) "
                            f"VALUES ({', '.join('?' * len(LOAD_RUN_COLUMNS))})", values)  # fmt: skip
            con.execute("COMMIT")

    def append_load_run(self, record: dict[str, Any]) -> None:
        """Store one load run (``LoadRun.record()``)."""
        self.append_load_runs([record])

    def load_runs(self, mix: str | None = None) -> pd.DataFrame:
        """Every stored load run, oldest first, optionally of one mix (JSON columns decoded)."""
        import pandas as pd

        if not self.path.exists():
            return pd.DataFrame()
        with self._connect(write=False) as con:
            if not _has_table(con, "load_runs"):
                return pd.DataFrame()
            where, params = ("WHERE mix = ?", [mix]) if mix else ("", [])
            df = con.sql(f"SELECT * FROM load_runs {where} ORDER BY created_at, load_run_id",
                         params=params or None).to_arrow_table().to_pandas()  # fmt: skip
        for c in _LOAD_JSON:
            df[c] = df[c].map(lambda v: json.loads(v) if isinstance(v, str) else v)
        return df

    def append_slow_plans(self, records: list[dict[str, Any]]) -> int:
        """Store captured slow plans (``SlowPlan.record()`` dicts); one already stored is skipped. Returns how many were new."""
        values = [[json.dumps(r.get(c), default=str) if c == "plan" else r.get(c) for c in SLOW_PLAN_COLUMNS]
                  for r in records]  # fmt: skip
        if not values:
            return 0
        with self._connect(write=True) as con:
            con.execute("BEGIN")
            before = con.execute("SELECT count(*) FROM slow_plans").fetchall()[0][0]
            con.executemany(f"INSERT INTO slow_plans ({', '.join(SLOW_PLAN_COLUMNS)}) "
                            f"VALUES ({', '.join('?' * len(SLOW_PLAN_COLUMNS))}) ON CONFLICT (plan_id) DO NOTHING", values)  # fmt: skip
            after = con.execute("SELECT count(*) FROM slow_plans").fetchall()[0][0]
            con.execute("COMMIT")
        return int(after - before)

    def slow_plans(self, *, capture_id: str | None = None, latest: bool = False, internal: bool = False,
                   limit: int | None = None) -> pd.DataFrame:  # fmt: skip
        """Stored slow plans, slowest first: of one capture, of the latest one, or all; ``plan`` decoded."""
        import pandas as pd

        if not self.path.exists():
            return pd.DataFrame(columns=list(SLOW_PLAN_COLUMNS))
        with self._connect(write=False) as con:
            if not _has_table(con, "slow_plans"):
                return pd.DataFrame(columns=list(SLOW_PLAN_COLUMNS))
            where, params = [], []
            if capture_id is not None:
                where.append("capture_id = ?")
                params.append(capture_id)
            elif latest:
                where.append("capture_id = (SELECT capture_id FROM slow_plans ORDER BY captured_at DESC NULLS LAST LIMIT 1)")
            if not internal:
                where.append("NOT coalesce(internal, false)")
            sql = (f"SELECT * FROM slow_plans {'WHERE ' + ' AND '.join(where) if where else ''} "
                   f"ORDER BY duration_ms DESC, plan_id {f'LIMIT {int(limit)}' if limit else ''}")  # fmt: skip
            df = con.sql(sql, params=params or None).to_arrow_table().to_pandas()
        df = df.astype(object).where(df.notna(), None)  # a missing shape or pid is None, not NaN
        df["plan"] = df["plan"].map(lambda v: json.loads(v) if isinstance(v, str) else v)
        return df

    def cached_checksum(self, key: str, compute: Callable[[], str]) -> str:
        """The dataset checksum stored under ``key``, computing and storing it the first time.

        Remembered by this instance (a key names one load of one server, so its checksum never
        changes): every comparison asks, and opening the file costs ~25 ms."""
        if key in self._checksums:
            return self._checksums[key]
        self._checksums[key] = self._checksum(key, compute)
        return self._checksums[key]

    def _checksum(self, key: str, compute: Callable[[], str]) -> str:
        if self.path.exists():
            with self._connect(write=False) as con:
                if _has_table(con, "datasets"):
                    rows = con.execute("SELECT checksum FROM datasets WHERE dataset_key = ?", [key]).fetchall()
                    if rows:
                        return str(rows[0][0])
        value = compute()
        with self._connect(write=True) as con:
            con.execute("INSERT INTO datasets VALUES (?, ?, now()) ON CONFLICT (dataset_key) DO NOTHING", [key, value])
        return value

    # ---- reading ---------------------------------------------------------------------
    def _frame(self, query: str, params: list[Any] | None = None) -> pd.DataFrame:
        import pandas as pd

        if not self.path.exists():
            return pd.DataFrame()
        with self._connect(write=False) as con:
            if not _has_table(con, "runs"):
                return pd.DataFrame()
            return con.sql(query, params=params or None).to_arrow_table().to_pandas()

    def runs(self, shape: str | None = None) -> pd.DataFrame:
        """Every stored run (newest last), optionally of one shape."""
        where, params = ("WHERE shape = ?", [shape]) if shape else ("", [])
        return self._frame(f"SELECT * FROM runs {where} ORDER BY created_at, run_id", params)

    def comparisons(self, shape: str | None = None) -> pd.DataFrame:
        where, params = ("WHERE shape = ?", [shape]) if shape else ("", [])
        return self._frame(f"SELECT * FROM comparisons {where} ORDER BY created_at, comparison_id", params)

    def run(self, run_id: str) -> dict[str, Any]:
        df = self._frame("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if df.empty:
            raise WorkbookError(f"no run {run_id!r} in {str(self.path)!r}")
        row = {str(k): v for k, v in df.iloc[0].to_dict().items()}
        for key in _JSON & set(row):
            if isinstance(row[key], str):
                row[key] = json.loads(row[key])
        return row


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchall()  # fetch all: DuckDB 2 wants results finished
    return bool(rows[0][0])
