"""200 clients through PgBouncer (transaction pooling, pool 50) vs 50 clients straight to the server.

On a fresh local cluster with the dataset loaded, the same mix through the pgbench driver
(``-M extended``: PgBouncer 1.18 carries no prepared statements), in alternating order round by
round (so drift hits both arms): the TPS ratio pooler/direct (goal >= 0.75x) and the pooler's p95
overhead (200 clients share 50 server connections, so each waits its turn: p95 grows with the
queue, not only with PgBouncer's own cost).

    python benchmarks/pooling.py [--scale 0.05] [--mix point] [--duration 4] [--rounds 4]
"""

from __future__ import annotations

import argparse

import numpy as np
from _scratch import scratch_cluster

from workbook.dataset import load
from workbook.traffic import prepare, run_load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--mix", default="point")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--pool-size", type=int, default=50)
    ap.add_argument("--clients", type=int, default=200)
    a = ap.parse_args()
    with scratch_cluster("wb-bench-pool-") as cluster:
        load(cluster.target(), a.scale, 42, progress=False)
        cluster.add_pooler(a.pool_size)
        target = cluster.target()
        pooled = target.through_pooler()
        pm = prepare(target, a.mix, seed=0)
        common = dict(duration_s=a.duration, driver="pgbench", protocol="extended", allow_overload=True,
                      monitor=False, protect_dataset=False, prepared=pm)  # fmt: skip
        rows = []
        for r in range(a.rounds):
            arms = [("pooler", pooled, a.clients), ("direct", target, a.pool_size)]
            if r % 2:
                arms.reverse()
            got = {}
            for name, t, clients in arms:
                run = run_load(t, a.mix, clients=clients, **common)
                got[name] = (run.tps, run.latency()["p95_ms"], sum(run.errors().values()))
            rows.append(got)
            p, d = got["pooler"], got["direct"]
            print(f"| {r + 1} | {d[0]:,.0f} | {d[1]:.2f} | {p[0]:,.0f} | {p[1]:.2f} | {p[2]} | {p[0] / d[0]:.2f}× |",
                  flush=True)  # fmt: skip
        ratio = float(np.median([g["pooler"][0] / g["direct"][0] for g in rows]))
        over = float(np.median([g["pooler"][1] - g["direct"][1] for g in rows]))
        print(f"median TPS ratio pooler/direct: {ratio:.2f}× (goal >= 0.75×); median p95 overhead: {over:+.2f} ms")
        cluster.remove_pooler()


if __name__ == "__main__":
    main()
