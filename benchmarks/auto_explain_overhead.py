"""What auto_explain costs a workload: the read mix's throughput with and without it, in the same run.

A fresh local cluster with the sample dataset (scale 0.05, the lessons' indexes absent). Each round
runs a mix (``--mix``: ``point``, one primary-key lookup, the cheapest request, where a fixed cost per
statement shows; ``analytics``, scans and aggregates, where the per-row instrumentation shows) with
pgbench (2 clients, SECONDS) three ways, in an order that rotates from round to round:

* **plain**: no auto_explain;
* **instrumented**: inside :func:`~workbook.experiment.slow_plans.capture_slow_plans` with a
  threshold no statement reaches (1 h): ``log_analyze`` (timing off, buffers on) instruments every
  statement, nothing is logged — the price of having it on;
* **capturing**: the same with a 10 ms threshold: the slow statements' plans are logged, read back,
  parsed and mapped to shapes (that reading happens after the load and is not in its TPS).

Printed: TPS of each arm per round, and the median over rounds of instrumented/plain and
capturing/plain (1.0 = free). No goal: a measurement to state.

    python benchmarks/auto_explain_overhead.py [--mix point|analytics|read ...] [--rounds 7] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
from contextlib import nullcontext
from typing import Any

from _scratch import scratch_cluster

from workbook.dataset import load
from workbook.experiment.slow_plans import capture_slow_plans
from workbook.traffic import run_load

ARMS = ("plain", "instrumented", "capturing")


def one(target: Any, mix: str, arm: str, seconds: float) -> tuple[float, int]:
    """(TPS, plans captured) of one run of ``mix``."""
    ctx: Any = nullcontext() if arm == "plain" else capture_slow_plans(
        target, threshold_ms=3_600_000 if arm == "instrumented" else 10)  # fmt: skip
    with ctx as cap:
        run = run_load(target, mix, clients=2, duration_s=seconds, driver="pgbench", protect_dataset=False, monitor=False)
    return run.tps, len(cap.plans) if cap is not None else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mix", action="append", default=None, help="point and analytics by default")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    with scratch_cluster("wb-bench-autoexplain-") as cluster:
        target = cluster.target()
        load(target, 0.05, 42, progress=False)
        for mix in args.mix or ["point", "analytics"]:
            one(target, mix, "plain", 1.0)  # warm-up
            ratios: dict[str, list[float]] = {"instrumented": [], "capturing": []}
            for r in range(args.rounds):
                order = ARMS[r % 3:] + ARMS[: r % 3]
                got = {arm: one(target, mix, arm, args.seconds) for arm in order}
                print(f"{mix} round {r + 1}: " + ", ".join(
                    f"{a} {got[a][0]:,.0f} TPS" + (f" ({got[a][1]} plans)" if a == "capturing" else "") for a in ARMS))  # fmt: skip
                for a in ratios:
                    ratios[a].append(got[a][0] / got["plain"][0])
            for a, xs in ratios.items():
                print(f"{mix}: {a} / plain TPS, median {statistics.median(xs):.3f} (rounds: {', '.join(f'{x:.3f}' for x in xs)})")
        print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

if __name__ == "__main__":
    main()
