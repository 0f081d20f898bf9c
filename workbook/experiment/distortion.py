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

from .timing import median

if TYPE_CHECKING:
    import pandas as pd

    from ..cluster.target import Target

MODES = {
    "plain execution": None,
    "EXPLAIN ANALYZE (BUFFERS)": "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ",
    "EXPLAIN (ANALYZE, TIMING OFF, BUFFERS OFF)": "EXPLAIN (ANALYZE, TIMING OFF, BUFFERS OFF, FORMAT JSON) ",
}


def clock_distortion(target: Target, sql: str, params: Any = None, *, repeats: int = 9) -> pd.DataFrame:
    """Median milliseconds of ``sql`` per mode, and each mode's ratio to plain execution (read-only SQL)."""
    import numpy as np
    import pandas as pd

    samples: dict[str, list[float]] = {m: [] for m in MODES}
    rng = np.random.default_rng(0)
    names = list(MODES)
    with target.connect() as conn:
        conn.execute(sql, params).fetchall()  # warm-up
        for _ in range(repeats):
            for i in rng.permutation(len(names)):
                mode = names[i]
                prefix = MODES[mode]
                if prefix is None:
                    t0 = time.perf_counter()
                    conn.execute(sql, params).fetchall()
                    samples[mode].append((time.perf_counter() - t0) * 1000)
                else:
                    doc = conn.execute(prefix + sql, params).fetchone()[0]  # type: ignore[index]
                    doc = json.loads(doc) if isinstance(doc, str) else doc
                    samples[mode].append(float(doc[0]["Execution Time"]))
    plain = median(samples["plain execution"])
    return pd.DataFrame(
        [{"mode": m, "median_ms": median(v), "vs_plain": median(v) / plain, "runs": len(v)} for m, v in samples.items()]
    )
