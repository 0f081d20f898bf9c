"""Crashes, re-attaching, stopping: the cluster as a durable, reversible object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psycopg
import pytest

from workbook.cluster import LocalCluster, _ipc, _procs

from .conftest import alive, make_home, run_cli


def test_kill9_replica_is_reported_down_and_add_replica_heals_it(cluster_factory) -> None:
    c = cluster_factory()
    c.up(replicas=1)
    victim = c.pids()["replica1"]
    postmaster = next(n.pid for n in c.status() if n.name == "replica1")
    data = c.home / "nodes" / "replica1" / "data"
    shmid = int((data / "postmaster.pid").read_text().splitlines()[6].split()[1])
    segments = _procs.shm_segments(victim)
    assert segments and _ipc._sysv(shmid) is not None
    os.kill(postmaster, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(postmaster) and time.monotonic() < deadline:
        time.sleep(0.01)
    st = {n.name: n for n in c.status()}
    assert st["replica1"].state == "down" and st["replica1"].pid is None
    assert st["primary"].state == "running"
    with c.target().connect() as conn:  # the primary keeps working; the slot keeps the WAL
        conn.execute("CREATE TABLE while_down AS SELECT generate_series(1, 1000) AS id")
    healed = c.add_replica("replica1")
    assert healed.state == "streaming" and healed.pid not in (None, postmaster)
    time.sleep(0.2)
    assert not any(alive(p) for p in victim), "orphans of the killed replica must be gone"
    # its shared memory is gone too (healed in place, the server's own restart frees it; the promote test in
    # test_cli_hardening covers a data directory that is dropped)
    assert not [p for p in segments if p.exists()] and _ipc._sysv(shmid) is None
    c.wait_caught_up()
    with psycopg.connect(c.dsn("replica1"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM while_down").fetchone()[0] == 1000


def test_replica_with_lost_data_directory_is_rebuilt_by_up(cluster_factory) -> None:
    c = cluster_factory()
    c.up(replicas=1)
    node_dir = c.home / "nodes" / "replica1"
    os.kill(next(n.pid for n in c.status() if n.name == "replica1"), signal.SIGKILL)
    time.sleep(0.2)
    import shutil

    deadline = time.monotonic() + 10
    while _procs.processes_in(node_dir / "data") and time.monotonic() < deadline:
        time.sleep(0.02)
    # a lost disk takes postmaster.pid along, and after it nothing could free the shared memory: the test does
    assert any("System V segment" in r for r in _ipc.release(node_dir / "data"))
    shutil.rmtree(node_dir / "data")
    nodes = {n.name: n for n in c.up()}
    assert nodes["replica1"].state == "streaming"


def test_a_new_process_reattaches_after_the_starter_is_killed(cluster_factory) -> None:
    c = cluster_factory()
    script = textwrap.dedent(f"""
        import sys, time
        from workbook.cluster import LocalCluster
        LocalCluster({str(c.home)!r}).up(replicas=1)
        print("ready", flush=True)
        time.sleep(600)
    """)
    starter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout.readline().strip() == "ready"
        before = {n.name: n.pid for n in LocalCluster(c.home).status()}
        starter.kill()  # kill -9 of the Python process that started the cluster
        starter.wait(10)
    finally:
        if starter.poll() is None:
            starter.kill()
    time.sleep(0.2)
    again = LocalCluster(c.home)  # a fresh object, as a restarted kernel would make
    nodes = again.up()  # must attach, not start a second cluster
    assert {n.name: n.pid for n in nodes} == before
    assert all(alive(p) for p in before.values())
    with again.target().connect() as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_down_from_another_process_stops_every_node_and_up_restarts_them(cluster_factory) -> None:
    c = cluster_factory()
    c.up(replicas=2)
    with c.target().connect() as conn:
        conn.execute("CREATE TABLE survives AS SELECT 42 AS answer")
    c.wait_caught_up()
    pids = [p for ps in c.pids().values() for p in ps]
    assert len(pids) >= 3 * 5  # postmasters and their auxiliary processes
    res = run_cli("--home", str(c.home), "down")
    assert res.returncode == 0, res.stderr
    time.sleep(0.1)
    assert [p for p in pids if alive(p)] == []
    assert all(n.state == "down" for n in c.status())
    nodes = c.up()
    assert [n.state for n in nodes] == ["running", "streaming", "streaming"]
    assert _count(c, "replica2", "SELECT answer FROM survives") == 42


def _count(c: LocalCluster, node: str, sql: str) -> object:
    with psycopg.connect(c.dsn(node), autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]


def test_down_destroy_leaves_no_process_and_no_files(cluster_factory) -> None:
    c = cluster_factory()
    c.up(replicas=1)
    pids = [p for ps in c.pids().values() for p in ps]
    res = run_cli("--home", str(c.home), "down", "--destroy")
    assert res.returncode == 0, res.stderr
    assert [p for p in pids if alive(p)] == []
    assert not c.home.exists()


def test_a_node_killed_with_sigkill_leaves_no_shared_memory_behind(cluster_factory) -> None:
    from workbook.cluster._procs import shm_segments

    c = cluster_factory()
    c.up(replicas=0)
    shm = shm_segments(c.pids()["primary"])  # the postmaster's dynamic shared memory (/dev/shm/PostgreSQL.*)
    assert shm and all(f.exists() for f in shm), shm
    c._bare_node("primary").kill()  # SIGKILL: PostgreSQL itself would clean up only at its next start there
    assert not [f for f in shm if f.exists()]
    c.up(replicas=0)
    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_two_objects_on_one_home_share_one_cluster(cluster_factory) -> None:
    a = cluster_factory()
    a.up()
    b = LocalCluster(a.home)
    b.up(replicas=1)
    assert [n.name for n in a.status()] == ["primary", "replica1"]
    assert a.dsn() == b.dsn()


def test_password_file_is_private_and_auth_is_scram(cluster_factory) -> None:
    c = cluster_factory()
    c.up()
    assert oct(c.password_file.stat().st_mode & 0o777) == "0o600"
    assert oct((c.home / "secrets").stat().st_mode & 0o777) == "0o700"
    with c.target().connect() as conn:
        assert conn.execute("SHOW password_encryption").fetchone()[0] == "scram-sha-256"
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
        assert conn.execute("SHOW wal_level").fetchone()[0] == "replica"
        assert conn.execute("SHOW track_io_timing").fetchone()[0] == "on"
        assert "pg_stat_statements" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
        rules = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
        assert rules == [("scram-sha-256",)]
    state = json.loads(c.state_file.read_text())
    assert c.password_file.read_text().strip() not in json.dumps(state)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(c.dsn().replace(c.password_file.read_text().strip(), "wrong"))


def test_unix_socket_is_served(cluster_factory) -> None:
    c = cluster_factory()
    c.up()
    port = c.status()[0].port
    sockdir = c.home / "run"
    assert (sockdir / f".s.PGSQL.{port}").is_socket()
    pw = c.password_file.read_text().strip()
    with psycopg.connect(host=str(sockdir), port=port, user="postgres", password=pw, dbname="workbook") as conn:
        assert conn.execute("SELECT inet_server_addr()").fetchone()[0] is None  # not TCP


def test_home_that_the_server_user_cannot_reach_is_refused_cleanly() -> None:
    if os.geteuid() != 0:
        pytest.skip("not applicable: only root drops privileges to a system user")
    parent = make_home()
    parent.chmod(0o700)  # like /root: the unprivileged server user cannot traverse it
    try:
        res = run_cli("--home", str(parent / "home"), "up")
        assert res.returncode == 2
        assert res.stderr.count("\n") == 1 and "cannot reach" in res.stderr
        assert not (parent / "home").exists()
    finally:
        import shutil

        shutil.rmtree(parent, ignore_errors=True)


def test_the_dynamic_segments_a_control_segment_lists_are_read_per_version(tmp_path, monkeypatch) -> None:
    # dsm_control_header {magic, nitems, maxitems} then items from offset 16: handle, refcnt, [first_page, npages
    # since 14], impl_private, pinned; refcnt 0 is a free slot, and from 14 an odd handle lives in the main area
    import struct

    monkeypatch.setattr(_ipc, "SHM_PREFIX", str(tmp_path / "PostgreSQL."))
    items = [(100, 2), (101, 2), (200, 0), (300, 1)]
    for major, size in ((13, 24), (14, 40), (18, 40)):
        data = bytearray(struct.pack("=III", _ipc._DSM_CONTROL_MAGIC, len(items), 5) + bytes(4 + 5 * size))
        for i, (handle, refcnt) in enumerate(items):
            struct.pack_into("=II", data, 16 + i * size, handle, refcnt)
        (tmp_path / "PostgreSQL.7").write_bytes(bytes(data))
        listed = _ipc._listed(7, major, os.getuid())
        assert listed == ([100, 101, 300] if major < 14 else [100, 300]), (major, listed)
    (tmp_path / "PostgreSQL.7").write_bytes(struct.pack("=III", 0xDEAD, 1, 5))  # not a control segment
    assert _ipc._listed(7, 18, os.getuid()) == []
    assert _ipc._listed(7, 18, os.getuid() + 1) == [], "another user's file is never read as ours"
