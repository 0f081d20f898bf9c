"""Read scaling with per-node CPU budgets: reads on the primary alone vs spread over primary + replicas.

On one laptop every node shares the same cores, so without budgets adding replicas cannot raise
throughput. With ``cpus_per_node`` each node gets its own cgroup CPU quota (as root), and a read
mix routed to all nodes should approach (nodes)x the primary alone. Peer in the same run: the
same mix, clients and duration routed to the primary only; rounds alternate the order.

    python benchmarks/read_scaling.py [--cpus 0.25] [--replicas 2] [--clients 6] [--duration 6] [--rounds 2]
    python benchmarks/read_scaling.py --lesson --scale 1 --cpus 0.5 --rounds 3 --duration 4 [--clients 9]

``--lesson`` measures what the replicas lesson measures (``workbook.lessons.replicas``): the
``read`` mix from the same clients on the primary alone, primary + 1 and primary + 2 replicas,
the three arms in rotating order each round, TPS and p95 with their 95% intervals; the ratio is
primary + 2 over the primary alone, per round and over all rounds.

Goal (issue 16, and issue 17 at SF 1): >= 2.2x with 2 replicas at 0.5 CPU each.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _scratch import scratch_dir

from workbook.cluster import LocalCluster
from workbook.dataset import load
from workbook.traffic import run_load


def lesson_arms(cluster: LocalCluster, args: argparse.Namespace) -> None:
    """The replicas lesson's read-scaling step at this scale: 0, 1, 2 replicas, interleaved."""
    from workbook.lessons.replicas import app_indexes, prepare_mix, read_scaling_runs, scaling_note, summarise_runs

    with app_indexes(cluster.target()) as built:
        print("indexes built for the read mix:", ", ".join(built))
        pm, note = prepare_mix(cluster.target(), args.mix)
        if note:
            print("note:", note)
        runs = read_scaling_runs(cluster.target(), clients=args.clients, duration_s=args.duration, rounds=args.rounds,
                                 mix=args.mix, prepared=pm, cluster_home=Path(cluster.home))  # fmt: skip
        single = concurrency_arms(cluster, args, pm) if args.concurrency else None
    print(f"{'round':>5} " + " ".join(f"{f'+{k} TPS':>10}" for k in runs) + f" {'ratio +2/0':>11}")
    for r in range(args.rounds):
        tps = {k: rs[r].tps for k, rs in runs.items()}
        ratio = tps[2] / tps[0] if tps.get(0) and 2 in tps else float("nan")
        print(f"{r + 1:>5} " + " ".join(f"{v:>10,.0f}" for v in tps.values()) + f" {ratio:>10.2f}x")
    arms = {k: summarise_runs(rs) for k, rs in runs.items()}
    for k, a in arms.items():
        print(f"primary + {k}: {a['tps']:,.1f} TPS (95% CI {a['tps_ci'][0]}-{a['tps_ci'][1]}), "
              f"p95 {a['p95_ms']} ms (95% CI {a['p95_ms_ci'][0]}-{a['p95_ms_ci'][1]})")  # fmt: skip
        for node, v in a["by_node"].items():
            print(f"    {node}: {v['tps']:,.1f} TPS, p95 {v['p95_ms']} ms, throttled in {v['cpu_throttled_share']} of its quota periods")
    ratios = [runs[2][r].tps / runs[0][r].tps for r in range(args.rounds)]
    print(f"\n{args.mix} mix at SF {args.scale}, {args.clients} clients, {args.cpus} CPU per node: primary + 2 replicas "
          f"/ primary alone = {arms[2]['tps'] / arms[0]['tps']:.2f}x over all rounds, median per round "
          f"{statistics.median(ratios):.2f}x (the limit is 3x)")  # fmt: skip
    note = scaling_note({str(k): a for k, a in arms.items()}, args.clients)
    if note:
        print("note:", note)
    if single:
        print(single)


def concurrency_arms(cluster: LocalCluster, args: argparse.Namespace, pm: object) -> str:
    """The primary alone, in its CPU budget, with the lesson's clients and with the clients each node
    has when there are two replicas (a third), in alternating order: how much more one budget
    serves with fewer backends sharing it."""
    from workbook.lessons.replicas import _with_replicas

    few = max(1, args.clients // 3)
    target = _with_replicas(cluster.target(), 0)
    tps: dict[int, list[float]] = {args.clients: [], few: []}
    for r in range(args.rounds):
        for n in (args.clients, few) if r % 2 == 0 else (few, args.clients):
            run = run_load(target, args.mix, clients=n, duration_s=args.duration, route="primary", prepared=pm)  # type: ignore[arg-type]  # fmt: skip
            tps[n].append(run.tps)
    ratios = [a / b for a, b in zip(tps[few], tps[args.clients], strict=True)]
    return (f"the primary alone at {args.cpus} CPU: {args.clients} clients {statistics.mean(tps[args.clients]):,.0f} TPS, "
            f"{few} clients {statistics.mean(tps[few]):,.0f} TPS; {few} / {args.clients} clients: median per round "
            f"{statistics.median(ratios):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", type=float, default=0.25)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--clients", type=int, default=None, help="default: 6 (the lesson's 9 with --lesson)")
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mix", default=None, help="default: point (read with --lesson)")
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--lesson", action="store_true", help="the replicas lesson's arms: 0, 1, 2 replicas, read mix")
    ap.add_argument("--concurrency", action="store_true",
                    help="with --lesson: also the primary alone with the lesson's clients and with a third of them")
    args = ap.parse_args()
    args.mix = args.mix or ("read" if args.lesson else "point")
    if args.clients is None:
        from workbook.lessons.replicas import CLIENTS

        args.clients = CLIENTS if args.lesson else 6
    with scratch_dir("wb-bench-scaling-") as d:
        cluster = LocalCluster(d / "home", cpus_per_node=args.cpus)
        try:
            nodes = cluster.up(replicas=0 if args.lesson else args.replicas)
            load(cluster.target(), args.scale, 42, progress=False)
            if args.lesson:
                nodes = cluster.up(replicas=2)  # after the load: pg_basebackup copies it
            print("budgets:", {n.name: n.cpu_budget for n in nodes})
            cluster.wait_caught_up(timeout=120)
            if args.lesson:
                lesson_arms(cluster, args)
                return
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
