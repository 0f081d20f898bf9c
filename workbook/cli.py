"""The ``workbook`` command.

argparse (standard library) rather than click/typer: no extra dependency, no import cost, and
the handful of sub-commands need nothing more. Heavy modules (psycopg, pandas, altair ...) are
imported inside the commands that use them, so ``workbook status`` starts fast.

Errors the workbook raises on purpose print as one line ``error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import config
from .errors import WorkbookError

EXIT_ERROR = 2
#: timed repetitions per side that compare/report/advise accept
REPEATS_RANGE = (2, 10_000)
#: the largest seed dataset_info can record (a PostgreSQL integer)
SEED_MAX = 2**31 - 1
#: where `workbook lab` outside the repository copies the notebooks (in the working directory)
NOTEBOOK_COPY = "workbook-notebooks"


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as the one-line ``error: ...`` every other error is."""

    def error(self, message: str) -> NoReturn:
        hint = f"see '{self.prog} --help'"
        if "expected one argument" in message:  # the value starts with '-' (e.g. SQL opening with a comment)
            hint = "a value that starts with '-' goes after '=', e.g. --sql='-- comment ...'; " + hint
        raise WorkbookError(f"{message}; {hint}")


def _version() -> str:
    """The installed package's version (its metadata), else the source's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("workbook")
    except PackageNotFoundError:
        from . import __version__

        return __version__


#: dest of --replica-dsn given after the subcommand (merged with the ones before it)
_REPLICA_DSN_AFTER = "replica_dsn_after"


_GLOBAL_HELP = {
    "--home": "workbook home (cluster, results); default $WORKBOOK_HOME, else ./.workbook (as root, when the "
              "server user cannot reach that, /var/tmp/workbook-<uid>-<hash of this folder>)",
    "--dsn": "use your own PostgreSQL (primary DSN) instead of the local cluster; or $WORKBOOK_DSN",
    "--replica-dsn": "a read replica of --dsn (repeatable); or $WORKBOOK_REPLICA_DSNS, space-separated",
    "--allow-writes": "let the workbook write/DDL on the --dsn target (read-only by default); or $WORKBOOK_ALLOW_WRITES=1",
    "--allow-plaintext": "allow connections without TLS to a --dsn host that is not loopback (refused by default); "
                         "or $WORKBOOK_ALLOW_PLAINTEXT=1. TLS options go in the DSN: sslmode=verify-full sslrootcert=CA.crt",
}  # fmt: skip


def _add_global_options(p: argparse.ArgumentParser, *, after: bool) -> None:
    """The options every command takes. Before the subcommand they carry the defaults; after it
    (``after``) they are accepted too, and set only what is given (``argparse.SUPPRESS``), so
    ``workbook --dsn X status`` and ``workbook status --dsn X`` parse the same."""
    h = _GLOBAL_HELP
    if after:
        unset = argparse.SUPPRESS
        p.add_argument("--home", metavar="DIR", default=unset, help=h["--home"])
        p.add_argument("--dsn", default=unset, help=h["--dsn"])
        p.add_argument("--replica-dsn", action="append", metavar="DSN", dest=_REPLICA_DSN_AFTER, default=unset,
                       help=h["--replica-dsn"])  # fmt: skip
        p.add_argument("--allow-writes", action="store_true", default=unset, help=h["--allow-writes"])
        p.add_argument("--allow-plaintext", action="store_true", default=unset, help=h["--allow-plaintext"])
        return
    p.add_argument("--home", metavar="DIR", default=None, help=h["--home"])
    p.add_argument("--dsn", default=config.dsn(), help=h["--dsn"])
    p.add_argument("--replica-dsn", action="append", metavar="DSN", default=None, help=h["--replica-dsn"])
    p.add_argument("--allow-writes", action="store_true", default=config.allow_writes(), help=h["--allow-writes"])
    p.add_argument("--allow-plaintext", action="store_true", default=config.allow_plaintext(), help=h["--allow-plaintext"])


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="workbook",
        description="The AI-app database optimization workbook: a real PostgreSQL to measure on.",
        epilog="Global options (--home, --dsn, --replica-dsn, --allow-writes) go before or after the command.",
    )
    p.add_argument("--version", action="version", version=f"workbook {_version()}",
                   help="print the workbook's version and exit")  # fmt: skip
    _add_global_options(p, after=False)
    common = _Parser(add_help=False)
    _add_global_options(common, after=True)
    sub = p.add_subparsers(
        dest="command",
        metavar="COMMAND",
        parser_class=_Parser,
        help="what to do ('workbook COMMAND --help' for its options)",
    )
    sub.required = True

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    up = command("up", "start (or create) the local cluster")
    up.add_argument("--replicas", type=int, default=None, metavar="N", help="grow or shrink to N streaming replicas")
    up.add_argument("--port", type=int, default=None, metavar="P",
                    help="the primary's TCP port when creating (default: the first free one from 25432; "
                         "or $WORKBOOK_PORT)")  # fmt: skip
    up.add_argument("--cpus-per-node", type=float, default=None, metavar="CPUS",
                    help="give each node its own CPU budget, e.g. 0.5 (a cgroup CPU quota as root, else whole "
                         "cores by CPU affinity, else the nodes share the CPUs, said in one note); remembered "
                         "by the cluster; 0 removes it")  # fmt: skip
    up.add_argument("--pooler", action="store_true",
                    help="also run PgBouncer (transaction pooling, 127.0.0.1 only) in front of the primary; "
                         "'workbook down' stops it")  # fmt: skip
    up.add_argument("--pool-size", type=int, default=None, metavar="N",
                    help="PgBouncer's server connections per database/user (default 50; implies --pooler)")

    st = command("status", "each node's role, pid, port, state and replication lag")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    down = command("down", "stop every node of the local cluster")
    down.add_argument("--destroy", action="store_true", help="also delete its data, state and password")

    ps = command("psql", "an interactive psql on a node")
    ps.add_argument("--node", default="primary", help="node name (see status); default primary")
    ps.epilog = "Other arguments are passed to psql, e.g. workbook psql -c 'select 1'."

    pr = command("promote", "fail over: make replica NAME the primary (the old primary is fenced and dropped)")
    pr.add_argument("name", help="the replica to promote (see 'workbook status')")

    rl = command("replica", "add one replica to the local cluster (e.g. a cascading one: --upstream replica1), or remove one")
    rl.add_argument("action", choices=("add", "remove"), help="add or remove")
    rl.add_argument("name", nargs="?", default=None,
                    help="the replica's name (add: default the next replicaN; remove: default the newest)")
    rl.add_argument("--upstream", default=None, metavar="NAME",
                    help="add: stream from this replica instead of the primary (a cascading replica)")

    dl = command("drill", "failover drill: writers, kill -9 of the primary, promotion; acknowledged writes lost (RPO) "
                          "and seconds to the first write (RTO)")
    dl.add_argument("drill", choices=("failover",), help="the drill to run (failover)")
    dl.add_argument("--sync", choices=("async", "remote_apply"), default="async",
                    help="synchronous commit while the writers run (default async)")
    dl.add_argument("--writers", type=int, default=4, metavar="N", help="concurrent writers (default 4)")
    dl.add_argument("--duration", type=float, default=3.0, metavar="S", help="seconds of writing before the kill (default 3)")
    dl.add_argument("--json", action="store_true", help="machine-readable result (acknowledged, lost, rto_s, ...)")

    lab = command("lab", "start the cluster and JupyterLab on the notebooks")
    lab.add_argument(
        "--replicas", type=int, default=None, metavar="N", help="grow or shrink to N streaming replicas first"
    )
    lab.add_argument("--notebooks", default=None, metavar="DIR",
                     help="folder to open (default: the repository's notebooks/ when run in it, else a copy of "
                          f"the workbook's notebooks in ./{NOTEBOOK_COPY}, made once)")  # fmt: skip
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser (print the URL only)")
    lab.add_argument(
        "--lab-port", type=int, default=None, metavar="P", help="JupyterLab's port (default: its own choice)"
    )
    ld = command("load", "generate the sample AI-app dataset and load it (replaces the loaded one atomically)")
    ld.add_argument(
        "--scale",
        type=float,
        default=None,
        metavar="S",
        help=f"scale factor; SF 1 is about 1M messages (default $WORKBOOK_SCALE, else {config.DEFAULT_SCALE})",
    )
    ld.add_argument("--seed", type=int, default=42, help="generator seed (default 42)")
    ld.add_argument("--quiet", action="store_true", help="no progress bar")
    ld.add_argument("--json", action="store_true", help="machine-readable summary")

    ds = command("dataset", "what dataset is loaded: seed, scale, rows per table")
    ds.add_argument("--checksum", action="store_true", help="also compute the content checksum (reads every row)")
    ds.add_argument("--duckdb", metavar="PATH", help="also copy the dataset into this DuckDB file")
    ds.add_argument("--force", action="store_true", help="replace the --duckdb file if it exists")
    ds.add_argument("--json", action="store_true", help="machine-readable output")

    bn = command("bench", "concurrent traffic from the query shapes: TPS, p50/p95/p99, errors by class, per node")
    bn.add_argument("--mix", required=True, help="chat, read, ingest, analytics or point (see workbook.traffic.MIXES)")
    bn.add_argument("--clients", type=int, default=4, metavar="N", help="concurrent clients (default 4)")
    bn.add_argument("--duration", type=float, default=10.0, metavar="S", help="seconds of load (default 10)")
    bn.add_argument("--rate", type=float, default=None, metavar="R",
                    help="open loop: transactions per second over all clients (default: closed loop)")  # fmt: skip
    bn.add_argument("--route", choices=("primary", "replicas", "all"), default="primary",
                    help="where reads go: the primary, the replicas, or all nodes; writes always go to the primary")  # fmt: skip
    bn.add_argument("--driver", choices=("pgbench", "python"), default="pgbench",
                    help="pgbench (bundled with the server) or Python client threads (default pgbench)")  # fmt: skip
    bn.add_argument("--pool", choices=("none", "psycopg", "sqlalchemy", "pgbouncer"), default="none",
                    help="how the clients share connections: none (one each), a psycopg_pool, a SQLAlchemy engine "
                         "(Python threads), or PgBouncer in front of the primary (pgbench, -M extended)")  # fmt: skip
    bn.add_argument("--pool-size", type=int, default=None, metavar="N",
                    help="connections in the pool (default 50); for pgbouncer its server connections")
    bn.add_argument("--sweep", default=None, metavar="N,N,...",
                    help="closed-loop runs at these client counts and a Universal Scalability Law fit")  # fmt: skip
    bn.add_argument("--slow-plans", type=float, default=None, metavar="MS",
                    help="capture, with auto_explain, the plans of statements slower than MS during the load "
                         "(stored; see workbook slow-plans)")  # fmt: skip
    bn.add_argument("--json", action="store_true",
                    help='print {"tps", "p50_ms", "p95_ms", "p99_ms", "transactions", "errors", "by_node"} (+ "usl")')  # fmt: skip

    vc = command("vectors", "the vector lesson's sweep: exact vs HNSW (ef_search) vs IVFFlat (probes), recall@10 and latency")
    vc.add_argument("--json", action="store_true", help="machine-readable figures (exact_p50_ms, sweep, best_hnsw ...)")

    rs = command("reset", "put the dataset back as it was loaded, from the copy taken before the first write workload")
    rs.add_argument("--json", action="store_true", help="machine-readable output")

    ex = command("explain", "EXPLAIN ANALYZE a query shape (rolled back), or read a plan you bring: plan, misestimates, findings")
    ex_what = ex.add_mutually_exclusive_group(required=True)
    ex_what.add_argument("--shape", help="query shape name (see datasets/ai_app/queries/)")
    ex_what.add_argument("--plan-file", metavar="FILE|-",
                         help="EXPLAIN output from elsewhere (text or JSON, bare, psql-framed or an auto_explain log "
                              "entry; - reads stdin); needs no server")  # fmt: skip
    ex.add_argument("--variant", default=None, help="the shape's variant (default: its first)")
    ex.add_argument("--tier", choices=("hot", "cold"), default="hot", help="parameters for a big or a small tenant")
    ex.add_argument("--json", action="store_true", help="machine-readable output")

    cp = command("compare", "time a shape with and without a change (interleaved), with a verdict")
    cp.add_argument("--shape", required=True, help="query shape name (see datasets/ai_app/queries/)")
    cp.add_argument("--variant", default=None, help="variant of the baseline (default: the shape's first)")
    cp.add_argument("--index", action="append", default=[], metavar="NAME",
                    help="candidate index from datasets/ai_app/indexes.toml (repeatable); built as a what-if "
                         "index in a rolled-back transaction unless --real")
    cp.add_argument("--real", action="store_true", help="build the indexes for real (dropped again afterwards)")
    cp.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                    help="a setting for the treatment's session, e.g. work_mem=64MB (repeatable)")
    cp.add_argument("--against", default=None, metavar="VARIANT", help="the treatment runs this variant instead")
    cp.add_argument("--tier", choices=("hot", "cold"), default="hot", help="parameters for a big or a small tenant")
    cp.add_argument("--repeats", type=int, default=30, help="timed repetitions per side (default 30)")
    cp.add_argument("--json", action="store_true", help="machine-readable output")

    rp = command(
        "report", "the main job: cluster, dataset if missing, a standard suite of experiments, one HTML report"
    )
    rp.add_argument("--out", default="report.html", help="where to write the report (default report.html)")
    rp.add_argument(
        "--scale",
        type=float,
        default=None,
        metavar="S",
        help=f"scale if the dataset must be loaded (default $WORKBOOK_SCALE, else {config.DEFAULT_SCALE})",
    )
    rp.add_argument(
        "--lessons",
        default=None,
        metavar="NAMES",
        help="comma-separated lessons to run (indexes,jsonb,planner) or 'all'; default: the set that "
        "finishes in about a minute at the default scale",
    )
    rp.add_argument("--repeats", type=int, default=20, help="timed repetitions per side (default 20)")
    rp.add_argument(
        "--json",
        action="store_true",
        help='print {"lessons": {NAME: {"figures": {...}, "seconds": S}}, "out": PATH} on stdout',
    )
    rp.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    rp.add_argument("--plan-file", action="append", default=[], metavar="FILE|-",
                    help="report plans you bring (EXPLAIN text or JSON, repeatable) instead of running the lessons; "
                         "needs no server")  # fmt: skip

    ad = command("advise", "propose indexes for a query and verify each by a what-if measurement")
    ad_what = ad.add_mutually_exclusive_group(required=True)
    ad_what.add_argument("--sql", help="the query (literal values or $1 ...; it is executed, rolled back)")
    ad_what.add_argument("--plan-file", metavar="FILE|-",
                         help="a plan you bring (EXPLAIN text or JSON): advise on the query it holds (auto_explain's "
                              "Query Text, or the statement psql echoed)")  # fmt: skip
    ad_what.add_argument("--from-stats", action="store_true",
                         help="advise pg_stat_statements' top statements together (one index serving several counts once)")
    ad.add_argument("--top", type=int, default=5, metavar="N", help="with --from-stats: how many statements (default 5)")
    ad.add_argument("--repeats", type=int, default=15, help="timed repetitions per side (default 15)")
    ad.add_argument("--no-write-cost", action="store_true", help="skip measuring each suggestion's write cost")
    ad.add_argument("--json", action="store_true", help="machine-readable output")

    tp = command("top", "pg_stat_statements' top statements, each mapped to its query shape")
    tp.add_argument("--by", choices=("total", "calls", "mean", "rows"), default="total", help="order (default total time)")
    tp.add_argument("--limit", type=int, default=10, metavar="N", help="how many statements (default 10)")
    tp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = command("slow-plans", "plans of slow statements auto_explain captured during a workload (workbook bench --slow-plans MS)")
    sp.add_argument("--all", action="store_true", help="every stored capture, not only the latest")
    sp.add_argument("--limit", type=int, default=10, metavar="N", help="how many statements, slowest first (default 10)")
    sp.add_argument("--plan", default=None, metavar="ID", help="show one captured plan, node by node (its id or a prefix)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    hl = command("health", "unused and overlapping indexes, cache hit ratio, pg_stat_io, dead tuples, autovacuum lag")
    hl.add_argument("--json", action="store_true", help="machine-readable output")

    dr = command("doctor", "what is installed and usable here, and what each missing piece disables")
    dr.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _target(args: argparse.Namespace) -> Any:
    """The external target if --dsn was given, else the local cluster (started if needed)."""
    target = _external_target(args)
    if target is not None:
        return target
    cluster = _cluster(args)
    cluster.up()
    return cluster.target()


def _external_target(args: argparse.Namespace) -> Any:
    if not args.dsn:
        if args.replica_dsn:
            raise WorkbookError("--replica-dsn needs --dsn (the primary) as well")
        return None
    from .cluster import Target

    replicas = args.replica_dsn
    if replicas is None:
        replicas = config.replica_dsns()
    return Target.from_dsn(args.dsn, replicas, allow_writes=args.allow_writes, allow_plaintext=args.allow_plaintext)


def _measuring_target(args: argparse.Namespace) -> Any:
    """The target a measuring command uses, after dropping (local) or reporting (external) the
    indexes a killed run left behind: they would skew every verdict."""
    from .leftovers import sweep_leftovers

    target = _external_target(args) or _cluster(args).target()
    sweep_leftovers(target, say=lambda line: print(line, file=sys.stderr))
    return target


def _print_leftovers(target: Any) -> list[Any]:
    """List (never drop) what killed runs left; [] when the primary cannot be reached."""
    from .errors import ConnectionFailed
    from .leftovers import find_leftovers

    try:
        with target.connect() as conn:
            found = find_leftovers(conn)
    except ConnectionFailed:
        return []
    for item in found:
        print(f"note: {item.describe()} was left behind by a killed run; the next explain/compare/advise/report "
              f"{'drops it' if target.kind == 'local' else 'reports it'}", file=sys.stderr)  # fmt: skip
    return found


def _cluster(args: argparse.Namespace) -> Any:
    from .cluster import LocalCluster

    return LocalCluster(args.home, port=getattr(args, "port", None))


def _print_status(nodes: list[Any], as_json: bool, kind: str, *, pooler: Any = None) -> None:
    if as_json:
        extra = {"pooler": pooler.as_dict()} if pooler is not None else {}
        print(json.dumps({"target": kind, "nodes": [n.as_dict() for n in nodes], **extra}, indent=2))
        return
    header = ("NAME", "ROLE", "PID", "PORT", "STATE", "LAG_BYTES", "LAG_SECONDS", "CPU_BUDGET")
    rows = [header] + [
        (n.name, n.role, "-" if n.pid is None else str(n.pid), str(n.port), n.state,
         "-" if n.lag_bytes is None else str(n.lag_bytes),
         "-" if n.lag_seconds is None else f"{n.lag_seconds:.3f}",
         "-" if not n.cpu_budget else f"{n.cpu_budget['cpus']:g} ({n.cpu_budget['how']})")
        for n in nodes
    ]
    if any(n.tls is not None for n in nodes):  # external targets: the TLS each connection got (pg_stat_ssl)
        rows = [(*rows[0], "TLS")] + [(*r, "-" if n.tls is None else
                                       f"{n.tls['version']} {n.tls['cipher']}" if n.tls["ssl"] else "off")
                                      for r, n in zip(rows[1:], nodes, strict=True)]  # fmt: skip
        header = rows[0]
    if any(n.upstream for n in nodes):  # cascading replicas: the replica each streams from
        rows = [(*rows[0], "UPSTREAM")] + [(*r, n.upstream or "-") for r, n in zip(rows[1:], nodes, strict=True)]
        header = rows[0]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if pooler is not None:
        def n(x: Any) -> str:
            return "-" if x is None else str(x)

        print(f"\npooler (PgBouncer, transaction pooling): port {pooler.port}, pool {pooler.pool_size}, "
              f"pid {n(pooler.pid)}, {pooler.state}; clients active {n(pooler.clients_active)}, waiting "
              f"{n(pooler.clients_waiting)}; server connections active {n(pooler.servers_active)}, idle "
              f"{n(pooler.servers_idle)}")  # fmt: skip


def _local_only(command: str) -> WorkbookError:
    return WorkbookError(
        f"'workbook {command}' manages the local cluster; with --dsn/WORKBOOK_DSN your own server is "
        "used as it is (nothing to start or stop): drop --dsn, or unset WORKBOOK_DSN"
    )


def cmd_up(args: argparse.Namespace) -> int:
    if _external_target(args) is not None:
        raise _local_only("up")
    cluster = _cluster(args)
    nodes = cluster.up(replicas=args.replicas, cpus_per_node=args.cpus_per_node, pooler=args.pooler,
                       pool_size=args.pool_size)  # fmt: skip
    _print_status(nodes, False, "local", pooler=cluster.pooler_status())
    print(f"\ncluster home: {cluster.home}  (stop it with: workbook down)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    target = _external_target(args)
    if target is not None:
        _print_status(target.status(), args.json, "external")
        _print_leftovers(target)
        return 0
    cluster = _cluster(args)
    nodes = cluster.status()
    _print_status(nodes, args.json, "local", pooler=cluster.pooler_status())
    if nodes and nodes[0].pid is not None:
        _print_leftovers(cluster.target())
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if _external_target(args) is not None:
        raise _local_only("down")
    cluster = _cluster(args)
    if not cluster.home.exists():
        print(f"no workbook cluster in {cluster.home}; nothing to stop")
        return 0
    if args.destroy:
        cluster.destroy()
        print(f"stopped and deleted the cluster in {cluster.home}")
    else:
        cluster.stop()
        print(f"stopped the cluster in {cluster.home} (data kept; 'workbook up' starts it again)")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    if _external_target(args) is not None:
        raise _local_only("promote")
    cluster = _cluster(args)
    nodes = cluster.promote(args.name)
    _print_status(nodes, False, "local")
    failover = cluster.last_failover
    if failover is not None and failover.warning:
        print(f"warning: {failover.warning}", file=sys.stderr)
    return 0


def cmd_replica(args: argparse.Namespace) -> int:
    if _external_target(args) is not None:
        raise _local_only("replica")
    cluster = _cluster(args)
    if args.action == "remove":
        if args.upstream is not None:
            raise WorkbookError("--upstream goes with 'workbook replica add'; 'remove' takes only a replica's name")
        cluster.remove_replica(args.name)
    else:
        cluster.add_replica(args.name, upstream=args.upstream)
    _print_status(cluster.status(), False, "local")
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    from .cluster.drill import check_drill_args, failover_drill

    if _external_target(args) is not None:
        raise WorkbookError(
            "'workbook drill failover' kills the primary with kill -9 and promotes a replica, which needs the local "
            "cluster; drop --dsn (or unset WORKBOOK_DSN) and start replicas with 'workbook up --replicas 2'"
        )
    check_drill_args(args.sync, args.writers, args.duration)
    result = failover_drill(_cluster(args), sync=args.sync, writers=args.writers, duration_s=args.duration)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    print(result.describe())
    print(f"how the replicas fell behind: {result.how_behind}")
    if result.lost_ids:
        more = ", ..." if result.lost > len(result.lost_ids) else ""
        print(f"lost ids: {', '.join(map(str, result.lost_ids[:10]))}{more}")
    print(f"the cluster has {result.replicas_after} replica(s) again; 'workbook status' shows them")
    return 0


def cmd_psql(args: argparse.Namespace) -> int:
    from .cluster.target import dsn_params

    if not args.node.strip():
        raise WorkbookError("--node needs a node name, e.g. --node primary or --node replica1 (see 'workbook status')")
    target = _external_target(args)
    if target is None:
        cluster = _cluster(args)
        dsn = cluster.dsn(None if args.node == "primary" else args.node)  # an unknown name is refused here
        nodes = cluster.status()
        node = nodes[0] if args.node == "primary" else next(n for n in nodes if n.name == args.node)
        if node.pid is None:
            raise WorkbookError(f"node {node.name!r} is down; start the cluster with 'workbook up'")
        psql = _psql_binary(cluster.bins.bindir)
    else:
        dsn = target.endpoint(args.node).dsn
        from .cluster import PgBinaries

        psql = _psql_binary(PgBinaries.locate().bindir)
    params = dsn_params(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = password  # never on the command line (ps shows it)
    if target is not None and not target.allow_writes:
        env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " -c default_transaction_read_only=on").strip()
    from psycopg.conninfo import make_conninfo

    extra = [a for a in args.psql_args if a != "--"]
    argv = [psql, make_conninfo(**params), *extra]
    sys.stdout.flush()
    os.execve(psql, argv, env)
    return 0  # not reached


def _psql_binary(bundled: Path) -> str:
    """The bundled psql (built without readline: no line editing), or ``WORKBOOK_PSQL``."""
    return config.psql() or str(bundled / "psql")


def cmd_lab(args: argparse.Namespace) -> int:
    # everything that can fail is checked before the cluster starts
    jupyter = shutil.which("jupyter")
    if jupyter is None:
        raise WorkbookError("jupyter is not installed in this environment; python -m pip install jupyterlab")
    folder = _notebooks_folder(args.notebooks)
    env = dict(os.environ)  # what the notebooks' kernels attach to
    target = _external_target(args)
    if target is not None:
        env["WORKBOOK_DSN"] = args.dsn
        env["WORKBOOK_REPLICA_DSNS"] = " ".join(e.dsn for e in target.replicas)
        env["WORKBOOK_ALLOW_WRITES"] = "1" if args.allow_writes else "0"
    else:
        cluster = _cluster(args)
        nodes = cluster.up(replicas=args.replicas)
        _print_status(nodes, False, "local")
        env["WORKBOOK_HOME"] = str(cluster.home)
    argv = [jupyter, "lab", f"--ServerApp.root_dir={folder}", "--ServerApp.ip=127.0.0.1"]
    if args.no_browser:
        argv.append("--no-browser")
    if os.geteuid() == 0:  # containers and CI run as root; JupyterLab refuses that unless told
        argv.append("--allow-root")
    if args.lab_port:
        argv.append(f"--port={args.lab_port}")
    sys.stdout.flush()
    os.execve(jupyter, argv, env)
    return 0


def _notebooks_folder(given: str | None) -> Path:
    """The folder ``workbook lab`` opens: ``--notebooks``; the repository's ``notebooks/`` when run in
    the repository; else ``./workbook-notebooks``, a copy of the workbook's notebooks made on the
    first run and then left alone (files added once when missing, the user's edits never overwritten)."""
    if given is not None:
        folder = Path(given).expanduser().absolute()
        if not folder.is_dir():
            raise WorkbookError(f"no notebooks folder at {str(folder)!r}; pass an existing folder to --notebooks")
        return folder
    from .dataset.paths import notebooks_dir

    here = Path("notebooks").absolute()
    if (here / "00_start_here.ipynb").is_file():  # run in the repository (or a copy of it)
        return here
    shipped = notebooks_dir()
    copy = Path(NOTEBOOK_COPY).absolute()
    if copy.exists() and not copy.is_dir():
        raise WorkbookError(f"{str(copy)!r} is a file; move it away, or pass --notebooks DIR")
    missing = [f for f in sorted(shipped.iterdir()) if f.is_file() and f.name != "_build.py"
               and not (copy / f.name).exists()]  # fmt: skip
    if missing:
        try:
            copy.mkdir(exist_ok=True)
            for f in missing:
                shutil.copy2(f, copy / f.name)
        except OSError as exc:
            raise WorkbookError(f"cannot copy the notebooks into {str(copy)!r}: {exc.strerror}; "
                                "run from a writable folder or pass --notebooks DIR") from None  # fmt: skip
        print(f"note: copied {len(missing)} notebook file(s) into {copy} (your edits there are kept; "
              "delete a file to get the original back)", file=sys.stderr)  # fmt: skip
    return copy


def cmd_load(args: argparse.Namespace) -> int:
    from .dataset import Generator, load

    scale = config.default_scale() if args.scale is None else args.scale
    generator = Generator(args.seed, scale)  # bad arguments are refused before any cluster starts
    info = load(_target(args), generator=generator, progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(info.as_dict(), indent=2))
        return 0
    print(f"loaded SF {info.scale:g} (seed {info.seed}): {sum(info.rows.values()):,} rows, "
          f"{info.bytes / 1e6:,.0f} MB in {info.load_seconds:.1f} s ({info.mb_per_second:.0f} MB/s)")
    for table, n in info.rows.items():
        print(f"  {table:15s} {n:>12,}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .traffic import run_load, sweep

    if args.slow_plans is not None:
        return _bench_capturing_slow_plans(args)

    counts: list[int] = []
    if args.sweep:
        try:
            counts = [int(x) for x in args.sweep.split(",")]
        except ValueError:
            raise WorkbookError(f"--sweep wants client counts like 1,2,4,8, got {args.sweep!r}") from None
    if args.duration <= 0 or args.duration > 3600:
        raise WorkbookError(f"--duration must be between 0 and 3600 seconds, got {args.duration:g}")
    if args.pool_size is not None and (isinstance(args.pool_size, bool) or args.pool_size < 1):
        raise WorkbookError(f"--pool-size must be a whole number >= 1, got {args.pool_size}")
    if args.pool == "sqlalchemy" and (counts or args.rate):
        raise WorkbookError("--pool sqlalchemy runs one closed-loop load: leave out --sweep and --rate")
    if args.pool == "pgbouncer" and args.driver == "python":
        raise WorkbookError("--pool pgbouncer drives PgBouncer with pgbench (-M extended): the Python driver "
                            "prepares statements, which PgBouncer 1.18's transaction pooling cannot carry; "
                            "leave out --driver python")  # fmt: skip
    target, store = _target(args), _store(args)
    if args.pool == "sqlalchemy":
        from .lessons.pooling import POOL_SIZE, sqlalchemy_engine

        got = sqlalchemy_engine(target, mix=args.mix, clients=args.clients, pool_size=args.pool_size or POOL_SIZE,
                                duration_s=args.duration)  # fmt: skip
        if args.json:
            print(json.dumps(got, indent=2, default=str))
        else:
            errors = ", ".join(f"{k} {v}" for k, v in got["errors"].items()) or "none"
            print(f"sqlalchemy engine (pool_size {got['pool_size']}, max_overflow 0), {args.clients} clients: "
                  f"{got['tps']:,.1f} TPS, p95 {got['p95_ms']} ms, errors: {errors}")  # fmt: skip
        return 0

    def progress(t: float, tps: float) -> None:
        if not args.json:
            print(f"\r{t:5.1f} s  {tps:>10,.0f} TPS", end="", file=sys.stderr, flush=True)

    common: dict[str, Any] = dict(duration_s=args.duration, route=args.route, driver=args.driver, progress=progress)
    if args.pool == "psycopg":
        common.update(driver="python", pool_size=args.pool_size or 50)
    elif args.pool == "pgbouncer":
        if target.kind != "local":
            raise WorkbookError("--pool pgbouncer runs the local cluster's PgBouncer; with --dsn, point --dsn at your pooler")
        cluster = _cluster(args)
        pooler = cluster.pooler_status()
        if pooler is None or pooler.state != "running" or (args.pool_size and args.pool_size != pooler.pool_size):
            cluster.add_pooler(args.pool_size)
        target = cluster.target().through_pooler()
        common.update(protocol="extended", allow_overload=True, monitor=False, route="primary")
    result: Any = sweep(target, args.mix, counts, **common) if counts else \
        run_load(target, args.mix, clients=args.clients, rate=args.rate, **common)  # fmt: skip
    result.save(store)
    if not args.json:
        print(file=sys.stderr)
        print(result.runs[-1].summary() if counts else result.summary())
        return 0
    print(json.dumps(result.as_dict(), indent=2, default=str))
    return 0


def _bench_capturing_slow_plans(args: argparse.Namespace) -> int:
    """``bench --slow-plans MS``: the same load inside an auto_explain capture; what it found on stderr."""
    from .experiment.slow_plans import capture_slow_plans, check_threshold

    threshold, args.slow_plans = check_threshold(args.slow_plans, "--slow-plans"), None
    with capture_slow_plans(_target(args), threshold_ms=threshold, store=_store(args), source="bench") as cap:
        code = cmd_bench(args)
    if cap.ran:
        print(f"slow plans: {sum(not p.internal for p in cap.plans)} statements slower than {threshold:g} ms captured "
              f"({cap.stored} new in the results store); see: workbook slow-plans", file=sys.stderr)  # fmt: skip
    else:
        print(f"slow plans: not captured: {cap.reason}", file=sys.stderr)
    return code


def cmd_slow_plans(args: argparse.Namespace) -> int:
    from .experiment.slow_plans import describe_plan, describe_stored

    if not 1 <= args.limit <= 1000:
        raise WorkbookError(f"--limit must be from 1 to 1000, not {args.limit}")
    frame = _store(args).slow_plans(latest=not args.all and args.plan is None)
    text, doc = describe_plan(frame, args.plan) if args.plan is not None else describe_stored(frame, args.limit)
    print(json.dumps(doc, indent=2, default=str) if args.json else text)
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    from .lessons import vectors

    target = _measuring_target(args)
    target.require_writes("the vector sweep (its indexes are built in rolled-back transactions)")
    figures = vectors.sweep_figures(target)
    print(json.dumps(figures, indent=2, default=str) if args.json else vectors.format_sweep(figures))
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    from .dataset.pristine import reset

    target = _external_target(args) or _cluster(args).target()
    result = reset(target)
    if args.json:
        print(json.dumps({"database": result.database, "seconds": result.seconds, "ended_sessions": result.ended_sessions}))
        return 0
    ended = f"; ended {result.ended_sessions} session(s) on it" if result.ended_sessions else ""
    print(f"reset {result.database} to the dataset as loaded in {result.seconds:.2f} s{ended}")
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    from .dataset import checksum, dataset_info, to_duckdb
    from .dataset.duck import check_duckdb_path
    from .dataset.loader import STAGING, stale_staging

    protected = _protected_dirs(args)
    if args.duckdb is not None:  # refused now, before anything is read
        check_duckdb_path(args.duckdb, force=args.force, protected=protected)
    target = _external_target(args) or _cluster(args).target()
    with target.connect() as conn:
        info = dataset_info(conn)
        stale = stale_staging(conn)
        leftover = (
            f"a killed load left the schema {STAGING} ({stale / 1e6:.1f} MB); the next `workbook load` removes it"
            if stale is not None
            else ""
        )
        if info is None:
            raise WorkbookError(
                "no dataset is loaded; run `workbook load` first" + (f" ({leftover})" if leftover else "")
            )
        out: dict[str, Any] = info.as_dict()
        from .leftovers import find_leftovers

        out["leftovers"] = [x.as_dict() for x in find_leftovers(conn)]
        if stale is not None:
            out["stale_staging_bytes"] = stale
        if args.checksum:
            out["checksum"] = checksum(conn).value
    out["pristine"] = _pristine(target)
    if args.duckdb:
        duck = to_duckdb(target, args.duckdb, force=args.force, protected=protected)
        duck.close()
        out["duckdb"] = str(args.duckdb)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"SF {info.scale:g}, seed {info.seed}, generator v{info.generator_version}, PostgreSQL {info.server_version}")
    for table, n in info.rows.items():
        print(f"  {table:15s} {n:>12,}")
    for key in ("checksum", "duckdb"):
        if key in out:
            print(f"{key}: {out[key]}")
    if leftover:
        print(f"note: {leftover}")
    if out["pristine"] is False:
        print("note: a workbook run wrote to the dataset since it was loaded; 'workbook reset' puts it back")
    for x in out["leftovers"]:
        print(f"note: {x['kind']} {x['schema']}.{x['name']} on {x['table']} was left behind by a killed run "
              f"({x['built_by']}); the next explain/compare/advise/report drops it on the local cluster")  # fmt: skip
    return 0


def _pristine(target: Any) -> bool | None:
    """Whether the dataset is as loaded (None when that cannot be told, e.g. no right to read it)."""
    from .dataset.pristine import is_pristine

    try:
        return is_pristine(target)
    except WorkbookError:
        return None


def _protected_dirs(args: argparse.Namespace) -> list[Path]:
    """Folders no output file may go into: the workbook home's secrets."""
    from .cluster import resolve_home

    return [resolve_home(args.home) / "secrets"]


def _store(args: argparse.Namespace) -> Any:
    from .cluster import resolve_home
    from .results import ResultsStore

    return ResultsStore(resolve_home(args.home))


def cmd_explain(args: argparse.Namespace) -> int:
    from .dataset import shape
    from .experiment import explain_shape, findings

    if args.plan_file is not None:
        return _explain_plan_file(args)
    qs = shape(args.shape)
    variant = qs.variant(args.variant)
    target = _measuring_target(args)
    with target.connect() as conn:
        plan, params = explain_shape(conn, qs, variant.name, tier=args.tier)
    found = findings(plan)
    if args.json:
        frame = plan.frame()
        out = {
            "shape": qs.name, "variant": variant.name, "tier": args.tier, "params": params,
            "plan_summary": plan.summary(), "execution_ms": plan.execution_ms, "planning_ms": plan.planning_ms,
            "cache": plan.cache_state, "scans": [list(x) for x in plan.scans()],
            "nodes": json.loads(frame.to_json(orient="records")), "findings": [f.as_dict() for f in found],
        }  # fmt: skip
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"{qs.name} ({variant.name}), {args.tier} tenant, params {params}")
    print(f"execution {plan.execution_ms:.3f} ms, planning {plan.planning_ms:.3f} ms, cache {plan.cache_state}")
    for n in plan.nodes:
        mis = f"  rows est {n.estimated_rows:,.0f} actual {n.actual_rows or 0:,.0f}"
        if n.misestimate and n.misestimate >= 10:
            mis += f" ({n.misestimate:.0f}x {n.misestimate_direction}estimate)"
        print(f"{'  ' * n.depth}-> {n.label}  [{n.exclusive_ms or 0:.3f} ms self]{mis}")
    for f in found:
        print(f"finding [{f.rule}]: {f.message}\n    try: {f.knob}")
    if len(variant.statements) > 1:
        print("(a per-row variant: the plan shown is its first statement's)")
    return 0


def _explain_plan_file(args: argparse.Namespace) -> int:
    """``explain --plan-file``: a pasted plan read offline, shown as a shape's plan is."""
    from .experiment import findings
    from .experiment.plan_text import describe, leads

    plan = _read_plan_file(args.plan_file)
    found = findings(plan)
    if args.json:
        frame = plan.frame()
        out = {
            "format": plan.notes[0].removeprefix("format: ").lower(), "notes": plan.notes, "analyzed": plan.analyzed,
            "plan_summary": plan.summary(), "execution_ms": plan.execution_ms, "planning_ms": plan.planning_ms,
            "total_cost": plan.total_cost, "cache": plan.cache_state, "scans": [list(x) for x in plan.scans()],
            "nodes": json.loads(frame.to_json(orient="records")), "findings": [f.as_dict() for f in found], **leads(plan),
        }  # fmt: skip
        print(json.dumps(out, indent=2, default=str))
        return 0
    print("\n".join(describe(plan)))
    for f in found:
        print(f"finding [{f.rule}]: {f.message}\n    try: {f.knob}")
    return 0


def _read_plan_file(name: str) -> Any:
    """A plan you bring, from a file or stdin (``-``)."""
    from .experiment.plan_text import read_plan

    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkbookError(f"cannot read --plan-file {name!r}: {getattr(exc, 'strerror', None) or exc}") from None
    return read_plan(text)


def cmd_compare(args: argparse.Namespace) -> int:
    from .dataset import load_indexes, shape
    from .experiment import Arm, Index, Setting, Variant, WhatIfIndex, compare

    qs = shape(args.shape)
    qs.variant(args.variant)
    catalog = load_indexes()
    knobs: list[Any] = []
    for name in args.index:
        if name not in catalog:
            raise WorkbookError(f"no candidate index {name!r}; known: {', '.join(catalog)}")
        knobs.append(Index(catalog[name]) if args.real else WhatIfIndex(catalog[name]))
    for pair in args.settings:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise WorkbookError(f"--set wants NAME=VALUE, got {pair!r}")
        knobs.append(Setting(key.strip(), value.strip()))
    if args.against:
        knobs.append(Variant(qs.variant(args.against).name))
    if not knobs:
        raise WorkbookError("nothing to compare: give --index NAME, --set NAME=VALUE or --against VARIANT")
    if args.repeats < 2:
        raise WorkbookError(f"--repeats must be at least 2, got {args.repeats}")
    target = _measuring_target(args)
    treatment = Arm(" + ".join(k.label for k in knobs), args.variant, tuple(knobs))
    result = compare(target, qs, treatment, Arm("baseline", args.variant), tier=args.tier, repeats=args.repeats,
                     store=_store(args))  # fmt: skip
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
        return 0
    print(result.summary())
    return 0


def _writable_file(path: Path) -> None:
    """Refuse an output path whose folder is missing or not writable, or that is a folder."""
    folder = path.expanduser().absolute().parent
    if path.is_dir():
        raise WorkbookError(f"--out {str(path)!r} is a folder; give a file name such as report.html")
    if not folder.is_dir():
        raise WorkbookError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise WorkbookError(f"cannot write {str(path)!r}: folder {str(folder)!r} is not writable")


def cmd_report(args: argparse.Namespace) -> int:
    from .dataset import Generator
    from .lab import main_job
    from .lessons import chosen

    if args.plan_file:  # plans you bring: their report, no server
        from .report import write_html
        from .report.pasted import render_plans

        _writable_file(Path(args.out))
        plans = [_read_plan_file(f) for f in args.plan_file]
        print(f"wrote {write_html(render_plans(plans), args.out)} ({len(plans)} plan(s))")
        return 0
    scale = config.default_scale() if args.scale is None else args.scale
    Generator(42, scale)  # a bad scale is refused before anything starts
    if args.repeats < 2:
        raise WorkbookError(f"--repeats must be at least 2, got {args.repeats}")
    chosen(args.lessons)  # an unknown lesson is refused before anything starts
    _writable_file(Path(args.out))  # refused now, not after the lessons have run
    target = _external_target(args)  # validates the DSN (redacted errors); None: the local cluster
    if target is not None:
        target.require_writes("the report's what-if experiments (all rolled back)")
    say = None if args.quiet or args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    path, phases, results = main_job(args.out, home=args.home, target=target, scale=scale,
                                     lessons=args.lessons, repeats=args.repeats, progress=say)  # fmt: skip
    if args.json:
        out = {"lessons": {r.name: r.as_dict() for r in results}, "out": str(path)}
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"wrote {path} ({', '.join(f'{k} {v:.1f} s' for k, v in phases.items())})")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from .experiment import advise

    if args.plan_file is not None:  # the query a plan you bring holds (refused before any server is touched)
        from .experiment.plan_text import advise_query

        args.sql = advise_query(_read_plan_file(args.plan_file))
    target = _measuring_target(args)
    if args.from_stats:
        return _advise_from_stats(target, args)
    advice = advise(target, args.sql, repeats=args.repeats, measure_write_cost=not args.no_write_cost)
    if args.json:
        print(json.dumps(advice.as_dict(), indent=2, default=str))
        return 0
    print(advice.reason)
    for c in advice.suggestions:
        if not c.verified:  # a read-only target: proposed from the plan, nothing built or timed
            print(f"  {c.ddl};\n      proposed for {c.why}; not measured (nothing can be built on a read-only target)")
            continue
        costs = [f"size {c.size_bytes or 0:,} B", f"build {c.build_seconds} s"]
        if c.write_ratio is not None:
            costs.append(f"writes x{c.write_ratio}")
        print(f"  {c.ddl};\n      {c.verdict}; {'; '.join(costs)}")
    for c in advice.rejected:
        print(f"  (dropped) {c.ddl}: {c.rejected_because}")
    return 0


def _advise_from_stats(target: Any, args: argparse.Namespace) -> int:
    from .experiment.workload import advise_from_stats

    if not 1 <= args.top <= 50:
        raise WorkbookError(f"--top must be from 1 to 50, not {args.top}")
    advice = advise_from_stats(target, top=args.top, repeats=args.repeats)
    if args.json:
        print(json.dumps(advice.as_dict(), indent=2, default=str))
        return 0
    print(advice)
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from .experiment.workload import top_statements

    if not 1 <= args.limit <= 1000:
        raise WorkbookError(f"--limit must be from 1 to 1000, not {args.limit}")
    frame = top_statements(_target(args), order=args.by, limit=args.limit)
    note = frame.attrs.get("hidden_note")
    if args.json:
        print(json.dumps({"by": args.by, "statements": frame.to_dict("records"), "hidden": frame.attrs.get("hidden", 0),
                          "hidden_ms": frame.attrs.get("hidden_ms", 0.0), "note": note}, indent=2, default=str))  # fmt: skip
        return 0
    if note:
        print(f"note: {note}", file=sys.stderr)
    if not len(frame):
        print("pg_stat_statements holds no application statement yet; run a workload (workbook bench) first")
    for r in frame.to_dict("records"):
        print(f"{r['calls']:>9,} calls {r['total_ms']:>11,.1f} ms total {r['mean_ms']:>9.3f} ms mean {r['rows']:>9,} rows"
              f"  {r['shape'] or '(not a catalog shape)'}\n          {' '.join(r['query'].split())[:110]}")  # fmt: skip
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from .experiment.health import health

    doc = health(_target(args))
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(f"cache hit ratio: {doc['cache_hit_ratio']}  (statistics since {doc['stats_since'] or 'the server started'})")
    print(f"unused indexes: {', '.join(i['schema'] + '.' + i['index'] for i in doc['unused_indexes']) or 'none'}")
    for o in doc["overlapping_indexes"]:
        print(f"  {o['redundant']} is {'a duplicate of' if o['duplicate'] else 'a prefix of'} {o['covered_by']} ({o['table']})")
    for t in doc["tables"][:10]:
        print(f"  {t['schema']}.{t['table']}: {t['dead']:,} dead ({t['dead_share']:.1%}); autovacuum in {t['autovacuum_lag']:,} more")
    for row in doc["io"][:8]:
        print(f"  io {row['backend_type']}/{row['object']}/{row['context']}: reads {row['reads']}, hits {row['hits']}, writes {row['writes']}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in doc["settings"].items()))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .cluster import resolve_home
    from .doctor import render, report

    doc = report(resolve_home(args.home))
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


COMMANDS = {
    "up": cmd_up,
    "status": cmd_status,
    "down": cmd_down,
    "promote": cmd_promote,
    "replica": cmd_replica,
    "drill": cmd_drill,
    "psql": cmd_psql,
    "lab": cmd_lab,
    "load": cmd_load,
    "dataset": cmd_dataset,
    "reset": cmd_reset,
    "bench": cmd_bench,
    "vectors": cmd_vectors,
    "explain": cmd_explain,
    "compare": cmd_compare,
    "advise": cmd_advise,
    "top": cmd_top,
    "health": cmd_health,
    "slow-plans": cmd_slow_plans,
    "report": cmd_report,
    "doctor": cmd_doctor,
}


def _check_utf8(argv: Sequence[str]) -> None:
    """Refuse arguments that are not valid UTF-8 (Python hands them over with surrogate escapes)."""
    for i, arg in enumerate(argv):
        if isinstance(arg, str) and any("\udc80" <= c <= "\udcff" for c in arg):
            before = argv[i - 1] if i and str(argv[i - 1]).startswith("-") else None
            where = f"the value of {before}" if before else f"argument {i + 1}"
            raise WorkbookError(f"{where} is not valid UTF-8; check the terminal's or the script's encoding")
    config.check_encoding()


def _check_args(args: argparse.Namespace) -> None:
    """Bounds on numbers and paths, checked before any command touches a server or a file."""
    from .cluster._local import check_home, check_port, resolve_home

    if args.home is not None or config.home() is not None:
        check_home(resolve_home(args.home))
    repeats = getattr(args, "repeats", None)
    low, high = REPEATS_RANGE
    if repeats is not None and not low <= repeats <= high:
        raise WorkbookError(f"--repeats must be from {low} to {high}, not {repeats}")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise WorkbookError(f"--seed must be from 0 to {SEED_MAX}, not {seed}")
    if getattr(args, "port", None) is not None:
        check_port(args.port)
    if getattr(args, "lab_port", None) is not None:
        check_port(args.lab_port, "--lab-port")


def _dsns(args: argparse.Namespace | None) -> list[str]:
    """Every DSN this run may have used (for redacting messages), the local cluster's included."""
    found: list[str] = []
    with contextlib.suppress(Exception):  # redaction must not fail: the error being reported matters
        found += [config.dsn() or "", *config.replica_dsns()]
    if args is not None:
        found += [args.dsn or "", *(args.replica_dsn or [])]
        from .cluster._local import LocalCluster

        with contextlib.suppress(Exception):  # redaction must not fail: the error being reported matters
            cluster = LocalCluster(args.home)
            if cluster.password_file.exists():
                found.append(f"password={cluster.password_file.read_text().strip()}")
    return [d for d in found if d]


def _server_error(exc: Exception, args: argparse.Namespace | None) -> str:
    """One line for a psycopg error that reached the top: what the server said, redacted, and what to do."""
    import psycopg

    from .cluster.target import redact_text

    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    message = redact_text(" ".join((lines[0] if lines else type(exc).__name__).split()), *_dsns(args))
    external = args is not None and bool(args.dsn)
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        hint = "is the server up? check the --dsn server" if external else "is the cluster up? run 'workbook up'"
        return f"the server connection failed: {message}; {hint}"
    return f"the server refused the command: {message}; check the arguments and try again"


def _is_psycopg_error(exc: BaseException) -> bool:
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.Error)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args: argparse.Namespace | None = None
    try:
        _check_utf8(argv)
        parser = _parser()
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "psql":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.psql_args = extra
        after = vars(args).pop(_REPLICA_DSN_AFTER, None)  # --replica-dsn after the command adds to those before
        if after:
            args.replica_dsn = [*(args.replica_dsn or []), *after]
        _check_args(args)
        # psycopg warns on stderr when it cannot tidy up after an error (e.g. ending a COPY on a lost
        # connection); the command reports the error itself, in one line
        logging.getLogger("psycopg").setLevel(logging.ERROR)
        # warnings the library logs (a failover that may have lost commits) are printed by the command
        logging.getLogger("workbook").addHandler(logging.NullHandler())
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
        return code
    except WorkbookError as exc:
        print(f"error: {_one_line(str(exc), args)}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `workbook dataset | head`: the reader went away; say nothing, as head's writers do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # what a shell shows for a writer ended by SIGPIPE
    except KeyboardInterrupt:
        # on its own line: after the terminal's ^C, or a progress line that ends in \r (also in a log file)
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_psycopg_error(exc):
            raise
        print(f"error: {_one_line(_server_error(exc, args), args)}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(message: str, args: argparse.Namespace | None) -> str:
    """A message on one line, with every password this run knows of redacted (a last safety net)."""
    from .cluster.target import redact_text

    return redact_text(" ".join(message.split()), *_dsns(args))


if __name__ == "__main__":
    sys.exit(main())
