"""PgBouncer as a managed part of the local cluster: transaction pooling in front of the primary.

Layout under the cluster's home::

    pooler/pgbouncer.ini   the configuration (rewritten at every start: the primary's port may move)
    pooler/userlist.txt    the auth file (0600, the server user's): the superuser's SCRAM secret,
                           read from pg_authid, never the password itself
    pooler/pgbouncer.log   its log (its stderr);  pooler/pgbouncer.pid its pid file

PgBouncer refuses to run as root, so it runs as the server's OS user (see ``_osuser``), in a
session of its own (a Ctrl-C in a notebook does not reach it), listening on 127.0.0.1 only, with
its working directory set to ``pooler/``: that is how :func:`kill` finds its processes even after
the Python process that started it was killed with SIGKILL (the same rule as the nodes, see
``_procs``). Its state (port, pool size) is the ``"pooler"`` entry of ``cluster.json``.

Pooling is per transaction (``pool_mode = transaction``): a server connection is lent to a client
for one transaction. PgBouncer reaches the server through its unix socket (the cluster's socket
directory), not loopback TCP: the pooler always sits beside the server here, and every transaction
crosses that hop twice, so TCP's kernel work on both ends is paid per transaction
(benchmarks/pooling.py: with 200 clients on 2 cores, ``--server-tcp`` measures the difference). PgBouncer before 1.21 keeps no track of prepared statements, so a client that
prepares statements (psycopg's default after 5 executions) must say ``prepare_threshold=None``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from ..errors import ClusterError
from . import _procs

if TYPE_CHECKING:
    from ._local import LocalCluster

#: where Debian puts it (not on a normal user's PATH)
CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer")
INSTALL_HINT = "install it: 'sudo apt-get install pgbouncer' (Debian/Ubuntu), 'brew install pgbouncer' (macOS)"
DEFAULT_POOL_SIZE = 50
DEFAULT_PORT_OFFSET = 1000  # the pooler's first candidate port: the primary's + 1000 (25432 -> 26432)
MAX_CLIENT_CONN = 1000
STATE_KEY = "pooler"


def find_pgbouncer() -> str | None:
    """The pgbouncer executable (``WORKBOOK_PGBOUNCER``, PATH, then Debian's /usr/sbin), or None."""
    env = os.environ.get("WORKBOOK_PGBOUNCER")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((c for c in CANDIDATES if os.access(c, os.X_OK)), None)


def require_pgbouncer() -> str:
    exe = find_pgbouncer()
    if exe is None:
        raise ClusterError(f"pgbouncer is not installed (looked on PATH and in {', '.join(CANDIDATES)}); {INSTALL_HINT}")
    return exe


def version(exe: str | None = None) -> str | None:
    """``"1.18.0"`` or None."""
    exe = exe or find_pgbouncer()
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return None
    first = out.split()
    return first[1] if len(first) > 1 and first[0].lower() == "pgbouncer" else None


@dataclass(frozen=True)
class PoolerStatus:
    """What ``workbook status`` shows of the pooler: where it listens, its pool, and SHOW POOLS."""

    port: int
    pool_size: int
    pid: int | None
    state: str  # "running" | "down" | "unreachable"
    clients_active: int | None = None
    clients_waiting: int | None = None
    servers_active: int | None = None
    servers_idle: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pooler_dir(home: Path) -> Path:
    return home / "pooler"


def processes(home: Path) -> list[psutil.Process]:
    """Live pgbouncer processes of this home (found by their working directory)."""
    d = pooler_dir(home)
    return _procs.processes_in(d) if d.is_dir() else []


def kill(home: Path, timeout: float = 10.0) -> None:
    """Stop every pgbouncer process of this home: SIGTERM (immediate shutdown), then SIGKILL."""
    procs = processes(home)
    if not procs:
        return
    for p in procs:
        _procs.send(p.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=min(3.0, timeout))
    for p in alive:
        _procs.send(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while processes(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p.pid for p in processes(home)]
    if left:
        raise ClusterError(f"pgbouncer processes {left} of {str(home)!r} survived SIGKILL")
    for p in procs:
        _procs.alive(p.pid)  # reap it if it was our child


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _write_private(path: Path, text: str, cluster: LocalCluster) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    cluster.run_as.give(tmp)
    tmp.replace(path)


def _config(primary_port: int, port: int, pool_size: int, user: str, dbname: str, server_host: str) -> str:
    """``server_host``: the server's unix socket directory (or 127.0.0.1 for loopback TCP)."""
    return "\n".join([
        "; written by workbook (workbook/cluster/_pooler.py) at every start; edits are lost",
        "[databases]",
        f"{dbname} = host={server_host} port={primary_port} dbname={dbname}",
        f"postgres = host={server_host} port={primary_port} dbname=postgres",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = scram-sha-256",
        "auth_file = userlist.txt",
        f"admin_users = {user}",
        f"stats_users = {user}",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        f"max_client_conn = {MAX_CLIENT_CONN}",
        "query_wait_timeout = 120",
        "pidfile = pgbouncer.pid",
        "log_connections = 0",
        "log_disconnections = 0",
        "application_name_add_host = 0",
        "ignore_startup_parameters = extra_float_digits",
        "",
    ])  # fmt: skip


def check_pool_size(pool_size: object) -> int:
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or not 1 <= pool_size <= 10_000:
        raise ClusterError(f"pool size must be a whole number from 1 to 10000, not {pool_size!r}")
    return pool_size


def start(cluster: LocalCluster, pool_size: int, port: int | None = None, *, timeout: float = 20.0,
          server_tcp: bool = False) -> dict[str, Any]:  # fmt: skip
    """(Re)start the pooler in front of the current primary; returns its state entry ``{port, pool_size}``.

    ``server_tcp``: reach the server over loopback TCP instead of its unix socket (only for
    measuring the difference: benchmarks/pooling.py). The caller holds the cluster's lock and saves
    the entry in ``cluster.json``.
    """
    from ._local import DATABASE, SUPERUSER
    from ._node import free_port

    exe = require_pgbouncer()
    check_pool_size(pool_size)
    home = cluster.home
    kill(home)
    prim = cluster._primary_spec()
    if port is None:
        taken = {s.port for s in cluster._specs()}
        port = free_port(prim.port + DEFAULT_PORT_OFFSET, taken)
    d = cluster.run_as.make_dir(pooler_dir(home), 0o700)
    with cluster._connect(prim) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (SUPERUSER,)).fetchone()
    secret = str(row[0]) if row and row[0] else ""
    if not secret.startswith("SCRAM-SHA-256$"):
        raise ClusterError(f"the superuser {SUPERUSER!r} has no SCRAM secret in pg_authid; set its password with "
                           "password_encryption = 'scram-sha-256'")  # fmt: skip
    _write_private(d / "userlist.txt", f"{_quote(SUPERUSER)} {_quote(secret)}\n", cluster)
    sock = str(cluster._socket_dir())
    plain = not any(c.isspace() or c in "'\"=;" for c in sock)  # a value pgbouncer's connstring reads as is
    server_host = sock if plain and not server_tcp else "127.0.0.1"
    _write_private(d / "pgbouncer.ini", _config(prim.port, port, pool_size, SUPERUSER, DATABASE, server_host), cluster)
    log_path = d / "pgbouncer.log"
    if not log_path.exists():
        _write_private(log_path, "", cluster)
    with open(log_path, "a") as out:
        proc = subprocess.Popen(  # noqa: S603 - a fixed program and our own config file
            [exe, "pgbouncer.ini"], cwd=d, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, **cluster.run_as.process_kwargs(),
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise ClusterError(f"pgbouncer exited at start (status {proc.returncode}): {' | '.join(tail)[:400]}")
        try:
            with connect(cluster, port, DATABASE, timeout=2) as conn:
                conn.execute("SELECT 1")
            break
        except Exception as exc:  # noqa: BLE001 - not listening yet
            if time.monotonic() > deadline:
                kill(home)
                raise ClusterError(f"pgbouncer did not accept connections on port {port} within {timeout:.0f}s "
                                   f"({' '.join(str(exc).split())[:200]}); see {str(log_path)!r}") from None  # fmt: skip
            time.sleep(0.1)
    return {"port": port, "pool_size": pool_size}


def connect(cluster: LocalCluster, port: int, dbname: str, *, timeout: int = 5, **kwargs: Any) -> Any:
    """A psycopg connection through the pooler (no prepared statements: PgBouncer < 1.21)."""
    import psycopg

    return psycopg.connect(dsn(cluster, port, dbname), autocommit=True, connect_timeout=timeout,
                           prepare_threshold=None, **kwargs)  # fmt: skip


def dsn(cluster: LocalCluster, port: int, dbname: str | None = None) -> str:
    from psycopg.conninfo import make_conninfo

    from ._local import DATABASE, SUPERUSER

    return make_conninfo(host="127.0.0.1", port=str(port), user=SUPERUSER, password=cluster._password(),
                         dbname=dbname or DATABASE)  # fmt: skip


def show_pools(cluster: LocalCluster, port: int) -> list[dict[str, Any]]:
    """PgBouncer's ``SHOW POOLS`` (admin console), one dict per (database, user)."""
    import psycopg

    with psycopg.connect(dsn(cluster, port, "pgbouncer"), autocommit=True, connect_timeout=3,
                         prepare_threshold=None) as conn:  # fmt: skip
        cur = conn.cursor()
        cur.execute("SHOW POOLS")  # the admin console speaks the simple protocol only
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, r, strict=False)) for r in cur.fetchall()]


def status(cluster: LocalCluster, entry: dict[str, Any] | None) -> PoolerStatus | None:
    """The pooler's state (None when the cluster has none)."""
    if not entry:
        return None
    port, size = int(entry["port"]), int(entry["pool_size"])
    procs = processes(cluster.home)
    if not procs:
        return PoolerStatus(port, size, None, "down")
    pid = min(p.pid for p in procs)
    try:
        from ._local import DATABASE

        pools = [p for p in show_pools(cluster, port) if p.get("database") == DATABASE]
    except Exception:  # noqa: BLE001 - a pooler that does not answer is shown as such
        return PoolerStatus(port, size, pid, "unreachable")
    total = {k: sum(int(p.get(k) or 0) for p in pools) for k in ("cl_active", "cl_waiting", "sv_active", "sv_idle")}
    return PoolerStatus(port, size, pid, "running", total["cl_active"], total["cl_waiting"], total["sv_active"],
                        total["sv_idle"])  # fmt: skip


def entry(cluster: LocalCluster) -> dict[str, Any] | None:
    """The pooler's entry in ``cluster.json`` (None: the cluster has no pooler)."""
    if not cluster.initialized:
        return None
    got = cluster._load().get(STATE_KEY)
    return dict(got) if got else None


def add(cluster: LocalCluster, pool_size: int | None = None, port: int | None = None, *,
        server_tcp: bool = False) -> PoolerStatus:  # fmt: skip
    """Start (or restart with a new pool size) the pooler and remember it in ``cluster.json``
    (``server_tcp``: see :func:`start`; not remembered, a later ``up`` uses the unix socket)."""
    from ._node import port_is_free

    if pool_size is not None:
        check_pool_size(pool_size)
    with cluster._locked():
        old = entry(cluster) or {}
        size = pool_size or int(old.get("pool_size") or DEFAULT_POOL_SIZE)
        if port is None and old.get("port"):
            kill(cluster.home)  # its own port is free again once it is stopped
            port = int(old["port"]) if port_is_free(int(old["port"])) else None
        new = start(cluster, size, port, server_tcp=server_tcp)
        state = cluster._load()
        state[STATE_KEY] = new
        cluster._save(state)
    got = status(cluster, new)
    assert got is not None
    return got


def ensure(cluster: LocalCluster) -> PoolerStatus | None:
    """At ``up``: start the pooler the cluster has (if any) when it is not running; refresh its config."""
    e = entry(cluster)
    if not e:
        return None
    if processes(cluster.home):
        return status(cluster, e)
    return add(cluster)


def remove(cluster: LocalCluster) -> None:
    """Stop the pooler and forget it (its folder, auth file included, is deleted)."""
    with cluster._locked():
        kill(cluster.home)
        if cluster.initialized:
            state = cluster._load()
            if state.pop(STATE_KEY, None) is not None:
                cluster._save(state)
        shutil.rmtree(pooler_dir(cluster.home), ignore_errors=True)
