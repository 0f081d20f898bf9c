"""Read scaling with per-node CPU budgets: reads on the primary alone vs spread over primary + replicas.

On one laptop every node shares the same cores, so without budgets adding replicas cannot raise
throughput. With ``cpus_per_node`` each node gets its own cgroup CPU quota (as root), and a read
mix routed to all nodes should approach (nodes)x the primary alone. Peer in the same run: the
same mix, clients and duration routed to the primary only; rounds alternate the order.

    python benchmarks/read_scaling.py [--cpus 0.25] [--replicas 2] [--clients 6] [--duration 6] [--rounds 2]

Goal (issue 16): >= 2.2x with 2 replicas at 0.5 CPU each. On 2 cores that needs 1.5 cores for the
nodes plus the load generator's own; --cpus 0.25 is what fits here.
"""

from __future__ import annotations

import argparse
import statistics

from _scratch import scratch_dir

from workbook.cluster import LocalCluster
from workbook.dataset import load
from workbook.traffic import run_load


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", type=float, default=0.25)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mix", default="point")
    args = ap.parse_args()
    with scratch_dir("wb-bench-scaling-") as d:
        cluster = LocalCluster(d / "home", cpus_per_node=args.cpus)
        try:
            nodes = cluster.up(replicas=args.replicas)
            print("budgets:", {n.name: n.cpu_budget for n in nodes})
            load(cluster.target(), 0.05, 42, progress=False)
            cluster.wait_caught_up()
            target = cluster.target()
            ratios = []
            print(f"{'round':>5} {'primary TPS':>12} {'all nodes TPS':>14} {'ratio':>7}")
            for r in range(args.rounds):
                order = ("primary", "all") if r % 2 == 0 else ("all", "primary")
                tps = {}
                for route in order:
                    run = run_load(target, args.mix, clients=args.clients, duration_s=args.duration, route=route)
                    tps[route] = run.as_dict()["tps"]
                ratios.append(tps["all"] / tps["primary"])
                print(f"{r + 1:>5} {tps['primary']:>12,.0f} {tps['all']:>14,.0f} {ratios[-1]:>6.2f}x")
            print(f"\n{args.mix} mix, {args.clients} clients, {args.cpus} CPU per node, 1 + {args.replicas} nodes: "
                  f"median {statistics.median(ratios):.2f}x (the limit is {1 + args.replicas}x)")
        finally:
            cluster.destroy()


if __name__ == "__main__":
    main()
