"""`workbook report` from nothing: a fresh home, the cluster, the dataset, the suite, the HTML.

Runs the real command in a subprocess (a fresh Python, as a user would) against a brand-new home,
prints the phases the command reports (cluster, load, experiments, render) and the wall time
including Python's start. Peer: `initdb` + `pg_ctl start` of the same binaries and a COPY load of
the same dataset are inside the phases; the goal is absolute: < 3 min end to end on 2 cores.

    python benchmarks/report.py [--scale 0.05] [--rounds 2]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from _scratch import scratch_dir


def run_round(r: int, parent: Path, scale: float | None) -> None:
    home, out = parent / "home", parent / "report.html"
    argv = [sys.executable, "-m", "workbook", "--home", str(home), "report", "--out", str(out), "--quiet"]
    if scale is not None:
        argv += ["--scale", str(scale)]
    try:
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        phases = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", done.stdout)}
        print(f"{r + 1:>5} {wall:>7.1f} {phases['cluster']:>10.1f} {phases['load']:>7.1f} {phases.get('lessons', phases.get('experiments', 0.0)):>14.1f} "
              f"{phases['render']:>9.1f} {out.stat().st_size / 1024:>10.0f}")  # fmt: skip
    finally:
        subprocess.run([sys.executable, "-m", "workbook", "--home", str(home), "down", "--destroy"], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=None, help="default: the command's default (WORKBOOK_SCALE or 0.05)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(f"{'round':>5} {'wall s':>7} {'cluster s':>10} {'load s':>7} {'lessons s':>14} {'render s':>9} {'report KB':>10}")
    for r in range(args.rounds):
        with scratch_dir("wb-bench-report-") as parent:
            run_round(r, parent, args.scale)
    print("\ngoal: < 180 s end to end from nothing")


if __name__ == "__main__":
    main()
