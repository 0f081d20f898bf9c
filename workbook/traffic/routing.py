"""Read routing for the Python driver: which node a request goes to.

Writes always go to the primary. Reads go to the primary (``route="primary"``), to the replicas
(``"replicas"``) or to all nodes (``"all"``), round robin or to the node with the least replay
lag (``policy="least_lag"``, lag as the monitor last sampled it). With read-your-writes
``"stick"`` a client's reads go to the primary for ``stick_ms`` after its own write; with
``"wait_lsn"`` a read on a replica first waits until the replica has replayed the client's last
write (``pg_last_wal_replay_lsn() >= lsn``), which is what a session-consistent app does.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import WorkbookError

ROUTES = ("primary", "replicas", "all")
POLICIES = ("round_robin", "least_lag")
READ_YOUR_WRITES = (None, "stick", "wait_lsn")


@dataclass
class Router:
    primary: str
    read_nodes: tuple[str, ...]
    policy: str = "round_robin"
    lag_of: Callable[[str], float | None] | None = None  # bytes behind, from the monitor

    def __post_init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()

    @classmethod
    def for_target(cls, primary: str, replicas: tuple[str, ...], route: str, policy: str = "round_robin",
                   lag_of: Callable[[str], float | None] | None = None) -> Router:  # fmt: skip
        check_route(route, replicas)
        if policy not in POLICIES:
            raise WorkbookError(f"routing policy must be one of {POLICIES}, got {policy!r}")
        nodes = (primary,) if route == "primary" else replicas if route == "replicas" else (primary, *replicas)
        return cls(primary, nodes, policy, lag_of)

    def read_node(self) -> str:
        with self._lock:
            n = next(self._counter)
        if self.policy == "least_lag" and self.lag_of is not None and len(self.read_nodes) > 1:
            lags = [(self.lag_of(node) or 0.0, (i - n) % len(self.read_nodes), node) for i, node in enumerate(self.read_nodes)]
            return min(lags)[2]
        return self.read_nodes[n % len(self.read_nodes)]


def check_route(route: str, replicas: tuple[str, ...]) -> None:
    if route not in ROUTES:
        raise WorkbookError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    if route in ("replicas", "all") and not replicas:
        raise WorkbookError(f"route {route!r} needs replicas, and the target has none; add some (workbook up --replicas 2)")
