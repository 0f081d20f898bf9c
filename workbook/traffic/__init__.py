"""Concurrent traffic on a Target: workload mixes, the pgbench and Python drivers, read routing,
server-side monitoring, and capacity sweeps with the Universal Scalability Law.

    from workbook.traffic import run_load, sweep
    run = run_load(target, "chat", clients=8, duration_s=10, route="replicas")
    run.as_dict()   # {"tps", "p50_ms", "p95_ms", "p99_ms", "transactions", "errors", "by_node"}
"""

from .classify import ERROR_CLASSES, classify_exception, classify_message
from .mix import MIXES, CustomQuery, Mix, PreparedMix, get_mix, prepare
from .pgbench import find_pgbench, parse_log, parse_summary
from .result import LoadRun
from .runner import Sweep, capacity, run_load, sweep
from .usl import USL, fit, fit_with_holdout

__all__ = [
    "ERROR_CLASSES", "MIXES", "USL", "CustomQuery", "LoadRun", "Mix", "PreparedMix", "Sweep", "capacity",
    "classify_exception", "classify_message", "find_pgbench", "fit", "fit_with_holdout", "get_mix", "parse_log",
    "parse_summary", "prepare", "run_load", "sweep",
]  # fmt: skip
