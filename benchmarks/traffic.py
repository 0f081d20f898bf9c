"""What the traffic drivers cost: the pgbench driver vs raw pgbench, the Python driver vs pgbench.

On a fresh local cluster with the dataset loaded, in interleaved rounds (so drift hits every arm):

* **pgbench driver vs raw pgbench, same scripts**: ``run_load(driver="pgbench")`` (monitor thread,
  stderr reader, log parsing) against the very same pgbench command line run by a bare
  ``subprocess.run`` with no monitor, its TPS from pgbench's own summary and its p95 read from
  its own ``-l`` log by a few lines of numpy (independent of the driver's parser).
  Goal: TPS >= 0.97x, p95 within 5 %.
Arms alternate in ABBA order round by round; single runs on 2 shared cores swing by 10-20 %, so
the medians of the per-round ratios are what to read.

* **Python driver vs pgbench on a point-query mix** (``api_key_lookup``) at 8 clients: TPS ratio
  for the libpq path (the default) and the full psycopg cursor path. Goal: >= 0.5x.

    python benchmarks/traffic.py [--scale 0.05] [--clients 8] [--duration 4] [--rounds 6] [--mix point]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from _scratch import scratch_cluster

from workbook.dataset import load
from workbook.traffic import pgbench as pgb
from workbook.traffic import prepare, run_load


def raw_pgbench(target, prepared, clients: int, duration: float) -> tuple[float, float]:  # noqa: ANN001
    """(tps from pgbench's summary, p95 ms from its own log) for the driver's exact command line."""
    with tempfile.TemporaryDirectory(prefix="wb-bench-raw-") as tmp:
        work = Path(tmp)
        (proc,) = pgb.split(prepared, target, "primary", clients, None)
        pgb.write_scripts(proc, work, 0)
        proc.log_prefix = work / "raw"
        cmd = pgb.argv(pgb.find_pgbench(), proc, duration_s=duration, protocol="prepared", latency_limit_ms=None)
        out = subprocess.run(cmd, cwd=work, env=pgb.libpq_env(target, proc.node, "workbook-bench-raw"),
                             capture_output=True, text=True, check=True)  # fmt: skip
        tps = pgb.parse_summary(out.stdout)["tps"]
        lat_us = np.concatenate([np.loadtxt(f, usecols=2, ndmin=1) for f in work.glob("raw.*")])
        return tps, float(np.percentile(lat_us, 95) / 1000)


def median_ci(ratios: list[float], seed: int = 0) -> str:
    """The median of per-round ratios with its 95 % percentile-bootstrap interval."""
    a = np.asarray(ratios, dtype=float)
    meds = np.median(a[np.random.default_rng(seed).integers(0, len(a), (4000, len(a)))], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return f"{np.median(a):.3f} (95% CI {lo:.3f}-{hi:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.05, help="dataset scale factor (default 0.05)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per run (default 4)")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    ap.add_argument("--mix", default="point", help="mix for the raw-pgbench comparison (default point)")
    args = ap.parse_args()
    with scratch_cluster("wb-bench-traffic-") as cluster:
        target = cluster.target()
        info = load(target, args.scale, 42, progress=False)
        print(f"SF {args.scale:g}: {info.rows['messages']:,} messages; {args.clients} clients, {args.duration:g} s runs, "
              f"{args.rounds} interleaved rounds\n")  # fmt: skip
        pm = prepare(target, args.mix)
        point = prepare(target, "point")

        print(f"1. pgbench driver vs raw pgbench, same scripts (mix {args.mix!r})")
        drv_tps, raw_tps, drv_p95, raw_p95 = [], [], [], []
        for r in range(args.rounds):
            if r % 2:  # ABBA order: a drift over the rounds hits both arms alike
                t, p = raw_pgbench(target, pm, args.clients, args.duration)
                run = run_load(target, args.mix, clients=args.clients, duration_s=args.duration, prepared=pm)
            else:
                run = run_load(target, args.mix, clients=args.clients, duration_s=args.duration, prepared=pm)
                t, p = raw_pgbench(target, pm, args.clients, args.duration)
            drv_tps.append(run.tps)
            drv_p95.append(run.latency()["p95_ms"])
            raw_tps.append(t)
            raw_p95.append(p)
            print(f"   round {r + 1}: driver {run.tps:>9,.0f} TPS p95 {drv_p95[-1]:.3f} ms | raw {t:>9,.0f} TPS "
                  f"p95 {p:.3f} ms | TPS ratio {run.tps / t:.3f}, p95 ratio {drv_p95[-1] / p:.3f}")  # fmt: skip
        tps_ratio = median_ci([a / b for a, b in zip(drv_tps, raw_tps, strict=True)])
        p95_ratio = median_ci([a / b for a, b in zip(drv_p95, raw_p95, strict=True)])
        print(f"   median TPS ratio {tps_ratio} (goal >= 0.97)\n   median p95 ratio {p95_ratio} (goal 0.95-1.05)")
        print(f"   totals: driver {sum(drv_tps) / len(drv_tps):,.0f} TPS, raw {sum(raw_tps) / len(raw_tps):,.0f} TPS (means)\n")

        print(f"2. Python driver vs pgbench, point queries, {args.clients} clients")
        arms: dict[str, list[float]] = {"pgbench": [], "python/libpq": [], "python/psycopg": []}
        for r in range(args.rounds):
            for arm in list(arms)[:: -1 if r % 2 else 1]:  # ABBA order again
                driver, _, client = arm.partition("/")
                run = run_load(target, "point", clients=args.clients, duration_s=args.duration, driver=driver,
                               client=client or "libpq", prepared=point)  # fmt: skip
                arms[arm].append(run.tps)
            print(f"   round {r + 1}: " + ", ".join(f"{a} {v[-1]:,.0f} TPS" for a, v in arms.items()))
        for arm in ("python/libpq", "python/psycopg"):
            ratio = median_ci([a / b for a, b in zip(arms[arm], arms["pgbench"], strict=True)])
            print(f"   {arm} / pgbench: median {ratio} (goal >= 0.5)")


if __name__ == "__main__":
    main()
