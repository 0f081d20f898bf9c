"""Dataset reset vs a fresh load: how long putting the dataset back after a write workload takes.

Peer, measured in the same run on the same cluster: ``workbook.dataset.load`` of the same scale and
seed (generate, COPY, validate, analyze, swap). The reset copies the pristine database at file
level (``workbook.dataset.pristine``). Goal (issue 16): reset <= 0.2x of a fresh load at SF 1.

    python benchmarks/reset.py [--scale 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _scratch import scratch_cluster

from workbook.dataset import checksum, load, mark_written, protect, reset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with scratch_cluster("wb-bench-reset-") as cluster:
        target = cluster.target()
        loads, resets, protects = [], [], []
        print(f"{'round':>5} {'load s':>8} {'protect s':>10} {'reset s':>8} {'reset/load':>11}")
        for r in range(args.rounds):  # interleaved: load, protect, write, reset, so drift hits both
            t0 = time.perf_counter()
            load(target, args.scale, 42, progress=False)
            loads.append(time.perf_counter() - t0)
            with target.connect() as conn:
                before = checksum(conn).value
            t0 = time.perf_counter()
            protect(target)
            protects.append(time.perf_counter() - t0)
            with target.connect() as conn:  # a write workload's damage
                conn.execute("DELETE FROM ai_app.audit_log WHERE id % 3 = 0")
                conn.execute("UPDATE ai_app.organisations SET tokens_this_month = tokens_this_month + 1")
            mark_written(target, "benchmarks/reset.py")
            t0 = time.perf_counter()
            reset(target)
            resets.append(time.perf_counter() - t0)
            with target.connect() as conn:
                assert checksum(conn).value == before, "reset did not restore the dataset"
            print(f"{r + 1:>5} {loads[-1]:>8.2f} {protects[-1]:>10.2f} {resets[-1]:>8.2f} {resets[-1] / loads[-1]:>10.2f}x")
        ratio = statistics.median(x / y for x, y in zip(resets, loads))
        print(f"\nSF {args.scale:g}: median reset {statistics.median(resets):.2f} s, load {statistics.median(loads):.2f} s, "
              f"ratio {ratio:.2f}x (goal <= 0.2x); the one-time copy before the first write: "
              f"{statistics.median(protects):.2f} s")


if __name__ == "__main__":
    main()
