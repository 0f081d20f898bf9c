"""Toggle an index and re-measure a shape at SF 1: how long one click of the workbook takes.

On a fresh local cluster with the dataset at SF 1 (about 1M messages), the latest-messages shape
is compared with and without the composite index, twice:

* **what-if**: the index is built in a rolled-back transaction on the treatment's connection,
  both sides timed in interleaved turns (the default of ``workbook compare``);
* **real**: the index is created, measured and dropped again (sequential before/after).

Each toggle is the whole round trip a user waits for: build, warm-up, 30 timed repetitions per
side, both plans with EXPLAIN ANALYZE, revert. Printed with the index's own build time (the
server's work, the floor). Goal: < 5 s per toggle.

    python benchmarks/toggle.py [--scale 1] [--repeats 30]
"""

from __future__ import annotations

import argparse
import time

from _scratch import scratch_cluster

from workbook.dataset import load, load_indexes
from workbook.experiment import Index, WhatIfIndex, compare

SHAPE = "conversation_latest_messages"
INDEX = "messages_conversation_created"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with scratch_cluster("wb-bench-toggle-") as cluster:
        info = load(cluster.target(), args.scale, 42, progress=False)
        print(f"SF {args.scale:g}: {info.rows['messages']:,} messages loaded in {info.load_seconds:.1f} s\n")
        spec = load_indexes()[INDEX]
        print(f"{'mode':>8} {'toggle s':>9} {'index build s':>14} {'verdict':<40}")
        for _ in range(args.rounds):
            for mode, knob in (("what-if", WhatIfIndex(spec)), ("real", Index(spec))):
                t0 = time.perf_counter()
                c = compare(cluster.target(), SHAPE, knob, repeats=args.repeats)
                elapsed = time.perf_counter() - t0
                print(f"{mode:>8} {elapsed:>9.2f} {knob.cost.build_seconds:>14.2f} {c.verdict.text:<40}")
        print("\ngoal: < 5 s per toggle (build + warm-up + 2 x repeats timed runs + 2 plans + revert)")


if __name__ == "__main__":
    main()
