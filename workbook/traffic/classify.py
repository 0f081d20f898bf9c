"""Error classes of a load run, from what the server (or the pool, or pgbench) really said.

One vocabulary for both drivers, so a lesson can say "31 statement timeouts, 4 too-many-clients"
whichever driver produced the load. The Python driver classifies exceptions by SQLSTATE; pgbench
reports serialization failures and deadlocks per transaction in its log (``--failures-detailed``)
and everything else on stderr (a client that hits any other error is aborted), which
:func:`classify_message` reads.
"""

from __future__ import annotations

import re

ERROR_CLASSES = (
    "too_many_clients",  # 53300: max_connections reached
    "pool_timeout",  # psycopg_pool.PoolTimeout: no connection free in time
    "statement_timeout",  # 57014 QueryCanceled
    "lock_timeout",  # 55P03 lock_not_available
    "serialization_failure",  # 40001
    "deadlock",  # 40P01
    "connection_lost",  # the server went away mid-session (08xxx, 57P01 ...), or refused the connection
    "other",
    "skipped",  # pgbench --latency-limit in an open loop: never sent, already later than the limit
)

SQLSTATE_CLASSES = {
    "53300": "too_many_clients",
    "53400": "too_many_clients",  # configuration_limit_exceeded: the role's/database's connection limit
    "57014": "statement_timeout",
    "55P03": "lock_timeout",
    "40001": "serialization_failure",
    "40P01": "deadlock",
    "57P01": "connection_lost",  # admin_shutdown (pg_terminate_backend, fast shutdown)
    "57P02": "connection_lost",
    "57P03": "connection_lost",  # cannot_connect_now (starting up / shutting down)
}


def classify_exception(exc: BaseException) -> str:
    """The error class of an exception raised while running a request."""
    try:
        from psycopg_pool import PoolTimeout, TooManyRequests

        if isinstance(exc, PoolTimeout | TooManyRequests):
            return "pool_timeout"
    except ImportError:  # pragma: no cover - psycopg_pool is a dependency
        pass
    import psycopg

    state = getattr(exc, "sqlstate", None)
    if state in SQLSTATE_CLASSES:
        return SQLSTATE_CLASSES[state]
    if state is not None and state.startswith("08"):
        return "connection_lost"
    if isinstance(exc, psycopg.OperationalError):
        text = str(exc).lower()
        if "too many clients" in text or "remaining connection slots" in text:
            return "too_many_clients"
        if "timeout" in text and "statement" in text:
            return "statement_timeout"
        return "connection_lost"
    if isinstance(exc, psycopg.InterfaceError | ConnectionError | OSError):
        return "connection_lost"
    return "other"


_MESSAGE_CLASSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), c)
    for p, c in (
        (r"too many clients|remaining connection slots are reserved|too many connections for", "too_many_clients"),
        (r"canceling statement due to statement timeout", "statement_timeout"),
        (r"canceling statement due to lock timeout|could not obtain lock", "lock_timeout"),
        (r"could not serialize access", "serialization_failure"),
        (r"deadlock detected", "deadlock"),
        (r"terminating connection|server closed the connection|connection to server .* failed|"
         r"could not connect|no connection to the server|connection refused|the database system is", "connection_lost"),
    )
)  # fmt: skip


def classify_message(text: str) -> str:
    """The error class of a server or pgbench message (e.g. a line of pgbench's stderr)."""
    for pattern, cls in _MESSAGE_CLASSES:
        if pattern.search(text):
            return cls
    return "other"


#: pgbench's per-transaction log writes these in the latency column (with --failures-detailed)
PGBENCH_LOG_CLASSES = {"serialization": "serialization_failure", "deadlock": "deadlock", "failed": "other",
                       "skipped": "skipped"}
