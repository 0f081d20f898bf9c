"""Arms on one CPU: how often two identical arms are called different, pinned and unpinned.

An A/A test of the timing harness. Each round opens two fresh connections and times the same
shape (same statement, same parameters) on both in interleaved turns, as a comparison does,
then asks for the verdict at 99 %. Two identical arms must be "no measurable difference"; every
other verdict is a false alarm. Rounds alternate between leaving the two server processes where
Linux put them and pinning them to one CPU (:func:`workbook.experiment.pinning.same_cpu`, what
every comparison now does on a local server), so both conditions meet the same machine.

Printed per condition: false alarms out of the rounds, and how far the two connections' medians
drift apart (the median and the largest |ratio - 1| of 20-turn windows), then the unpinned /
pinned ratios. At 99 % the false alarms should be about 1 in 100.

    python benchmarks/same_cpu.py [--scale 0.05] [--rounds 60] [--repeats 20]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

from _scratch import scratch_cluster

from workbook.dataset import load
from workbook.dataset.shapes import shape
from workbook.experiment import time_interleaved, verdict
from workbook.experiment.pinning import same_cpu
from workbook.experiment.wire import statement_runner

SHAPE = "conversation_latest_messages"  # a sequential scan of messages without its index: ~2.5 ms at SF 0.05


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=60, help="A/A comparisons per condition")
    ap.add_argument("--repeats", type=int, default=20, help="turns per comparison (the lab's default maximum)")
    args = ap.parse_args()
    qs = shape(SHAPE)
    with scratch_cluster("wb-bench-samecpu-") as cluster:
        target = cluster.target()
        load(target, args.scale, 42, progress=False)
        with target.connect() as c:
            params = qs.sample(c, "hot")
        sql = qs.variant(None).statements[0]
        alarms = {"unpinned": 0, "pinned": 0}
        drift: dict[str, list[float]] = {"unpinned": [], "pinned": []}
        medians: dict[str, list[float]] = {"unpinned": [], "pinned": []}
        notes = set()
        for r in range(args.rounds * 2):
            mode = ("unpinned", "pinned")[r % 2]
            with target.connect() as a, target.connect() as b:
                pin = same_cpu([a, b]) if mode == "pinned" else contextlib.nullcontext("left where Linux put them")
                with pin as note:
                    notes.add(f"{mode}: {note}")
                    x, y = time_interleaved([statement_runner(a, sql, params), statement_runner(b, sql, params)],
                                            repeats=args.repeats, warmup=3, seed=r)  # fmt: skip
            v = verdict(x, y, confidence=0.99)
            alarms[mode] += v.significant
            drift[mode].append(abs(v.ratio - 1))
            medians[mode].append(statistics.median(x + y))
        print(f"SF {args.scale:g}, {SHAPE}, {args.rounds} A/A comparisons of {args.repeats} turns per condition, "
              "alternating; verdicts at 99 %")  # fmt: skip
        for n in sorted(notes):
            print(f"  {n}")
        print(f"\n{'condition':>10} {'false alarms':>13} {'median |ratio-1|':>17} {'max |ratio-1|':>14} {'median ms':>10}")
        for mode in ("unpinned", "pinned"):
            print(f"{mode:>10} {alarms[mode]:>7} / {args.rounds:<4} {statistics.median(drift[mode]):>17.3f} "
                  f"{max(drift[mode]):>14.3f} {statistics.median(medians[mode]):>10.3f}")  # fmt: skip
        md = statistics.median(drift["unpinned"]) / max(statistics.median(drift["pinned"]), 1e-9)
        print(f"\nunpinned / pinned: false alarms {alarms['unpinned']} vs {alarms['pinned']}, "
              f"median drift {md:.2f}x; expected false alarms at 99 %: {args.rounds / 100:.1f} per condition")


if __name__ == "__main__":
    main()
