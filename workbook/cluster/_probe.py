"""Reading a server's replication state over SQL: shared by the local cluster and external targets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PROBE_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
       (SELECT status FROM pg_stat_wal_receiver),
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
"""


@dataclass(frozen=True)
class NodeStatus:
    """One node as ``status()`` sees it right now."""

    name: str
    role: str  # "primary" | "replica"
    pid: int | None
    port: int
    state: str  # primary: running/down/unreachable; replica: streaming/catchup/paused/disconnected/down/...
    lag_bytes: int | None
    lag_seconds: float | None
    #: the CPU budget the node's processes really have, {"cpus": 0.5, "how": "cgroup"|"affinity"|"shared"};
    #: None: no budget (or the node is down, or it is not a local node)
    cpu_budget: dict[str, Any] | None = None
    #: the TLS state of the workbook's connection, {"ssl": True, "version": "TLSv1.3", "cipher": ..., "bits": 256}
    #: (pg_stat_ssl); None when not probed (local nodes)
    tls: dict[str, Any] | None = None
    #: the replica a cascading replica streams from; None: from the primary (or not a replica)
    upstream: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Probe:
    in_recovery: bool
    current_lsn: int | None  # primaries only
    replay_lsn: int | None  # replicas only
    paused: bool
    receiver: str | None  # pg_stat_wal_receiver.status
    since_last_replayed_xact: float | None


def parse_lsn(lsn: str | None) -> int | None:
    if not lsn:
        return None
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def probe(conn: Any) -> Probe:
    row = conn.execute(PROBE_SQL).fetchone()
    return Probe(bool(row[0]), parse_lsn(row[1]), parse_lsn(row[2]), bool(row[3]), row[4], row[5])


def replica_lag(
    p: Probe, primary_lsn: int | None, reported_seconds: float | None = None
) -> tuple[int | None, float | None]:
    """(bytes not yet replayed, seconds behind) for a replica.

    ``primary_lsn`` must be read *before* the replica is probed, so that a caught-up replica
    reads exactly 0 bytes. Seconds: 0 when nothing is pending; else the primary's own
    measurement (``pg_stat_replication.replay_lag``, which keeps growing while replay is paused)
    when we have it, else the age of the newest transaction the replica has applied; ``None``
    when neither is known (no transaction replayed since the replica started).
    """
    if primary_lsn is None or p.replay_lsn is None:
        return None, None
    lag_bytes = max(0, primary_lsn - p.replay_lsn)
    if lag_bytes == 0:
        return 0, 0.0
    seconds = reported_seconds if reported_seconds is not None else p.since_last_replayed_xact
    return lag_bytes, None if seconds is None else round(max(0.0, seconds), 3)


REPLAY_LAG_SQL = """
SELECT application_name, extract(epoch FROM replay_lag)::float8
FROM pg_stat_replication WHERE replay_lag IS NOT NULL
"""


def replica_state(p: Probe) -> str:
    if not p.in_recovery:
        return "running (not in recovery: promoted?)"
    if p.paused:
        return "paused"
    return p.receiver or "disconnected"  # streaming, catchup, starting, waiting, ...
