"""Server-side samples during a load run, from a thread of its own: what the server was doing.

Every ``interval_s`` (250 ms) one connection per node reads ``pg_stat_activity`` (client sessions
by state and wait event), ``pg_locks`` (lock requests waiting) and, on the primary,
``pg_stat_replication`` (each replica's replay lag in bytes and seconds). The monitor's sessions
are named ``workbook-traffic-monitor`` and leave themselves out of the counts. A node that stops
answering is sampled as ``up = 0`` and retried at the next tick, so a failover mid-run shows as
a gap, not as a crashed run.

Rows are long-form, ``(t, node, metric, key, value)``: ``metric`` is ``sessions`` (key
``state/wait``), ``locks_waiting``, ``lag_bytes``/``lag_seconds`` (key = the replica) or ``up``.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import psycopg

    from ..cluster import Target

MONITOR_APP = "workbook-traffic-monitor"

_SESSIONS = """
SELECT coalesce(state, 'unknown') || '/' || coalesce(wait_event_type || ':' || wait_event, 'on cpu'), count(*)
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND application_name <> %s
GROUP BY 1
"""
_LOCKS = "SELECT count(*) FROM pg_locks WHERE NOT granted"
_LAG = """
SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8,
       coalesce(extract(epoch FROM replay_lag)::float8, 0)
FROM pg_stat_replication
"""


class Monitor:
    """``with Monitor(target) as m: ...`` then ``m.frame()``; ``t`` is seconds since ``t0``."""

    def __init__(self, target: Target, *, interval_s: float = 0.25, t0: float | None = None) -> None:
        self.target = target
        self.interval_s = interval_s
        self.t0 = time.time() if t0 is None else t0
        self.rows: list[tuple[float, str, str, str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: dict[str, psycopg.Connection[Any] | None] = {}
        self.lag_bytes: dict[str, float] = {}  # the latest sample per replica (least-lag routing reads it)

    def __enter__(self) -> Monitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="workbook-traffic-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for conn in self._conns.values():
            if conn is not None:
                conn.close()
        self._conns.clear()

    def _conn(self, node: str) -> psycopg.Connection[Any] | None:
        conn = self._conns.get(node)
        if conn is None or conn.closed:
            try:
                conn = self.target.connect(node, application_name=MONITOR_APP, connect_timeout=2)
            except Exception:  # noqa: BLE001 - a node that does not answer is sampled as down
                conn = None
            self._conns[node] = conn
        return conn

    def _loop(self) -> None:
        while not self._stop.is_set():
            tick = time.time()
            t = tick - self.t0
            for ep in self.target.endpoints:
                self._sample(ep.name, t, primary=ep is self.target.primary)
            self._stop.wait(max(0.0, self.interval_s - (time.time() - tick)))

    def _sample(self, node: str, t: float, *, primary: bool) -> None:
        conn = self._conn(node)
        if conn is None:
            self.rows.append((t, node, "up", "", 0.0))
            return
        try:
            rows = [(t, node, "up", "", 1.0)]
            for key, n in conn.execute(_SESSIONS, (MONITOR_APP,)).fetchall():
                rows.append((t, node, "sessions", str(key), float(n)))
            (waiting,) = conn.execute(_LOCKS).fetchone() or (0,)
            rows.append((t, node, "locks_waiting", "", float(waiting)))
            if primary:
                for name, lag_b, lag_s in conn.execute(_LAG).fetchall():
                    rows.append((t, str(name), "lag_bytes", str(name), float(lag_b or 0)))
                    self.lag_bytes[str(name)] = float(lag_b or 0)
                    rows.append((t, str(name), "lag_seconds", str(name), float(lag_s or 0)))
            self.rows.extend(rows)
        except Exception:  # noqa: BLE001 - the node went away mid-sample: reconnect next tick
            self.rows.append((t, node, "up", "", 0.0))
            try:
                conn.close()
            finally:
                self._conns[node] = None

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["t", "node", "metric", "key", "value"])
