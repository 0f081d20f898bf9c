"""`workbook report` at the default scale: from nothing, and again on the running cluster.

Runs the real command in a subprocess (a fresh Python, as a user would), twice per round in a
brand-new home: first **from nothing** (cluster init + start, dataset load, the lessons, the
HTML), then **warm** (the same command again: the cluster is up and the dataset loaded, so only
attaching, the lessons and the HTML remain). Prints the phases the command reports, the wall
time including Python's start, and two ratios measured in the same run:

* render share: the render phase / the wall time (goal < 20 %);
* timed share: the milliseconds inside timed executions (the samples every verdict rests on,
  read back from the results store) / the lessons phase: what the rest of the lessons phase
  (connections, what-if index builds, plans, storing) costs around the measurement itself.

Goal (issue 22): < 10 s end to end on 2 cores, rendering < 20 % of it.

    python benchmarks/report.py [--scale 0.05] [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _scratch import scratch_dir

from workbook.results import ResultsStore


def timed_seconds(home: Path, since: dt.datetime) -> float:
    """Seconds spent inside timed executions by the runs stored since ``since``."""
    runs = ResultsStore(home).runs()
    runs = runs[runs["created_at"] >= since]
    return float(sum(sum(s) for s in runs["samples_ms"])) / 1000


def report_once(home: Path, out: Path, scale: float | None) -> tuple[float, dict[str, float], float]:
    argv = [sys.executable, "-m", "workbook", "--home", str(home), "report", "--out", str(out), "--quiet"]
    if scale is not None:
        argv += ["--scale", str(scale)]
    since = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    phases = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", done.stdout)}
    return wall, phases, timed_seconds(home, since)


def run_round(r: int, parent: Path, scale: float | None) -> dict[str, tuple[float, float]]:
    """kind -> (wall seconds, render share) of this round's two runs."""
    home, out = parent / "home", parent / "report.html"
    shares = {}
    try:
        for kind in ("from nothing", "warm"):
            wall, ph, timed = report_once(home, out, scale)
            other = wall - sum(ph.values())  # Python's start, imports, "what the server saw", writing
            render = ph["render"]
            print(f"{r + 1:>5} {kind:>12} {wall:>7.1f} {ph['cluster']:>8.1f} {ph['load']:>6.1f} {ph['lessons']:>8.1f} "
                  f"{render:>7.1f} {other:>6.1f} {render / wall:>7.0%} {timed / ph['lessons']:>7.0%} "
                  f"{out.stat().st_size / 1024:>7.0f} {os.getloadavg()[0]:>5.1f}")  # fmt: skip
            shares[kind] = (wall, render / wall)
    finally:
        subprocess.run([sys.executable, "-m", "workbook", "--home", str(home), "down", "--destroy"], capture_output=True)
    return shares


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=None, help="default: the command's default (WORKBOOK_SCALE or 0.05)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(f"{'round':>5} {'run':>12} {'wall s':>7} {'cluster':>8} {'load':>6} {'lessons':>8} {'render':>7} {'other':>6} "
          f"{'render%':>7} {'timed%':>7} {'KB':>7} {'load1':>5}")  # fmt: skip
    rounds = []
    for r in range(args.rounds):
        with scratch_dir("wb-bench-report-") as parent:
            rounds.append(run_round(r, parent, args.scale))
    print()
    for kind in ("from nothing", "warm"):
        walls = [x[kind][0] for x in rounds]
        shares = [x[kind][1] for x in rounds]
        print(f"{kind}: wall median {statistics.median(walls):.1f} s (best {min(walls):.1f} s), "
              f"render share median {statistics.median(shares):.0%}")
    print("goal: < 10 s end to end on 2 cores, rendering < 20% of it (issue 22)")


if __name__ == "__main__":
    main()
