"""How much EXPLAIN ANALYZE's own clock distorts a query's time.

``EXPLAIN ANALYZE`` reads the clock around every row of every node; on a query that moves many
rows through cheap nodes that costs more than the work itself. :func:`clock_distortion` times the
same statement three ways in interleaved turns — plain execution, ``EXPLAIN ANALYZE`` (with
BUFFERS, PostgreSQL 18's default) and ``EXPLAIN (ANALYZE, TIMING OFF, BUFFERS OFF)`` — using the
server's own figure for the EXPLAIN variants (``Execution Time``) and the client's round trip for
the plain one, so the lesson's "2.8x" is measured, not quoted.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import psycopg

from ..errors import WorkbookError
from ..statement import StatementRefused, check_statement, fetch_rows, reads_only
from .plan import QueryFailed, _server_message
from .timing import median

if TYPE_CHECKING:
    import pandas as pd

    from ..cluster.target import Target

MODES = {
    "plain execution": None,
    "EXPLAIN ANALYZE (BUFFERS)": "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ",
    "EXPLAIN (ANALYZE, TIMING OFF, BUFFERS OFF)": "EXPLAIN (ANALYZE, TIMING OFF, BUFFERS OFF, FORMAT JSON) ",
}


def clock_distortion(
    target: Target, sql: str, params: Any = None, *, repeats: int = 9, timeout_s: float = 60.0
) -> pd.DataFrame:
    """Median milliseconds of ``sql`` per mode, and each mode's ratio to plain execution.

    ``sql`` must be one read (it runs for real, many times, in a read-only session).
    """
    import pandas as pd

    stmt = check_statement(sql, what="the statement to time")
    if not stmt.is_read:
        raise StatementRefused(f"clock_distortion() times reads only, and this statement writes ({stmt.why_write})")
    if repeats < 1:
        raise WorkbookError(f"repeats must be at least 1, got {repeats!r}")
    if timeout_s <= 0:
        raise WorkbookError(f"timeout_s must be positive, got {timeout_s!r}")
    try:
        samples = _sample(target, stmt.text, params, repeats, timeout_s)
    except psycopg.errors.QueryCanceled as exc:
        raise QueryFailed(f"the statement ran past the {timeout_s:g} s statement timeout and was cancelled") from exc
    except psycopg.Error as exc:
        raise QueryFailed(f"the server rejected the statement (nothing changed): {_server_message(exc)}") from exc
    plain = median(samples["plain execution"])
    return pd.DataFrame(
        [{"mode": m, "median_ms": median(v), "vs_plain": median(v) / plain, "runs": len(v)} for m, v in samples.items()]
    )


def _sample(target: Target, sql: str, params: Any, repeats: int, timeout_s: float) -> dict[str, list[float]]:
    import numpy as np

    samples: dict[str, list[float]] = {m: [] for m in MODES}
    rng = np.random.default_rng(0)
    names = list(MODES)
    with target.connect(options=f"-c statement_timeout={max(1, int(timeout_s * 1000))}") as conn, reads_only(conn):
        fetch_rows(conn, sql, params)  # warm-up
        for _ in range(repeats):
            for i in rng.permutation(len(names)):
                mode = names[i]
                prefix = MODES[mode]
                if prefix is None:
                    t0 = time.perf_counter()
                    fetch_rows(conn, sql, params)
                    samples[mode].append((time.perf_counter() - t0) * 1000)
                else:
                    doc = fetch_rows(conn, prefix + sql, params)[0][0]
                    doc = json.loads(doc) if isinstance(doc, str) else doc
                    samples[mode].append(float(doc[0]["Execution Time"]))
    return samples
