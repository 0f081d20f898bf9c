"""How much the timing harness adds to a query's latency, against pgbench in the same run.

The statement is pgbench's own point query (``SELECT abalance FROM pgbench_accounts WHERE aid =
:aid``, i.e. ``pgbench -S``), prepared, one client, on a fresh local cluster (``pgbench -i -s 10``,
1M accounts). Each round runs

* **pgbench** ``-M prepared -c 1 -T SECONDS`` with a per-transaction log, whose latencies give the
  median (pgbench's own clock, around libpq);
* **the workbook harness**: exactly what ``compare()`` times — :func:`~workbook.experiment.runs.shape_runner`
  (prepared, one reused cursor, cycling parameter sets) inside
  :func:`~workbook.experiment.time_interleaved` — with random ids, for as many calls as pgbench made.

Rounds alternate which goes first; the verdict is the median over rounds of the ratio of medians.
Goal: harness / pgbench <= 1.25x.

    python benchmarks/timing_overhead.py [--rounds 5] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
from pathlib import Path

from workbook.cluster import LocalCluster
from workbook.dataset.shapes import parse_shape
from workbook.experiment import time_interleaved
from workbook.experiment.runs import shape_runner

from _scratch import scratch_cluster, scratch_dir

SCRIPT = "\\set aid random(1, 100000 * :scale)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
SHAPE = parse_shape("-- shape: point\n-- title: pgbench -S\n-- variant: default\n"
                    "SELECT abalance FROM pgbench_accounts WHERE aid = %(aid)s\n")


def pgbench_round(cluster: LocalCluster, workdir: Path, seconds: int) -> tuple[float, int]:
    """(median latency ms, transactions) of one pgbench run, from its per-transaction log."""
    script = workdir / "point.sql"
    script.write_text(SCRIPT)
    for old in workdir.glob("pgbench_log*"):
        old.unlink()
    env = {**os.environ, "PGPASSWORD": cluster._password()}
    port = str(cluster.status()[0].port)
    subprocess.run(
        [cluster.bins.exe("pgbench"), "-n", "-M", "prepared", "-c", "1", "-T", str(seconds), "-f", str(script),
         "-l", "--log-prefix", str(workdir / "pgbench_log"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", "workbook"],
        env=env, check=True, capture_output=True, cwd=workdir,
    )  # fmt: skip
    latencies = []
    for log in workdir.glob("pgbench_log*"):
        for line in log.read_text().splitlines():
            parts = line.split()
            latencies.append(int(parts[2]) / 1000.0)  # client_id transaction_no time(us) ...
    return statistics.median(latencies), len(latencies)


def harness_round(cluster: LocalCluster, calls: int) -> float:
    rng = random.Random(7)
    params = [{"aid": rng.randint(1, 1_000_000)} for _ in range(10_000)]
    with cluster.target().connect() as conn:
        samples = time_interleaved([shape_runner(conn, SHAPE, "default", params)], repeats=calls, warmup=200)[0]
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    with scratch_cluster("wb-bench-timing-") as cluster, scratch_dir("wb-pgbench-") as workdir:
        env = {**os.environ, "PGPASSWORD": cluster._password()}
        subprocess.run([cluster.bins.exe("pgbench"), "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p",
                        str(cluster.status()[0].port), "-U", "postgres", "workbook"], env=env, check=True, capture_output=True)  # fmt: skip
        print(f"{'round':>5} {'pgbench median ms':>18} {'harness median ms':>18} {'ratio':>7} {'calls':>7}")
        ratios = []
        for r in range(args.rounds):
            if r % 2 == 0:
                pg, n = pgbench_round(cluster, workdir, args.seconds)
                ours = harness_round(cluster, n)
            else:
                ours = harness_round(cluster, args.seconds * 5000)
                pg, n = pgbench_round(cluster, workdir, args.seconds)
            ratios.append(ours / pg)
            print(f"{r + 1:>5} {pg:>18.4f} {ours:>18.4f} {ours / pg:>6.2f}x {n:>7}")
        print(f"\nharness / pgbench -M prepared (median of {args.rounds} rounds): {statistics.median(ratios):.2f}x "
              f"(range {min(ratios):.2f}-{max(ratios):.2f}x; goal <= 1.25x)")  # fmt: skip


if __name__ == "__main__":
    main()
