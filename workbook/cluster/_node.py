"""One PostgreSQL server: a data directory, its configuration, and its process.

The process side only (initdb, configure, start, stop, kill); what a node *is* in the cluster
(primary or replica, its slot) is decided by :mod:`._local`.

The postmaster is started directly (``postgres -D DATA``) in a session of its own rather than
through ``pg_ctl``: we get its exit status the moment it fails (a taken port, a bad setting), and
readiness is polled from ``postmaster.pid`` every 10 ms instead of ``pg_ctl -w``'s 100 ms. It
outlives the Python process that started it (a kernel restart must not stop the cluster);
``workbook down`` finds and stops it from the data directory alone.
"""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClusterError, PortInUse
from . import _procs
from ._binaries import PgBinaries
from ._osuser import RunAs
from ._wait import GiveUp, wait_until

CONF_FILE = "workbook.conf"

#: settings every node gets (a replica inherits them through pg_basebackup, then its own port/name)
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    # a dead replica's slot must not fill the disk: past this, the slot is invalidated and the
    # replica gets rebuilt by add_replica()/up()
    "max_slot_wal_keep_size": "4GB",
    "shared_preload_libraries": "pg_stat_statements",
    "track_io_timing": "on",
    "logging_collector": "off",
    "log_line_prefix": "%m [%p] %q%a ",
}


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(start: int, taken: set[int]) -> int:
    """The first free loopback port at or after ``start`` that is not in ``taken``."""
    for port in range(start, min(start + 2000, 65535)):
        if port not in taken and port_is_free(port):
            return port
    raise PortInUse(f"no free TCP port on 127.0.0.1 in {start}..{start + 2000}; pass --port")


def _quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass
class Node:
    """A data directory under ``<home>/nodes/<name>/`` and the server that serves it."""

    name: str
    port: int
    root: Path  # <home>/nodes/<name>
    bins: PgBinaries | None  # None: a handle only for stopping/inspecting
    run_as: RunAs
    socket_dir: Path
    #: called with the node and its postmaster's pid after every start (and when start() finds it
    #: running): the cluster gives the node its CPU budget there (see ``_cpu``)
    after_start: Callable[[Node, int], None] | None = None

    def _exe(self, name: str) -> str:
        if self.bins is None:
            raise ClusterError(f"internal: node {self.name!r} handle has no binaries")
        return self.bins.exe(name)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    @property
    def exists(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    # ---- creation ----------------------------------------------------------------------
    def initdb(self, superuser: str, password: str) -> None:
        self.run_as.make_dir(self.root)
        pwfile = self.root / ".pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        self.run_as.give(pwfile)
        try:
            res = self.run_as.run(
                [
                    self._exe("initdb"), "-D", str(self.datadir), "-U", superuser,
                    f"--pwfile={pwfile}", "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                    "--encoding=UTF8", "--locale=C",
                ],
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            raise ClusterError(f"initdb failed for node {self.name!r}: {_last_lines(res.stderr)}")
        hba = (
            "# written by workbook: loopback and unix socket only, scram passwords\n"
            "local   all          all                    scram-sha-256\n"
            "host    all          all    127.0.0.1/32    scram-sha-256\n"
            "local   replication  all                    scram-sha-256\n"
            "host    replication  all    127.0.0.1/32    scram-sha-256\n"
        )
        (self.datadir / "pg_hba.conf").write_text(hba)
        self.run_as.give(self.datadir / "pg_hba.conf")
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(f"\n# node settings written by workbook\ninclude_if_exists = '{CONF_FILE}'\n")
        self.write_conf()

    def write_conf(self) -> None:
        """(Re)write this node's own settings: base settings plus its port, socket and name."""
        settings = dict(BASE_SETTINGS)
        settings["port"] = str(self.port)
        settings["unix_socket_directories"] = str(self.socket_dir)
        settings["cluster_name"] = self.name  # also the replica's application_name upstream
        lines = ["# workbook node settings (rewritten by workbook; use ALTER SYSTEM for your own)"]
        for k, v in settings.items():
            lines.append(f"{k} = {_quote_conf(v)}")
        path = self.datadir / CONF_FILE
        path.write_text("\n".join(lines) + "\n")
        self.run_as.give(path)

    # ---- process -----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return _procs.postmaster_pid(self.datadir)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 60.0) -> int:
        """Start the server if it is not running; return the postmaster pid once it accepts connections."""
        pid = self.pid
        if pid is not None:
            self._started(pid)
            return pid
        if not self.exists:
            raise ClusterError(f"node {self.name!r} has no data directory at {str(self.datadir)!r}")
        # leftovers of a killed postmaster (children still attached to shared memory) block a start
        _procs.kill_all(self.datadir)
        (self.datadir / "postmaster.pid").unlink(missing_ok=True)
        if not port_is_free(self.port):
            raise PortInUse(
                f"port {self.port} on 127.0.0.1 (node {self.name!r}) is taken by another process; "
                f"stop that process, or 'workbook down --destroy' and 'workbook up --port N' for a new cluster"
            )
        self.logfile.touch(exist_ok=True)
        self.run_as.give(self.logfile)
        log_start = self.logfile.stat().st_size
        log = open(self.logfile, "ab")
        try:
            kw = self.run_as.process_kwargs()
            proc = subprocess.Popen(
                [self._exe("postgres"), "-D", str(self.datadir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=str(self.datadir), **kw,
            )
        finally:
            log.close()
        try:  # at once: what the postmaster forks from here on inherits its CPU budget
            self._started(proc.pid)
        except BaseException:
            self.kill()
            raise

        def ready() -> int | None:
            if proc.poll() is not None:
                raise _StartFailed()
            try:
                lines = (self.datadir / "postmaster.pid").read_text().splitlines()
            except OSError:
                return None
            if len(lines) >= 8 and lines[7].strip() == "ready" and int(lines[0]) == proc.pid:
                return proc.pid
            return None

        try:
            pid = wait_until(ready, timeout=timeout, what=f"node {self.name!r} to accept connections",
                             interval=0.005, max_interval=0.05)
        except _StartFailed:
            tail = _log_since(self.logfile, log_start)
            if "Address already in use" in tail:
                raise PortInUse(
                    f"port {self.port} on 127.0.0.1 (node {self.name!r}) is taken by another process; "
                    "stop that process or choose another port (workbook up --port N on a new home)"
                ) from None
            raise ClusterError(
                f"node {self.name!r} did not start (exit {proc.returncode}): {_last_lines(tail)}; "
                f"full log: {self.logfile}"
            ) from None
        except ClusterError:
            self.kill()
            raise
        self._started(pid)
        return pid

    def _started(self, pid: int) -> None:
        if self.after_start is not None:
            self.after_start(self, pid)

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (SIGINT); immediate (SIGQUIT) if that hangs; SIGKILL as the last resort."""
        pid = self.pid
        if pid is not None:
            for sig, share in ((signal.SIGINT, 0.8), (signal.SIGQUIT, 0.2)):
                if not _procs.send(pid, sig):
                    break
                try:
                    wait_until(lambda: not _procs.alive(pid), timeout=timeout * share,
                               what=f"node {self.name!r} to stop", interval=0.005, max_interval=0.05)
                    break
                except ClusterError:
                    continue
        _procs.kill_all(self.datadir)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its children."""
        _procs.kill_all(self.datadir)


class _StartFailed(GiveUp):
    pass


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, offset - 4096))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _last_lines(text: str, n: int = 3) -> str:
    wanted = [ln for ln in text.strip().splitlines() if any(k in ln for k in ("FATAL", "ERROR", "error", "PANIC"))]
    lines = (wanted or text.strip().splitlines())[-n:]
    return " | ".join(" ".join(ln.split()) for ln in lines) or "no output"
