"""The workbook against a cluster reached over a network, TLS required, replicas not its own.

A primary and two streaming replicas, each in its own network namespace with its own address
(tests/multihost.py), scram and ``hostssl`` only, the replicas made by ``pg_basebackup`` over the
network with ``verify-full``, one replica's link shaped by ``tc tbf``. The servers are Debian's
PostgreSQL 15 (the embedded server is built without TLS), which has no pgvector: the dataset loads
without its embeddings and the vector steps say they did not run. Everything goes through the CLI
by DSN only (``--dsn``, ``--replica-dsn``, ``sslmode=verify-full sslrootcert=CA``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO, catalog_snapshot, run_cli
from tests.multihost import MultiHost, can_run, our_links, our_namespaces, sweep_stale
from workbook.cluster import Target
from workbook.dataset.loader import NO_VECTORS
from workbook.errors import TargetError

SCALE = "0.01"


@pytest.fixture(scope="module")
def hosts() -> Iterator[MultiHost]:
    why = can_run()
    if why:
        pytest.skip(why)
    m = MultiHost(replicas=2)
    try:
        m.start()
        yield m
    finally:
        m.close()
        left = m.leftovers()
        assert not left, f"the multi-host fixture left {left}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workbook home (results store) of the CLI runs: nothing of a cluster lives there."""
    return tmp_path_factory.mktemp("wb-multihost-home")


def cli(hosts: MultiHost, home: Path, *args: str, replicas: bool = True, writes: bool = False,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``workbook`` by DSN only: the primary, the replicas, verify-full with the test's CA."""
    dsns = ["--dsn", hosts.dsn()]
    if replicas:
        for h in hosts.hosts[1:]:
            dsns += ["--replica-dsn", hosts.dsn(h.name)]
    res = run_cli("--home", str(home), *dsns, *(["--allow-writes"] if writes else []), *args, timeout=timeout)
    assert hosts.password not in res.stdout + res.stderr, "a password was printed"
    return res


def ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    return res


def commits(hosts: MultiHost, name: str) -> int:
    """Transactions committed in the dataset's database on host ``name`` (reads count too)."""
    with hosts.connect(name) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0])


def test_each_server_is_its_own_host_and_speaks_only_tls(hosts: MultiHost) -> None:
    addrs = set()
    for h in hosts.hosts:
        with hosts.connect(h.name) as conn:
            addr, ssl, version = conn.execute(
                "SELECT host(inet_server_addr()), s.ssl, s.version FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()"
            ).fetchone()  # type: ignore[misc]
            assert addr == h.addr and ssl is True and version.startswith("TLSv1.")
            addrs.add(addr)
    assert len(addrs) == 3 and not any(a.startswith("127.") for a in addrs)
    # the replicas stream from the primary over the network, through TLS
    with hosts.connect() as conn:
        rows = conn.execute(
            "SELECT r.application_name, host(r.client_addr), s.ssl FROM pg_stat_replication r"
            " JOIN pg_stat_ssl s ON s.pid = r.pid ORDER BY 1"
        ).fetchall()
    assert rows == [("replica1", hosts.host("replica1").addr, True), ("replica2", hosts.host("replica2").addr, True)]
    # the servers refuse plaintext (pg_hba has hostssl lines only), and verify-full checks the name
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(hosts.dsn(sslmode="disable"), connect_timeout=5)
    primary, other = hosts.host("primary").addr, hosts.host("replica1").addr
    wrong_name = hosts.dsn().replace(f"host={primary}", f"host={other} hostaddr={primary}")  # the primary, called replica1
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(wrong_name, connect_timeout=5)


def test_tls_options_and_plaintext_refusal(hosts: MultiHost, home: Path) -> None:
    # status shows each node's TLS as its server sees it
    doc = json.loads(ok(cli(hosts, home, "status", "--json")).stdout)
    assert [(n["name"], n["role"], n["tls"]["ssl"]) for n in doc["nodes"]] == [
        ("primary", "primary", True), ("replica1", "replica", True), ("replica2", "replica", True)]
    assert all(n["tls"]["version"].startswith("TLSv1.") and n["tls"]["cipher"] for n in doc["nodes"])
    table = ok(cli(hosts, home, "status")).stdout
    assert "TLS" in table.splitlines()[0] and table.count("TLSv1.") == 3
    # sslmode and the CA given apart from the DSN land in every endpoint's DSN (pgbench's env comes from it)
    t = Target.from_dsn(hosts.dsn(ca=False, sslmode="verify-full").replace(" sslmode=verify-full", ""),
                        [hosts.dsn("replica1", ca=False).replace(" sslmode=verify-full", "")],
                        sslmode="verify-full", sslrootcert=hosts.ca_file)  # fmt: skip
    assert all(f"sslrootcert={hosts.ca_file}" in e.dsn and "sslmode=verify-full" in e.dsn for e in t.endpoints)
    assert t.needs_tls and [n.tls["ssl"] for n in t.status()] == [True, True]  # type: ignore[index]
    from workbook.traffic.pgbench import libpq_env

    env = libpq_env(t, "replica1", "test")
    assert env["PGSSLMODE"] == "verify-full" and env["PGSSLROOTCERT"] == str(hosts.ca_file)
    # sslmode=disable toward a non-loopback host: refused up front, one line saying how
    res = run_cli("--home", str(home), "--dsn", hosts.dsn(sslmode="disable"), "status")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--allow-plaintext" in res.stderr, res.stderr
    # asked for: the client lets it through, and the server itself refuses (hostssl only)
    res = run_cli("--home", str(home), "--dsn", hosts.dsn(sslmode="disable"), "--allow-plaintext", "status")
    assert res.returncode == 2 and "accepts only TLS" in res.stderr, res.stderr
    # verify-full without the CA: a clear error, no traceback
    res = run_cli("--home", str(home), "--dsn", hosts.dsn(ca=False), "status")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "root certificate" in res.stderr


def test_a_server_without_tls_is_refused_unless_plaintext_is_allowed(hosts: MultiHost, home: Path) -> None:
    plain = hosts.add_plain_host()
    try:
        dsn = hosts.dsn(plain.name, sslmode="prefer", ca=False, dbname="postgres")  # libpq's default: TLS if offered
        with psycopg.connect(dsn, connect_timeout=5) as conn:  # libpq itself goes on in clear
            assert not conn.pgconn.ssl_in_use
        res = run_cli("--home", str(home), "--dsn", dsn, "status")
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert "is not encrypted" in res.stderr and "--allow-plaintext" in res.stderr and hosts.password not in res.stderr
        doc = json.loads(ok(run_cli("--home", str(home), "--dsn", dsn, "--allow-plaintext", "status", "--json")).stdout)
        assert doc["nodes"][0]["tls"] == {"ssl": False, "version": None, "cipher": None, "bits": None}
        res = run_cli("--home", str(home), "--dsn", hosts.dsn(plain.name, dbname="postgres"), "status")
        assert res.returncode == 2 and "server does not support SSL" in res.stderr  # verify-full: libpq refuses
    finally:
        hosts.remove_host(plain.name)
    assert not [n for n in our_namespaces(hosts.tag) if n.endswith("-plain")]


def test_load_by_dsn_without_pgvector_and_the_shaped_replica_lags(hosts: MultiHost, home: Path) -> None:
    hosts.shape("replica2", "8mbit")
    try:
        assert "tbf" in hosts.qdisc("replica2")
        res = ok(cli(hosts, home, "load", "--scale", SCALE, "--quiet", writes=True))
        assert res.stderr.count(NO_VECTORS) == 1, res.stderr  # said once
        nodes = {n["name"]: n for n in json.loads(ok(cli(hosts, home, "status", "--json")).stdout)["nodes"]}
        waited = hosts.wait_caught_up()
    finally:
        hosts.unshape("replica2")
    # the load's WAL (~7 MB) reaches replica2 at 1 MB/s: it is seconds behind when the load returns
    assert nodes["replica2"]["lag_bytes"] > 1_000_000, nodes
    assert nodes["replica1"]["lag_bytes"] < nodes["replica2"]["lag_bytes"] / 4, nodes
    assert waited > 0.5
    info = json.loads(ok(cli(hosts, home, "dataset", "--json")).stdout)
    assert info["vectors"] is False and info["rows"]["chunks"] > 0
    with hosts.connect() as conn:  # every chunk whole: the embedding was cut out, the other fields kept in place
        bad = conn.execute("SELECT count(*) FROM ai_app.chunks WHERE abs(token_count - greatest(1, octet_length(content) / 4.0)) > 0.5"
                           " OR chunk_index < 0 OR document_id IS NULL").fetchone()[0]  # type: ignore[index]
        assert bad == 0
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()[0] == 0  # type: ignore[index]


def test_a_read_only_session_changes_nothing(hosts: MultiHost, home: Path) -> None:
    def state() -> tuple[str, dict[str, list[tuple[object, ...]]]]:
        out = json.loads(ok(cli(hosts, home, "dataset", "--checksum", "--json")).stdout)
        with hosts.connect() as conn:
            return out["checksum"], catalog_snapshot(conn)

    before = state()
    explain = json.loads(ok(cli(hosts, home, "explain", "--shape", "conversation_latest_messages", "--json")).stdout)
    assert explain["execution_ms"] > 0 and explain["nodes"]
    cmp = json.loads(ok(cli(hosts, home, "compare", "--shape", "messages_by_model", "--set", "work_mem=64MB",
                            "--repeats", "5", "--json")).stdout)  # fmt: skip
    assert cmp["verdict"], cmp
    res = cli(hosts, home, "compare", "--shape", "messages_by_model", "--index", "messages_metadata_gin", "--repeats", "3")
    assert res.returncode == 2 and "read-only" in res.stderr, res.stderr
    adv = ok(cli(hosts, home, "advise", "--sql",
                 "SELECT * FROM ai_app.messages WHERE conversation_id = 5 ORDER BY created_at DESC LIMIT 20",
                 "--repeats", "3"))  # fmt: skip
    assert "read-only" in adv.stdout and "CREATE INDEX" in adv.stdout, adv.stdout
    reads_before = [commits(hosts, r) for r in ("replica1", "replica2")]
    bench = json.loads(ok(cli(hosts, home, "bench", "--mix", "read", "--route", "replicas", "--clients", "2",
                              "--duration", "3", "--json")).stdout)  # fmt: skip
    # pgbench (one that speaks TLS) sent every read to the replicas, none failed
    assert set(bench["by_node"]) == {"replica1", "replica2"} and bench["transactions"] > 50 and not bench["errors"], bench
    reads_after = [commits(hosts, r) for r in ("replica1", "replica2")]
    assert all(a - b > 20 for a, b in zip(reads_after, reads_before, strict=True)), (reads_before, reads_after)
    after = state()
    assert after[0] == before[0], "a read-only session changed the dataset"
    assert after[1] == before[1], f"a read-only session changed the catalog: {before[1]} -> {after[1]}"


def test_report_by_dsn_with_writes_allowed_skips_only_the_vector_steps(hosts: MultiHost, home: Path,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    with hosts.connect() as conn:
        catalog = catalog_snapshot(conn)
    out = tmp_path / "report.html"
    res = ok(cli(hosts, home, "report", "--lessons", "indexes,jsonb,planner,vectors,replicas", "--scale", SCALE,
                 "--repeats", "3", "--out", str(out), "--json", writes=True, timeout=300))  # fmt: skip
    lessons = json.loads(res.stdout)["lessons"]
    assert set(lessons) == {"indexes", "jsonb", "planner", "vectors", "replicas"}
    # the replicas lesson by DSN: lag and stale reads are measured on these replicas; what kills or
    # promotes nodes says it needs the local cluster
    rep = lessons["replicas"]["figures"]
    assert rep["max_lag_bytes_during_burst"] > 0 and rep["stale_reads_per_1000"]["lsn_wait"] == 0
    assert rep["stale_reads_per_1000"]["async"] > 0  # a read right after a write, on a replica a network hop away
    assert set(rep["not_run"]) == {"cascade", "failover_async", "failover_remote_apply"}
    assert all("needs the local cluster" in why for why in rep["not_run"].values())
    vec = lessons["vectors"]["figures"]
    assert vec["skipped"]["steps"] == ["exact_vs_approximate", "build_cost", "filtered_search", "hybrid_search"]
    assert vec["analytics_same_answers"] is True  # the columnar step needs no vectors: it ran
    assert "skipped" not in json.dumps(lessons["indexes"]) + json.dumps(lessons["planner"])
    text = out.read_text()
    assert "not run: the dataset has no embeddings" in text and hosts.password not in text
    with hosts.connect() as conn:
        assert catalog_snapshot(conn) == catalog, "the report's what-if experiments left something behind"
    res = cli(hosts, home, "vectors", writes=True)
    assert res.returncode == 2 and "the vector sweep cannot run" in res.stderr and res.stderr.count("\n") == 1, res.stderr


INNER = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.multihost import MultiHost

def test_fails_while_the_hosts_are_up(tmp_path):
    m = MultiHost(replicas=1)
    try:
        m.start()
        Path({record!r}).write_text(m.tag + " " + str(m.root) + " " + " ".join(map(str, m.pids)))
        assert False, "this test fails on purpose"
    finally:
        m.close()
"""


def test_torn_down_when_a_test_fails_and_swept_after_kill_9(tmp_path: Path) -> None:
    why = can_run()
    if why:
        pytest.skip(why)
    record = tmp_path / "record.txt"
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER.format(repo=str(REPO), record=str(record))))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=180, check=False)  # fmt: skip
    assert res.returncode == 1 and "this test fails on purpose" in res.stdout, res.stdout[-2000:]
    tag, root, *pids = record.read_text().split()
    assert len(pids) == 2
    assert not our_namespaces(tag) and not our_links(tag) and not Path(root).exists()
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    # killed outright, a run cannot clean up: the next one sweeps what it left
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from tests.multihost import MultiHost
        m = MultiHost(replicas=0).start()
        print(m.tag, m.root, *m.pids, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None
    tag, root, pid = holder.stdout.readline().split()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert our_namespaces(tag) and Path(root).exists() and Path(f"/proc/{pid}").exists()
    removed = sweep_stale()
    assert f"{tag}-primary" in " ".join(removed)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not our_namespaces(tag) and not our_links(tag) and not Path(root).exists()
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize(("dsn", "kw", "expect"), [
    ("host=10.1.2.3 dbname=x sslmode=disable", {}, "--allow-plaintext"),
    ("postgresql://u@db.example.com/x?sslmode=disable", {}, "--allow-plaintext"),
    ("host=10.1.2.3 dbname=x sslmode=require", {"sslmode": "verify-full"}, "keep one"),
    ("host=10.1.2.3 dbname=x", {"sslmode": "sometimes"}, "not one of"),
    ("host=10.1.2.3 dbname=x", {"sslrootcert": "/nonexistent/ca.crt"}, "does not exist"),
])  # fmt: skip
def test_tls_options_are_checked_before_connecting(dsn: str, kw: dict[str, str], expect: str) -> None:
    with pytest.raises(TargetError, match=expect):
        Target.from_dsn(dsn, **kw)  # type: ignore[arg-type]


def test_plaintext_is_fine_on_loopback_and_when_asked() -> None:
    assert not Target.from_dsn("host=127.0.0.1 dbname=x sslmode=disable").needs_tls
    assert not Target.from_dsn("host=/tmp dbname=x sslmode=disable").needs_tls
    t = Target.from_dsn("host=10.1.2.3 dbname=x sslmode=disable", allow_plaintext=True)
    assert t.allow_plaintext and not t.needs_tls
    assert Target.from_dsn("host=10.1.2.3 dbname=x").needs_tls  # a remote host: pgbench must speak TLS
