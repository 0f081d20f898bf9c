"""Where PostgreSQL comes from: the embedded local cluster, or a user's own cluster by DSN."""

from ._binaries import PgBinaries
from ._cpu import CpuBudget
from ._local import LocalCluster, default_home, resolve_home
from ._probe import NodeStatus
from .target import Endpoint, Target, redact_dsn

__all__ = [
    "CpuBudget", "Endpoint", "LocalCluster", "NodeStatus", "PgBinaries", "Target", "default_home", "redact_dsn",
    "resolve_home",
]  # fmt: skip
