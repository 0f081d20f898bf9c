"""How much the timing harness adds to a query's latency, against pgbench in the same run.

The statement is pgbench's own point query (``SELECT abalance FROM pgbench_accounts WHERE aid =
:aid``, i.e. ``pgbench -S``), prepared, one client, on a fresh local cluster (``pgbench -i -s 10``,
1M accounts). Each round runs

* **pgbench** ``-M prepared -c 1 -T SECONDS`` with a per-transaction log, whose latencies give the
  median (pgbench's own clock, around libpq);
* **the workbook harness**: exactly what ``compare()`` times — :func:`~workbook.experiment.runs.shape_runner`
  inside :func:`~workbook.experiment.time_interleaved` — with random ids, for as many calls as
  pgbench made, with the default client (``libpq``: parameters dumped beforehand,
  ``PQexecPrepared``, the whole result received) and, for reference, ``client="psycopg"`` (the
  full Python driver path, rows built as tuples).

The three run in an order that rotates from round to round; the verdict is the median over
rounds of the ratio of medians. Goal: harness / pgbench <= 1.25x.

    python benchmarks/timing_overhead.py [--rounds 6] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
from pathlib import Path

from _scratch import scratch_cluster, scratch_dir

from workbook.cluster import LocalCluster
from workbook.dataset.shapes import parse_shape
from workbook.experiment import time_interleaved
from workbook.experiment.runs import shape_runner

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


def harness_round(cluster: LocalCluster, calls: int, client: str) -> float:
    rng = random.Random(7)
    params = [{"aid": rng.randint(1, 1_000_000)} for _ in range(10_000)]
    with cluster.target().connect() as conn:
        runner = shape_runner(conn, SHAPE, "default", params, client)
        samples = time_interleaved([runner], repeats=calls, warmup=200)[0]
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    with scratch_cluster("wb-bench-timing-") as cluster, scratch_dir("wb-pgbench-") as workdir:
        env = {**os.environ, "PGPASSWORD": cluster._password()}
        subprocess.run([cluster.bins.exe("pgbench"), "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p",
                        str(cluster.status()[0].port), "-U", "postgres", "workbook"], env=env, check=True, capture_output=True)  # fmt: skip
        print(f"{'round':>5} {'pgbench ms':>11} {'libpq ms':>9} {'ratio':>7} {'psycopg ms':>11} {'ratio':>7} {'calls':>7}")
        ratios, py_ratios = [], []
        calls = args.seconds * 12_000  # until pgbench has run once: about its rate here
        for r in range(args.rounds):
            got: dict[str, float] = {}
            order = ["pgbench", "libpq", "psycopg"]
            for who in order[r % 3 :] + order[: r % 3]:
                if who == "pgbench":
                    got[who], calls = pgbench_round(cluster, workdir, args.seconds)
                else:
                    got[who] = harness_round(cluster, calls, who)
            ratios.append(got["libpq"] / got["pgbench"])
            py_ratios.append(got["psycopg"] / got["pgbench"])
            print(f"{r + 1:>5} {got['pgbench']:>11.4f} {got['libpq']:>9.4f} {ratios[-1]:>6.2f}x "
                  f"{got['psycopg']:>11.4f} {py_ratios[-1]:>6.2f}x {calls:>7}")  # fmt: skip
        print(f"\nharness (libpq, the default) / pgbench -M prepared, median of {args.rounds} rounds: "
              f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x; goal <= 1.25x)")  # fmt: skip
        print(f"harness with client='psycopg' / pgbench: {statistics.median(py_ratios):.2f}x "
              f"(range {min(py_ratios):.2f}-{max(py_ratios):.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
