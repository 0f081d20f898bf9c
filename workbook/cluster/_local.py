"""LocalCluster: an embedded PostgreSQL primary plus streaming read replicas under one home.

Layout of the home directory (``--home`` / ``WORKBOOK_HOME``, else ``./.workbook``, or, as root
when the server user cannot reach ``./.workbook``, a folder under /var/tmp: see :func:`resolve_home`)::

    cluster.json          topology: nodes (name, role, port, slot, upstream), sync-commit mode, binaries
    secrets/password      the superuser's generated password (0600, never printed)
    secrets/pgpass        the same password in .pgpass form (0600, the server user's): replicas
                          connect with ``passfile=``, so no password lands in a configuration
                          file or in a log (the server logs ``primary_conninfo`` when it changes)
    nodes/<name>/data     each node's data directory; nodes/<name>/postgres.log its log
    run/                  unix sockets (or a short path under /tmp when the home's path is too long)
    .lock                 serialises changes made by several processes (two notebooks, the CLI)

Everything is re-read from disk, so a new process (a restarted kernel, ``workbook down`` from a
shell) attaches to the running cluster rather than starting a second one. Every change is
all-or-nothing: a replica that fails to build leaves no directory, slot or state entry behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import pwd
import re
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .. import config
from ..errors import ClusterError, PortInUse, UnknownNode
from . import _cpu, _pooler
from ._binaries import PgBinaries
from ._node import BASE_SETTINGS, Node, free_port, port_is_free
from ._osuser import RunAs
from ._probe import (
    REPLAY_LAG_SQL,
    NodeStatus,
    parse_lsn,
    probe,
    replica_lag,
    replica_state,
)
from ._wait import wait_until
from .target import Endpoint, Target

SUPERUSER = "postgres"
DATABASE = "workbook"
# Below Linux's ephemeral range (32768-60999): a port from that range can be taken at any moment as
# the local end of some outgoing connection (or a kernel's ZMQ socket), and a cluster restarted
# later would then find its own port "in use". 54320 was in that range and collided once in CI.
DEFAULT_PORT = 25432
STATE_VERSION = 1

#: replicas one cluster may have at most (the primary's max_wal_senders and slots may allow fewer)
MAX_REPLICAS = 16
#: TCP ports a cluster may listen on (below 1024 needs privileges the server user does not have)
PORT_RANGE = (1024, 65535)
#: the primary's settings that bound how many replicas it can stream to
_CAPACITY = ("max_wal_senders", "max_replication_slots")

log = logging.getLogger("workbook.cluster")

SyncMode = Literal["off", "async", "remote_write", "on", "remote_apply"]
SYNC_MODES: tuple[str, ...] = ("off", "async", "remote_write", "on", "remote_apply")


#: where a home goes when the default one is out of the server user's reach (see resolve_home)
FALLBACK_ROOTS = (Path("/var/tmp"), Path("/tmp"))
#: times a freshly chosen port is replaced when another process takes it before the server binds it
PORT_ATTEMPTS = 20


def default_home() -> Path:
    """The home every command uses when none is given: see :func:`resolve_home`."""
    return resolve_home(None)


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The workbook home: ``home`` made absolute, else ``WORKBOOK_HOME``, else the default home.

    The default home is ``./.workbook``, with one exception every command shares: as root the
    server runs as an unprivileged user (see ``_osuser``), which cannot reach a folder under a
    private (0700) directory such as ``/root/...``. Then the default home is
    ``/var/tmp/workbook-<uid>-<hash of the working directory>`` (:func:`fallback_home`), so
    ``up``, ``status``, ``down``, ``lab``, ``report`` and ``open_lab()`` run from the same folder
    all find the same cluster. A cluster already in one of the two places is kept there. A home
    given explicitly is never replaced: an unreachable one is refused when the cluster is created.
    """
    if home is not None:
        if not str(home).strip():
            raise ClusterError("the workbook home is an empty path; give a folder, e.g. --home ./.workbook")
        return Path(home).expanduser().absolute()
    env = config.home()
    if env is not None:
        return env
    local = Path(".workbook").absolute()
    if os.geteuid() != 0:
        return local
    fallback = fallback_home(local.parent)
    if (local / "cluster.json").exists():
        return local
    if (fallback / "cluster.json").exists() or not server_user_can_reach(local):
        return fallback
    return local


def fallback_home(cwd: Path | None = None) -> Path:
    """``/var/tmp/workbook-<uid>-<12 hex digits of sha256(cwd)>``: the default home as root when
    ``./.workbook`` is out of the server user's reach (one per working directory)."""
    cwd = (cwd or Path.cwd()).absolute()
    digest = hashlib.sha256(str(cwd).encode()).hexdigest()[:12]
    root = next((r for r in FALLBACK_ROOTS if r.is_dir()), FALLBACK_ROOTS[-1])
    return root / f"workbook-{os.getuid()}-{digest}"


def server_user_can_reach(path: Path) -> bool:
    """Can the server's OS user traverse every existing directory on the way to ``path``?

    Read from the permission bits (no process is started and no user is created): a directory
    is traversable by that user when it owns it, is in its group, or "others" may search it.
    """
    try:
        entry = pwd.getpwnam(config.pg_user())
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:  # not created yet: only "others" bits count
        uid = gid = -1
    path = path.absolute()
    for d in [*reversed(path.parents), path]:
        try:
            st = os.stat(d)
        except FileNotFoundError:
            break  # made later by root, world-traversable (0755)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return True  # a file in the way: check_home reports that
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


def check_home(home: Path) -> None:
    """Refuse a home that is a file, or a folder (or, not made yet, a parent) this process cannot write."""
    if home.exists() or home.is_symlink():
        if not home.is_dir():
            raise ClusterError(f"the workbook home {str(home)!r} is a file, not a folder; choose another --home")
        if not os.access(home, os.W_OK | os.X_OK):
            raise ClusterError(f"the workbook home {str(home)!r} is not writable by this user; choose another --home")
        return
    parent = home.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ClusterError(
            f"cannot create the workbook home {str(home)!r}: {str(parent)!r} is a file, not a folder; "
            "choose another --home"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ClusterError(
            f"cannot create the workbook home {str(home)!r}: {str(parent)!r} is not writable by this user; "
            "choose another --home"
        )


def check_port(port: object, what: str = "--port") -> int:
    """``port`` if it is a whole number in 1024..65535; else a one-line ClusterError."""
    low, high = PORT_RANGE
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= high:
        raise ClusterError(f"{what} must be a TCP port from {low} to {high}, not {port!r}")
    return port


def check_timeout(timeout: object, what: str = "timeout") -> float:
    """``timeout`` if it is a finite number of seconds > 0; else a one-line ClusterError."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ClusterError(f"{what} must be a number of seconds > 0, not {timeout!r}")
    return float(timeout)


@dataclass(frozen=True)
class Failover:
    """What ``promote()`` found about the old primary: was it shut down cleanly, and what may be lost.

    ``lost_bytes`` is WAL the old primary had on disk that the promoted replica had not received
    (None: unknown); ``exact`` is False when it is only a lower bound.
    """

    old_primary: str
    new_primary: str
    clean_shutdown: bool | None  # None: could not tell
    old_state: str | None  # pg_controldata's "Database cluster state"
    lost_bytes: int | None
    exact: bool

    @property
    def warning(self) -> str | None:
        """One line for a failover that may have lost acknowledged commits; None after a clean shutdown."""
        if self.clean_shutdown:
            return None
        how = (f"was not shut down cleanly (state {self.old_state!r})" if self.old_state
               else "could not be checked for a clean shutdown")  # fmt: skip
        if self.lost_bytes is None:
            behind = "how much WAL it was behind is unknown"
        elif self.exact and self.lost_bytes == 0:
            behind = "it had received all the WAL on the old primary's disk (0 bytes behind)"
        elif self.exact:
            behind = f"it was {self.lost_bytes:,} bytes behind the WAL on the old primary's disk"
        else:
            behind = f"it was at least {self.lost_bytes:,} bytes behind the WAL on the old primary's disk"
        return (
            f"the old primary {self.old_primary!r} {how}: in async mode, commits it acknowledged may be "
            f"lost; {self.new_primary!r} was promoted, and {behind}"
        )


@dataclass
class NodeSpec:
    name: str
    role: str  # "primary" | "replica"
    port: int
    slot: str | None = None  # the replica's slot, on its upstream
    upstream: str | None = None  # a cascading replica's upstream replica; None: it streams from the primary


class LocalCluster:
    """A primary and zero or more streaming replicas, started from the embedded binaries."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        pg_bin: str | os.PathLike[str] | None = None,
        port: int | None = None,
        cpus_per_node: float | None = None,
    ) -> None:
        """``cpus_per_node``: give every node its own CPU budget (e.g. 0.5 core) at the next ``up()``,
        remembered in ``cluster.json``; 0 removes it; None keeps what the cluster has (see ``_cpu``)."""
        self.home = resolve_home(home)
        self._cpus = _cpu.check_cpus(cpus_per_node)
        #: the home is the root fallback for this working directory (said once, when the cluster is
        #: created; lab.py and others resolve the home first and pass it on, so judged by value)
        self._home_by_rule = os.geteuid() == 0 and self.home == fallback_home()
        self._pg_bin = pg_bin
        self._port_explicit = port is not None
        self._port = check_port(port) if port is not None else config.port()
        self.last_failover: Failover | None = None  # set by promote()
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._bins: PgBinaries | None = None
        self._run_as: RunAs | None = None

    def __repr__(self) -> str:
        return f"LocalCluster(home={str(self.home)!r})"

    # ---- files ---------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.home / "cluster.json"

    @property
    def password_file(self) -> Path:
        return self.home / "secrets" / "password"

    @property
    def passfile(self) -> Path:
        return self.home / "secrets" / "pgpass"

    @property
    def initialized(self) -> bool:
        return self.state_file.exists()

    def _load(self) -> dict[str, Any]:
        if self.home.exists() and not self.home.is_dir():
            check_home(self.home)
        try:
            state = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise ClusterError(
                f"no workbook cluster in {str(self.home)!r}; start one with 'workbook up'"
            ) from None
        except json.JSONDecodeError as exc:
            raise ClusterError(
                f"{str(self.state_file)!r} is corrupt ({exc}); 'workbook down --destroy' and start again"
            ) from None
        return state

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    def _specs(self, state: dict[str, Any] | None = None) -> list[NodeSpec]:
        state = state if state is not None else self._load()
        return [NodeSpec(**n) for n in state["nodes"]]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive, re-entrant (within this object) lock on the home directory."""
        if self._lock_depth == 0:
            check_home(self.home)
            try:
                self.home.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.home / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise ClusterError(
                    f"cannot use the workbook home {str(self.home)!r}: {exc.strerror}; choose another --home"
                ) from None
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    # ---- binaries, user, nodes -----------------------------------------------------------
    @property
    def run_as(self) -> RunAs:
        if self._run_as is None:
            self._run_as = RunAs.for_current_process()
        return self._run_as

    @property
    def bins(self) -> PgBinaries:
        if self._bins is None:
            pg_bin = self._pg_bin
            if pg_bin is None and self.initialized and config.pg_bin() is None:
                pg_bin = self._load().get("pg_bin_override")
            bins = PgBinaries.locate(pg_bin)
            if self.run_as.drops_privileges:
                bins = bins.readable_copy(self.home / "pg", self.run_as)
            self._bins = bins
        return self._bins

    def _socket_dir(self) -> Path:
        d = self.home / "run"
        if len(str(d / ".s.PGSQL.65535")) > 100:  # unix socket paths are limited to ~107 bytes
            digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
            d = Path("/tmp") / f"workbook-{os.getuid()}-{digest}"
        return d

    def _node(self, spec: NodeSpec) -> Node:
        return Node(
            name=spec.name, port=spec.port, root=self.home / "nodes" / spec.name,
            bins=self.bins, run_as=self.run_as, socket_dir=self._socket_dir(), after_start=self._after_start,
        )

    # ---- CPU budgets (see _cpu) ------------------------------------------------------------
    @property
    def cpus_per_node(self) -> float | None:
        """The CPU budget each node is given (cores), as remembered in ``cluster.json``; None: none."""
        return self._load().get("cpus_per_node") if self.initialized else None

    def _cpu_plan(self, state: dict[str, Any], also: str | None = None) -> _cpu.Plan:
        names = [n["name"] for n in state.get("nodes", [])]
        if also is not None and also not in names:
            names.append(also)  # a replica being built is not in the state yet
        return _cpu.plan(state.get("cpus_per_node"), names)

    def _after_start(self, node: Node, pid: int) -> None:
        """Every start of a node: put its postmaster and children in the node's CPU budget."""
        state = self._load() if self.initialized else {}
        if not state.get("cpus_per_node"):
            return  # a new postmaster is in no group of ours, with the caller's affinity
        _cpu.enforce(self._cpu_plan(state, node.name), self.home, node.name, pid)

    def _apply_cpu(self) -> list[tuple[str, str | None, str | None]]:
        """(Re)apply the budget to every running node (after the topology or the budget changed:
        affinity gives each node other cores); (node, how, why it is shared) for each."""
        state = self._load()
        p = self._cpu_plan(state)
        out: list[tuple[str, str | None, str | None]] = []
        for n in state["nodes"]:
            how, why = _cpu.enforce(p, self.home, n["name"], self._bare_node(n["name"]).pid)
            out.append((n["name"], how, why))
        if p.how != "cgroup":
            _cpu.release_all(self.home)
        return out

    def _spec(self, name: str, state: dict[str, Any] | None = None) -> NodeSpec:
        specs = self._specs(state)
        for s in specs:
            if s.name == name:
                return s
        raise UnknownNode(
            f"no node {name!r} in the cluster at {str(self.home)!r}; nodes: {', '.join(s.name for s in specs)} "
            "(see 'workbook status')"
        )

    def _primary_spec(self, state: dict[str, Any] | None = None) -> NodeSpec:
        return next(s for s in self._specs(state) if s.role == "primary")

    def _password(self) -> str:
        return self.password_file.read_text().strip()

    def _write_passfile(self) -> Path:
        """``secrets/pgpass`` (0600, the server user's), for replication connections to any node."""
        secrets_dir = self.run_as.make_dir(self.passfile.parent, 0o700)
        esc = self._password().replace("\\", "\\\\").replace(":", "\\:")
        text = "".join(f"{host}:*:*:{SUPERUSER}:{esc}\n" for host in ("127.0.0.1", "localhost"))
        tmp = secrets_dir / ".pgpass.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        self.run_as.give(tmp)
        tmp.replace(self.passfile)
        return self.passfile

    def dsn(self, node: str | None = None, *, dbname: str = DATABASE) -> str:
        """A DSN (with the password) for ``node`` (default: the current primary)."""
        spec = self._spec(node) if node else self._primary_spec()
        return self._dsn_of(spec, dbname=dbname)

    def _dsn_of(self, spec: NodeSpec, *, dbname: str = DATABASE) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(host="127.0.0.1", port=str(spec.port), user=SUPERUSER,
                             password=self._password(), dbname=dbname)

    def target(self) -> Target:
        """The cluster as a Target: primary + running replicas, writes allowed."""
        specs = self._specs()
        prim = next(s for s in specs if s.role == "primary")
        pooler = _pooler.entry(self)
        return Target(
            primary=Endpoint(prim.name, self.dsn(prim.name)),
            replicas=tuple(Endpoint(s.name, self.dsn(s.name)) for s in specs if s.role == "replica"),
            allow_writes=True,
            kind="local",
            pooler=Endpoint("pooler", _pooler.dsn(self, int(pooler["port"]))) if pooler else None,
        )

    def _connect(self, node: str | NodeSpec, *, dbname: str = DATABASE, timeout: int = 5) -> Any:
        import psycopg

        spec = node if isinstance(node, NodeSpec) else self._spec(node)
        return psycopg.connect(self._dsn_of(spec, dbname=dbname), autocommit=True, connect_timeout=timeout,
                               application_name="workbook-admin")

    # ---- lifecycle -----------------------------------------------------------------------
    def up(self, replicas: int | None = None, *, cpus_per_node: float | None = None, pooler: bool = False,
           pool_size: int | None = None) -> list[NodeStatus]:
        """Create the cluster if needed, start every node, heal broken replicas, and (if given)
        grow or shrink to ``replicas`` replicas. Safe to call again at any time.

        ``cpus_per_node`` (or the constructor's) sets each node's CPU budget and remembers it (0
        removes it); without it the cluster keeps the one it has. When this machine can enforce it
        neither with cgroup quotas nor with CPU affinity, one ``note:`` line on stderr says the
        nodes share the CPUs.

        ``pooler=True`` (or a ``pool_size``) also runs PgBouncer in front of the primary (see
        :meth:`add_pooler`); a cluster that has one restarts it when it is down."""
        if pool_size is not None:
            _pooler.check_pool_size(pool_size)
        if cpus_per_node is not None:
            self._cpus = _cpu.check_cpus(cpus_per_node)
        if replicas is not None:
            if isinstance(replicas, bool) or not isinstance(replicas, int):
                raise ClusterError(f"replica count must be a whole number, not {replicas!r}")
            if replicas < 0:
                raise ClusterError(f"replica count must be >= 0, not {replicas}")
            if replicas > MAX_REPLICAS:
                raise ClusterError(f"replica count must be at most {MAX_REPLICAS}, not {replicas}")
        check_home(self.home)
        if self.initialized and self._port_explicit:
            port = self._primary_spec().port
            if port != self._port:
                raise ClusterError(
                    f"the cluster in {str(self.home)!r} already listens on port {port}, not {self._port}; "
                    "leave out --port, or 'workbook down --destroy' to make a new cluster on another port"
                )
        if replicas is not None and not self.initialized:
            self._check_replica_capacity(replicas, {k: int(BASE_SETTINGS[k]) for k in _CAPACITY}, 0)
        home_existed = self.home.exists()
        try:
            nodes = self._up(replicas)
            if pooler or pool_size is not None:
                self.add_pooler(pool_size)
            else:
                _pooler.ensure(self)
            return nodes
        except BaseException:
            if not home_existed and not self.initialized:  # leave no trace of a failed first start
                shutil.rmtree(self.home, ignore_errors=True)
            raise

    def _up(self, replicas: int | None) -> list[NodeStatus]:
        with self._locked():
            if not self.initialized:
                self._create_primary()
            state = self._load()
            budget_changed = self._cpus is not None and state.get("cpus_per_node") != (self._cpus or None)
            if budget_changed:
                state["cpus_per_node"] = self._cpus or None
                self._save(state)
            prim = self._primary_spec(state)
            node = self._node(prim)
            if not node.exists:
                raise ClusterError(
                    f"the primary's data directory {str(node.datadir)!r} is missing; "
                    "'workbook down --destroy' then 'workbook up' to start afresh"
                )
            node.start()
            if replicas is not None:
                self._check_live_capacity(replicas)
            for spec in [s for s in self._specs(state) if s.role == "replica"]:
                self._heal_replica(spec)
            if replicas is not None:
                current = [s.name for s in self._specs() if s.role == "replica"]
                for _ in range(replicas - len(current)):
                    self.add_replica()
                for name in reversed(current[replicas:] if replicas < len(current) else []):
                    self.remove_replica(name)
            applied = self._apply_cpu() if budget_changed or self._load().get("cpus_per_node") else []
            shared = [why for _, how, why in applied if how == "shared"]
            if shared:
                cpus = self._load().get("cpus_per_node")
                print(
                    f"note: the nodes share this machine's {len(_cpu.available_cores())} CPU(s): each was to get "
                    f"{cpus:g} CPU, but {shared[0]}; adding replicas cannot raise throughput here",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
        return self.status()

    def _check_live_capacity(self, replicas: int) -> None:
        """Refuse ``replicas`` before building any, if the running primary cannot serve that many."""
        ours = {f"wb_{s.name}" for s in self._specs() if s.role == "replica"}
        with self._connect(self._primary_spec()) as conn:
            settings = {k: int(conn.execute("SELECT current_setting(%s)", (k,)).fetchone()[0]) for k in _CAPACITY}
            slots = [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall()]
        self._check_replica_capacity(replicas, settings, len([s for s in slots if s not in ours]))

    @staticmethod
    def _check_replica_capacity(replicas: int, settings: dict[str, int], foreign_slots: int) -> None:
        senders, slots = settings["max_wal_senders"], settings["max_replication_slots"]
        # each replica streams through one WAL sender and one slot; the one being built needs a
        # second sender while pg_basebackup copies the data directory
        most = max(0, min(MAX_REPLICAS, senders - 1, slots - foreign_slots))
        if replicas > most:
            raise ClusterError(
                f"the primary can serve at most {most} replica(s) (max_wal_senders={senders}, one more is needed "
                f"while a replica is built; max_replication_slots={slots}, {foreign_slots} taken by others), "
                f"not {replicas}; ask for fewer replicas"
            )

    def _create_primary(self) -> None:
        bins = self.bins  # validates binaries before anything is created
        if self._port is not None:
            port = self._port
            if not port_is_free(port):
                raise ClusterError(
                    f"port {port} on 127.0.0.1 is taken by another process; choose another with --port "
                    "(or WORKBOOK_PORT), or leave it out to pick a free one"
                )
        else:
            port = free_port(DEFAULT_PORT, set())
        created_home = not (self.home / "nodes").exists()
        try:
            self.run_as.make_dir(self.home / "nodes", 0o755)
            self.run_as.make_dir(self._socket_dir(), 0o755)
            if self.run_as.drops_privileges and not self.run_as.can_write(self.home / "nodes"):
                raise ClusterError(
                    f"running as root, the server runs as {self.run_as.name!r}, which cannot reach "
                    f"{str(self.home)!r} (a parent directory is not traversable by others); "
                    "choose a --home (WORKBOOK_HOME) under a world-traversable directory such as /var/tmp"
                )
            secrets_dir = self.home / "secrets"
            self.run_as.make_dir(secrets_dir, 0o700)  # the server user reads secrets/pgpass
            password = secrets.token_urlsafe(24)
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            spec = NodeSpec(name="primary", role="primary", port=port)
            node = self._node(spec)
            node.initdb(SUPERUSER, password)
            state = {
                "version": STATE_VERSION,
                "pg_version": bins.version,
                "pg_bin_override": str(self._pg_bin or config.pg_bin() or "") or None,
                "superuser": SUPERUSER,
                "database": DATABASE,
                "sync": {"mode": "async", "standbys": 0},
                "cpus_per_node": self._cpus or None,
                "nodes": [asdict(spec)],
            }
            self._save(state)

            def moved(new_port: int) -> None:
                state["nodes"] = [asdict(spec)]
                self._save(state)

            self._start_new(node, spec, fresh_port=self._port is None, on_move=moved)
            with self._connect(spec, dbname="postgres") as conn:
                from psycopg import sql

                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
            with self._connect(spec) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            if self._home_by_rule:
                print(
                    f"note: ./.workbook is out of reach of the server user {self.run_as.name!r} (a parent folder "
                    f"is private), so the cluster lives in {self.home}; every workbook command run from "
                    f"{Path.cwd()} finds it there (--home or WORKBOOK_HOME to choose another)",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
        except BaseException:
            node_root = self.home / "nodes" / "primary"
            if (node_root / "data").exists():
                self._bare_node("primary").kill()
            _cpu.release_all(self.home)
            shutil.rmtree(node_root, ignore_errors=True)
            self.state_file.unlink(missing_ok=True)
            if created_home:
                for p in ("nodes", "secrets", "run", "pg"):
                    shutil.rmtree(self.home / p, ignore_errors=True)
            raise

    def _start_new(self, node: Node, spec: NodeSpec, *, fresh_port: bool,
                   on_move: Callable[[int], None] | None = None, timeout: float = 60.0) -> None:  # fmt: skip
        """Start a node that was just made. When its port was chosen here (not named by the user)
        and another process takes it between choosing and binding, move to the next free port:
        ``spec``, the node's ``workbook.conf`` and (through ``on_move``) the state follow.
        A port the user named, or an existing node's, stays a :class:`PortInUse` error."""
        for attempt in range(PORT_ATTEMPTS):
            try:
                node.start(timeout=timeout)
                return
            except PortInUse:
                if not fresh_port or attempt == PORT_ATTEMPTS - 1:
                    raise
            taken = {s.port for s in self._specs()} if self.initialized else set()
            port = free_port(node.port + 1, taken | {node.port})
            log.info("port %d was taken before node %r could bind it; moving to %d", node.port, node.name, port)
            node.port = spec.port = port
            node.write_conf()
            if on_move is not None:
                on_move(port)

    def stop(self) -> None:
        """Stop every node (replicas first); data stays for the next ``up``.

        Works from the data directories alone: no binaries, no live Python parent needed, and a
        node missing from ``cluster.json`` (a crash between two steps) is stopped all the same.
        """
        if not self.home.exists():
            return
        with self._locked():
            _pooler.kill(self.home)  # found by its working directory, like the nodes' processes
            roots = sorted((self.home / "nodes").glob("*/data"))
            primary = self._primary_spec().name if self.initialized else None
            for datadir in sorted(roots, key=lambda d: d.parent.name == primary):
                self._bare_node(datadir.parent.name).stop()

    def _bare_node(self, name: str) -> Node:
        """A node handle good for stopping and inspecting (no binaries needed)."""
        return Node(name=name, port=0, root=self.home / "nodes" / name, bins=None,
                    run_as=self.run_as, socket_dir=self._socket_dir())

    def destroy(self) -> None:
        """Stop every node and delete the whole home directory (data, secrets, state)."""
        if not self.home.exists():
            return
        with self._locked():
            self.stop()
            _cpu.release_all(self.home)  # after stop(): every process has exited
            sock = self._socket_dir()
            if sock.parent == Path("/tmp"):
                shutil.rmtree(sock, ignore_errors=True)
            for child in list(self.home.iterdir()):
                if child.name == ".lock":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        with contextlib.suppress(OSError):
            (self.home / ".lock").unlink()
            self.home.rmdir()

    def pids(self) -> dict[str, list[int]]:
        """Every live process (postmaster and children) of every node, by node name."""
        from . import _procs

        out: dict[str, list[int]] = {}
        for datadir in sorted((self.home / "nodes").glob("*/data")):
            out[datadir.parent.name] = [p.pid for p in _procs.processes_in(datadir)]
        return out

    # ---- the pooler (see _pooler) ----------------------------------------------------------
    def add_pooler(self, pool_size: int | None = None, *, port: int | None = None) -> _pooler.PoolerStatus:
        """Run PgBouncer (transaction pooling, ``pool_size`` server connections, default 50) on
        127.0.0.1 in front of the primary, as the server's OS user; remembered in ``cluster.json``,
        stopped by ``stop()``/``destroy()``, restarted by ``up()``. Again: restarts it (new pool size)."""
        return _pooler.add(self, pool_size, port)

    def remove_pooler(self) -> None:
        """Stop PgBouncer and forget it (its folder and auth file are deleted)."""
        _pooler.remove(self)

    def pooler_status(self) -> _pooler.PoolerStatus | None:
        """The pooler's port, pool size, pid, state and SHOW POOLS counts; None: no pooler."""
        return _pooler.status(self, _pooler.entry(self))

    # ---- replicas ------------------------------------------------------------------------
    def add_replica(self, name: str | None = None, *, upstream: str | None = None,
                    timeout: float = 120.0) -> NodeStatus:  # fmt: skip
        """Add a streaming replica (pg_basebackup with its own slot, ``-R``) and wait until it streams.

        ``upstream``: the name of a replica to stream from instead of the primary (a cascading
        replica: the base backup is taken from that replica, and the slot lives there). It gets
        the primary's changes only after its upstream has them, so its lag is at least its
        upstream's; it takes no WAL sender of the primary's.

        With the name of an existing replica that is down or broken, heal it instead: restart it,
        or rebuild it from its upstream when its WAL is gone. Idempotent for a healthy replica.
        """
        check_timeout(timeout)
        with self._locked():
            state = self._load()
            names = {s.name for s in self._specs(state)}
            if upstream is not None:
                up_spec = self._spec(upstream, state)
                if up_spec.role != "replica":
                    raise ClusterError(
                        f"upstream {upstream!r} is the primary; leave out upstream to stream from it, or name a replica"
                    )
                if not self._bare_node(upstream).running:
                    raise ClusterError(f"upstream replica {upstream!r} is down; 'workbook up' first")
            if name is not None and name in names:
                spec = self._spec(name, state)
                if spec.role != "replica":
                    raise ClusterError(f"node {name!r} is the primary, not a replica")
                if upstream is not None and upstream != spec.upstream:
                    raise ClusterError(
                        f"replica {name!r} already exists and streams from {spec.upstream or 'the primary'!r}; "
                        "remove it first to make it stream from elsewhere"
                    )
                self._heal_replica(spec)
                return self._status_of(name)
            if name is None:
                i = 1
                while f"replica{i}" in names or (self.home / "nodes" / f"replica{i}").exists():
                    i += 1
                name = f"replica{i}"
            elif not name.replace("_", "").isalnum() or not name[0].isalpha() or len(name) > 40:
                raise ClusterError(f"bad replica name {name!r}: use letters, digits and '_' (e.g. 'replica3')")
            self._check_live_capacity(len([s for s in self._specs(state) if s.role == "replica"]) + 1)
            taken = {s.port for s in self._specs(state)}
            port = free_port(max(taken) + 1, taken)
            spec = NodeSpec(name=name, role="replica", port=port, slot=f"wb_{name}", upstream=upstream)
            self._build_replica(spec, timeout=timeout, fresh_port=True)
            state["nodes"].append(asdict(spec))
            self._save(state)
            if state.get("cpus_per_node"):
                self._apply_cpu()  # with affinity, one more node may mean other cores for each
        return self._status_of(name)

    def _build_replica(self, spec: NodeSpec, *, timeout: float, fresh_port: bool = False) -> None:
        """pg_basebackup a replica from its upstream (default the primary) and start it; ``fresh_port``:
        its port was just chosen (see _start_new)."""
        source = self._source(spec)
        node = self._node(spec)
        node.kill()
        shutil.rmtree(node.root, ignore_errors=True)
        self._drop_slot(spec.slot, source)
        try:
            self.run_as.make_dir(node.root)
            # the password from a passfile, not PGPASSWORD: -R writes the connection's options into
            # primary_conninfo, and so a password given directly would land in postgresql.auto.conf
            env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
            env.update(PGPASSFILE=str(self._write_passfile()), PGAPPNAME=spec.name)
            res = self.run_as.run(
                [
                    self.bins.exe("pg_basebackup"), "-h", "127.0.0.1", "-p", str(source.port),
                    "-U", SUPERUSER, "-D", str(node.datadir), "-R", "-X", "stream", "-c", "fast",
                    "-C", "-S", str(spec.slot), "--no-password",
                ],
                env=env, timeout=timeout,
            )
            if res.returncode != 0:
                raise ClusterError(
                    f"pg_basebackup for replica {spec.name!r} failed: {' '.join(res.stderr.split())[-300:]}"
                )
            node.write_conf()
            self._start_new(node, spec, fresh_port=fresh_port, timeout=timeout)
            self._wait_streaming(spec, timeout=timeout)
        except BaseException:
            node.kill()
            _cpu.release(self.home, spec.name)
            shutil.rmtree(node.root, ignore_errors=True)
            with contextlib.suppress(Exception):
                self._drop_slot(spec.slot, source)
            raise

    def _heal_replica(self, spec: NodeSpec) -> None:
        node = self._node(spec)
        if node.exists:
            try:
                node.start()
                self._wait_streaming(spec, timeout=30)
                return
            except ClusterError:
                node.kill()
        # unrecoverable (no data dir, WAL gone, cannot start): rebuild from the primary
        self._build_replica(spec, timeout=120)

    def _wait_streaming(self, spec: NodeSpec, *, timeout: float) -> None:
        def streaming() -> bool:
            with self._connect(spec, timeout=2) as conn:
                row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
                return bool(row and row[0] == "streaming")

        wait_until(streaming, timeout=timeout, what=f"replica {spec.name!r} to stream from the primary")

    def _source(self, spec: NodeSpec, state: dict[str, Any] | None = None) -> NodeSpec:
        """The node a replica streams from: its upstream replica, else the primary."""
        return self._spec(spec.upstream, state) if spec.upstream else self._primary_spec(state)

    def _drop_slot(self, slot: str | None, on: NodeSpec | None = None) -> None:
        """Drop ``slot`` on node ``on`` (default: the primary), if that node runs."""
        if not slot:
            return
        holder = on or self._primary_spec()
        if not self._bare_node(holder.name).running:
            return
        with self._connect(holder) as conn:
            for _ in range(50):  # a walsender may still hold the slot for a moment
                row = conn.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                ).fetchone()
                if row is None:
                    return
                if row[0] is None:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    return
                conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                time.sleep(0.05)
            raise ClusterError(f"replication slot {slot!r} stays in use; stop its replica first")

    def remove_replica(self, name: str | None = None) -> None:
        """Stop a replica, delete its data and drop its slot (default: the newest replica).

        Replicas that cascade from it are first pointed at its own upstream (the primary, for a
        replica that streams from the primary), through new slots there."""
        with self._locked():
            state = self._load()
            replicas = [s for s in self._specs(state) if s.role == "replica"]
            if not replicas:
                raise ClusterError("the cluster has no replica to remove")
            spec = self._spec(name, state) if name else replicas[-1]
            if spec.role != "replica":
                raise ClusterError(f"node {spec.name!r} is the primary; only replicas can be removed")
            sync = state.get("sync", {})
            children = [r for r in replicas if r.upstream == spec.name]
            direct = [r for r in replicas if r.name != spec.name and (r.upstream is None or (r in children and not spec.upstream))]
            remaining = len(direct)
            if sync.get("standbys", 0) > remaining:
                raise ClusterError(
                    f"synchronous commit waits for {sync['standbys']} standby(s); removing {spec.name!r} "
                    f"leaves {remaining} streaming from the primary, and writes would hang; set_sync_commit('async') first"
                )
            for child in children:  # re-pointed first: they keep streaming while their upstream goes
                child.upstream = spec.upstream
                for n in state["nodes"]:
                    if n["name"] == child.name:
                        n["upstream"] = spec.upstream
                self._save(state)
                self._follow(child, self._source(child, state))
            node = self._node(spec)
            node.stop()
            _cpu.release(self.home, spec.name)
            shutil.rmtree(node.root, ignore_errors=True)
            self._drop_slot(spec.slot, self._source(spec, state))
            state["nodes"] = [n for n in state["nodes"] if n["name"] != spec.name]
            self._save(state)
            if state.get("cpus_per_node"):
                self._apply_cpu()
            if sync.get("mode") in ("remote_write", "on", "remote_apply") and sync.get("standbys"):
                self._apply_sync(sync["mode"], sync["standbys"])

    def promote(self, name: str, *, timeout: float = 60.0) -> list[NodeStatus]:
        """Fail over to replica ``name``.

        The old primary is fenced (fast shutdown, which first ships its remaining WAL to the
        replicas) and dropped from the cluster with its data: it cannot rejoin without a rebuild,
        and ``add_replica()`` makes a new replica whenever you want one. ``name`` becomes the
        writable primary; the other replicas follow it on the new timeline through new slots.
        A cascading replica keeps its upstream (it follows the new timeline through it); one that
        cascaded from ``name`` now streams from the new primary, through the slot it had there.
        Synchronous commit returns to async on the new primary.

        If the old primary was not shut down cleanly (it had crashed, or would not stop), commits
        it acknowledged in async mode may be lost: ``last_failover`` says so, with how many bytes
        of WAL the promoted replica was behind when that can be known, and a warning is logged.
        """
        check_timeout(timeout)
        self.last_failover = None
        with self._locked():
            state = self._load()
            spec = self._spec(name, state)
            if spec.role != "replica":
                raise ClusterError(f"node {name!r} is already the primary")
            node = self._node(spec)
            if not node.running:
                raise ClusterError(f"replica {name!r} is down; 'workbook up' (or add_replica({name!r})) first")
            old = self._primary_spec(state)
            old_node = self._node(old)
            old_node.stop()  # also when its postmaster is gone already: its orphaned children are killed
            with self._connect(spec) as conn:
                received = conn.execute(
                    "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text").fetchone()
            failover = self._judge_failover(old_node, name, [parse_lsn(x) for x in received])
            with self._connect(spec) as conn:
                if conn.execute("SELECT pg_is_wal_replay_paused()").fetchone()[0]:
                    conn.execute("SELECT pg_wal_replay_resume()")
                ok = conn.execute("SELECT pg_promote(true, %s)", (max(1, int(timeout)),)).fetchone()[0]
                if not ok:
                    raise ClusterError(f"replica {name!r} did not finish promotion within {timeout:.0f}s")
                conn.execute("ALTER SYSTEM RESET primary_conninfo")
                conn.execute("ALTER SYSTEM RESET primary_slot_name")
                conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
                conn.execute("ALTER SYSTEM RESET synchronous_commit")
                conn.execute("SELECT pg_reload_conf()")
            self.last_failover = failover
            if failover.warning:
                log.warning(failover.warning)
            _cpu.release(self.home, old_node.name)
            shutil.rmtree(old_node.root, ignore_errors=True)
            was = (spec.upstream, spec.slot)  # a cascading replica promoted: its slot on its upstream goes
            spec.role, spec.slot, spec.upstream = "primary", None, None
            others = [s for s in self._specs(state) if s.role == "replica" and s.name != name]
            for other in others:
                if other.upstream == name:
                    other.upstream = None
            state["nodes"] = [asdict(spec)] + [asdict(s) for s in others]
            state["sync"] = {"mode": "async", "standbys": 0}
            self._save(state)
            for other in sorted(others, key=lambda s: s.upstream is not None):  # upstreams first
                self._follow(other, self._source(other, state))
            if was[0] is not None:
                self._drop_slot(was[1], self._spec(was[0], state))
            if state.get("cpus_per_node"):
                self._apply_cpu()
            if state.get(_pooler.STATE_KEY):
                _pooler.add(self)  # pointed at the new primary
        return self.status()

    def _controldata(self, node: Node) -> dict[str, str]:
        """pg_controldata of a stopped node's data directory ({} when it cannot be read)."""
        if not node.exists:
            return {}
        try:
            res = self.run_as.run([self.bins.exe("pg_controldata"), "-D", str(node.datadir)], timeout=30,
                                  env=dict(os.environ, LC_ALL="C"))  # fmt: skip
        except (OSError, ValueError):
            return {}
        if res.returncode != 0:
            return {}
        out: dict[str, str] = {}
        for line in res.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out

    def _judge_failover(self, old_node: Node, new: str, received: list[int | None]) -> Failover:
        """Was the (stopped) old primary shut down cleanly; if not, how far behind was ``new``."""
        control = self._controldata(old_node)
        state = control.get("Database cluster state")
        clean = None if state is None else state == "shut down"
        if clean:
            return Failover(old_node.name, new, True, state, 0, True)
        have = max((x for x in received if x is not None), default=None)
        if have is None:
            return Failover(old_node.name, new, clean, state, None, False)
        end = self._wal_end(old_node, control, have)
        # the old primary wrote at least up to its latest checkpoint record
        checkpoint = parse_lsn(control.get("Latest checkpoint location") or None)
        if end is not None and (checkpoint is None or end >= checkpoint):
            return Failover(old_node.name, new, clean, state, max(0, end - have), True)
        if checkpoint is not None and checkpoint > have:
            return Failover(old_node.name, new, clean, state, checkpoint - have, False)
        return Failover(old_node.name, new, clean, state, None, False)

    def _wal_end(self, old_node: Node, control: dict[str, str], start: int) -> int | None:
        """Where the valid WAL on the old primary's disk ends, read from ``start`` with pg_waldump."""
        tli = control.get("Latest checkpoint's TimeLineID")
        if not tli or not tli.isdigit():
            return None
        lsn = f"{start >> 32:X}/{start & 0xFFFFFFFF:X}"
        try:
            res = self.run_as.run(
                [self.bins.exe("pg_waldump"), "--quiet", "--path", str(old_node.datadir / "pg_wal"),
                 "--timeline", tli, "--start", lsn],
                timeout=60, env=dict(os.environ, LC_ALL="C"),
            )  # fmt: skip
        except (OSError, ValueError):
            return None
        text = res.stderr
        if "could not find a valid record after" in text:
            return start  # nothing valid past what the replica has
        if "error in WAL record" not in text:
            return None  # a missing segment, an unreadable file: unknown
        found = [parse_lsn(m) for m in re.findall(r"\b([0-9A-F]+/[0-9A-F]+)\b", text)]
        return max((x for x in found if x is not None), default=None)

    def _follow(self, replica: NodeSpec, source: NodeSpec) -> None:
        """Point a replica at ``source`` (a new primary, or its upstream replica) through a slot
        there (made if missing); rebuild it from there if it cannot follow."""
        import psycopg
        from psycopg import sql

        with self._connect(source) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (replica.slot,)).fetchone()
            if not exists:
                conn.execute("SELECT pg_create_physical_replication_slot(%s)", (replica.slot,))
        conninfo = psycopg.conninfo.make_conninfo(  # passfile, not password: the server logs this setting
            host="127.0.0.1", port=str(source.port), user=SUPERUSER, passfile=str(self._write_passfile()),
            application_name=replica.name,
        )
        node = self._node(replica)
        try:
            node.start()
            with self._connect(replica) as conn:
                conn.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(conninfo)))
                conn.execute(sql.SQL("ALTER SYSTEM SET primary_slot_name = {}").format(sql.Literal(replica.slot)))
                conn.execute("SELECT pg_reload_conf()")
            self._wait_streaming(replica, timeout=30)
        except ClusterError:
            self._build_replica(replica, timeout=120)

    # ---- replay and synchronous commit ---------------------------------------------------
    def _replica_names(self, name: str | None) -> list[str]:
        if name is not None:
            spec = self._spec(name)
            if spec.role != "replica":
                raise ClusterError(f"node {name!r} is the primary; replay pauses only on replicas")
            return [name]
        return [s.name for s in self._specs() if s.role == "replica"]

    def pause_replay(self, name: str | None = None) -> None:
        """Stop applying WAL on one replica (default: all). WAL is still received; lag grows."""
        for n in self._replica_names(name):
            with self._connect(n) as conn:
                conn.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self, name: str | None = None) -> None:
        for n in self._replica_names(name):
            with self._connect(n) as conn:
                conn.execute("SELECT pg_wal_replay_resume()")

    def set_sync_commit(self, mode: str, standbys: int = 1) -> None:
        """How commits wait for replicas.

        ``off`` (no wait even for the local WAL flush), ``async`` (local flush only, the default),
        or ``remote_write`` / ``on`` / ``remote_apply`` waiting for ``standbys`` replicas
        (``ANY n (...)``; ``remote_apply`` makes the commit visible on them before it returns).
        Only replicas that stream from the primary count: a cascading one confirms nothing to it.
        """
        if mode not in SYNC_MODES:
            raise ClusterError(f"unknown synchronous-commit mode {mode!r}; choose one of {', '.join(SYNC_MODES)}")
        with self._locked():
            state = self._load()
            n_rep = len([s for s in self._specs(state) if s.role == "replica" and not s.upstream])
            waits = mode in ("remote_write", "on", "remote_apply")
            if waits and not 1 <= standbys <= n_rep:
                raise ClusterError(
                    f"{mode!r} on {standbys} standby(s) needs that many replicas; the cluster has {n_rep} "
                    "streaming from the primary (add_replica() first)"
                )
            self._apply_sync(mode, standbys if waits else 0)
            state["sync"] = {"mode": mode, "standbys": standbys if waits else 0}
            self._save(state)

    def _apply_sync(self, mode: str, standbys: int) -> None:
        from psycopg import sql

        names = [s.name for s in self._specs() if s.role == "replica" and not s.upstream]
        standby_names: sql.Composable
        if standbys:
            standby_names = sql.SQL("ANY {} ({})").format(
                sql.SQL(str(int(standbys))), sql.SQL(", ").join(sql.Identifier(n) for n in names))
        else:
            standby_names = sql.SQL("")
        prim = self._primary_spec()
        with self._connect(prim.name) as conn:
            value = standby_names.as_string(conn)
            commit = {"async": "on"}.get(mode, mode)
            conn.execute(sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(value)))
            conn.execute(sql.SQL("ALTER SYSTEM SET synchronous_commit = {}").format(sql.Literal(commit)))
            conn.execute("SELECT pg_reload_conf()")

    def sync_commit(self) -> dict[str, Any]:
        return dict(self._load().get("sync", {"mode": "async", "standbys": 0}))

    # ---- observing -----------------------------------------------------------------------
    def status(self) -> list[NodeStatus]:
        """Each node's role, pid, port, state, replay lag (bytes, seconds) and CPU budget (read back
        from its cgroup and its postmaster's affinity)."""
        state = self._load()
        specs = self._specs(state)
        prim = next(s for s in specs if s.role == "primary")
        primary_lsn: int | None = None
        reported: dict[str, float] = {}
        out: list[NodeStatus] = []
        pnode = self._bare_node(prim.name)
        ppid = pnode.pid
        pstate = "down"
        if ppid is not None:
            try:
                with self._connect(prim, timeout=3) as conn:
                    primary_lsn = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
                    reported = dict(conn.execute(REPLAY_LAG_SQL).fetchall())
                pstate = "running"
            except Exception:
                pstate = "unreachable"
        out.append(NodeStatus(prim.name, "primary", ppid, prim.port, pstate, None, None))
        for spec in specs:
            if spec.role == "replica":
                out.append(replace(self._replica_status(spec, primary_lsn, reported.get(spec.name)),
                                   upstream=spec.upstream))  # fmt: skip
        return [replace(st, cpu_budget=self._cpu_budget(st, state.get("cpus_per_node"))) for st in out]

    def _cpu_budget(self, st: NodeStatus, configured: float | None) -> dict[str, Any] | None:
        budget = _cpu.read_budget(self.home, st.name, st.pid, configured)
        return None if budget is None else budget.as_dict()

    def _status_of(self, name: str) -> NodeStatus:
        return next(s for s in self.status() if s.name == name)

    def _replica_status(self, spec: NodeSpec, primary_lsn: int | None, reported: float | None) -> NodeStatus:
        node = self._bare_node(spec.name)
        pid = node.pid
        if pid is None:
            return NodeStatus(spec.name, "replica", None, spec.port, "down", None, None)
        try:
            with self._connect(spec, timeout=3) as conn:
                p = probe(conn)
        except Exception:
            return NodeStatus(spec.name, "replica", pid, spec.port, "unreachable", None, None)
        role = "replica" if p.in_recovery else "primary"
        lag_bytes, lag_seconds = replica_lag(p, primary_lsn, reported) if p.in_recovery else (None, None)
        return NodeStatus(spec.name, role, pid, spec.port, replica_state(p), lag_bytes, lag_seconds)

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until every running, unpaused replica has replayed the primary's current WAL."""
        check_timeout(timeout)
        prim = self._primary_spec()
        with self._connect(prim.name) as conn:
            target_lsn = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        for spec in self._specs():
            if spec.role != "replica" or not self._bare_node(spec.name).running:
                continue

            def caught_up(name: str = spec.name) -> bool:
                with self._connect(name, timeout=2) as c:
                    got = parse_lsn(c.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0])
                return got is not None and target_lsn is not None and got >= target_lsn

            wait_until(caught_up, timeout=timeout, what=f"replica {spec.name!r} to catch up")
