"""Time to a ready primary + 2 streaming replicas: LocalCluster against the raw steps.

Both sides use the same bundled binaries in the same run, interleaved, as the same OS user:

* ``workbook``: ``LocalCluster.up(replicas=2)`` from nothing (initdb, config, start, CREATE
  DATABASE + pg_stat_statements, two slotted ``pg_basebackup -R`` replicas, wait until both stream);
* ``raw``: ``initdb`` + ``pg_ctl -w start`` + 2 x (``pg_basebackup -R -X stream -c fast -C -S``
  + ``pg_ctl -w start``) by hand.

Then the same after loading ~1 GB into the primary (``pgbench -i``, not timed): the time to add
two replicas (workbook: ``up(replicas=2)``; raw: two base backups and starts).

    python benchmarks/cluster_start.py [--repeats 3] [--scale 68]

Prints each side's median and the ratio workbook/raw. Goal: ratio <= 1.5, empty < 10 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from _scratch import new_home_dir

from workbook.cluster import LocalCluster, PgBinaries
from workbook.cluster._node import free_port
from workbook.cluster._osuser import RunAs


class Raw:
    """The by-hand baseline: initdb, pg_ctl, pg_basebackup."""

    def __init__(self, root: Path, bins: PgBinaries, run_as: RunAs) -> None:
        self.root, self.bins, self.run_as = root, bins, run_as
        self.ports: list[int] = []
        self.dirs: list[Path] = []

    def _run(self, *args: str, env: dict[str, str] | None = None) -> None:
        res = self.run_as.run(list(args), env=env)
        if res.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {res.stderr}")

    def primary(self) -> None:
        port = free_port(56000, set())
        data = self.run_as.make_dir(self.root / "primary")
        pw = self.root / "pw"
        pw.write_text("bench\n")
        self.run_as.give(pw)
        self._run(self.bins.exe("initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pw}",
                  "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C")
        with open(data / "postgresql.conf", "a") as f:
            f.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{data}'\n"
                    "max_wal_senders = 10\nhot_standby = on\nshared_preload_libraries = 'pg_stat_statements'\n")
        self._run(self.bins.exe("pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "start")
        self.ports.append(port)
        self.dirs.append(data)

    def replica(self, i: int) -> None:
        port = free_port(self.ports[-1] + 1, set(self.ports))
        data = self.root / f"replica{i}"
        self.run_as.make_dir(data.parent)
        env = dict(os.environ, PGPASSWORD="bench")
        self._run(self.bins.exe("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.ports[0]), "-U", "postgres",
                  "-D", str(data), "-R", "-X", "stream", "-c", "fast", "-C", "-S", f"raw_{i}", env=env)
        with open(data / "postgresql.conf", "a") as f:
            f.write(f"port = {port}\nunix_socket_directories = '{data}'\n")
        self._run(self.bins.exe("pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "start")
        self.ports.append(port)
        self.dirs.append(data)

    def load(self, scale: int) -> None:
        self._run(self.bins.exe("pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p",
                  str(self.ports[0]), "-U", "postgres", "postgres", env=dict(os.environ, PGPASSWORD="bench"))

    def stop(self) -> None:
        for d in reversed(self.dirs):
            self.run_as.run([self.bins.exe("pg_ctl"), "-D", str(d), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


def _load_workbook(c: LocalCluster, scale: int) -> None:
    res = c.run_as.run(
        [c.bins.exe("pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p", str(c.status()[0].port),
         "-U", "postgres", "workbook"], env=dict(os.environ, PGPASSWORD=c.password_file.read_text().strip()))
    if res.returncode != 0:
        raise RuntimeError(res.stderr)


def _workbook_side(parent: Path, case: str, scale: int) -> tuple[float, float]:
    c = LocalCluster(parent / "home")
    try:
        _ = c.bins  # binaries located (and, as root, mirrored) outside the timed region
        mb = 0.0
        if case == "loaded":
            c.up()
            _load_workbook(c, scale)
            with c.target().connect() as conn:
                conn.execute("CHECKPOINT")
                mb = conn.execute("SELECT pg_database_size('workbook')").fetchone()[0] / 2**20
        os.sync()
        t0 = time.perf_counter()
        c.up(replicas=2)
        return time.perf_counter() - t0, mb
    finally:
        c.destroy()


def _raw_side(parent: Path, case: str, scale: int, bins: PgBinaries, run_as: RunAs) -> tuple[float, float]:
    raw_bins = bins.readable_copy(parent / "pg", run_as) if run_as.drops_privileges else bins
    r = Raw(parent / "raw", raw_bins, run_as)
    try:
        if case == "loaded":
            r.primary()
            r.load(scale)
            r.run_as.run([raw_bins.exe("psql"), "-h", "127.0.0.1", "-p", str(r.ports[0]), "-U", "postgres",
                          "-c", "CHECKPOINT", "postgres"], env=dict(os.environ, PGPASSWORD="bench"))
            os.sync()
            t0 = time.perf_counter()
        else:
            os.sync()
            t0 = time.perf_counter()
            r.primary()
        r.replica(1)
        r.replica(2)
        return time.perf_counter() - t0, 0.0
    finally:
        r.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=int, default=68, help="pgbench scale for the loaded case (68 ~ 1 GB)")
    ap.add_argument("--skip-loaded", action="store_true")
    a = ap.parse_args()
    run_as = RunAs.for_current_process()
    bins = PgBinaries.locate()
    times: dict[str, list[float]] = {k: [] for k in ("wb_empty", "raw_empty", "wb_loaded", "raw_loaded")}
    size_mb = 0.0
    cases = ["empty"] + ([] if a.skip_loaded else ["loaded"])
    for case in cases:  # all empty runs first: a 1 GB load's writeback must not land in them
        for rep in range(a.repeats):
            for side in (("wb", "raw") if rep % 2 == 0 else ("raw", "wb")):  # interleaved, alternating
                parent = new_home_dir()
                try:
                    if side == "wb":
                        took, mb = _workbook_side(parent, case, a.scale)
                    else:
                        took, mb = _raw_side(parent, case, a.scale, bins, run_as)
                    times[f"{side}_{case}"].append(took)
                    size_mb = mb or size_mb
                finally:
                    shutil.rmtree(parent, ignore_errors=True)
    print(f"PostgreSQL {bins.version} ({bins.source}), {os.cpu_count()} cores, repeats={a.repeats}")
    for case in ("empty", "loaded"):
        wb, raw = times[f"wb_{case}"], times[f"raw_{case}"]
        if not wb:
            continue
        label = "empty cluster" if case == "empty" else f"add 2 replicas to a {size_mb:,.0f} MB primary"
        mw, mr = statistics.median(wb), statistics.median(raw)
        print(f"{label:45s} workbook {mw:6.2f} s   raw steps {mr:6.2f} s   ratio {mw / mr:4.2f}x"
              f"   (workbook runs: {', '.join(f'{x:.2f}' for x in wb)}; raw: {', '.join(f'{x:.2f}' for x in raw)})")


if __name__ == "__main__":
    main()
