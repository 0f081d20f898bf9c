"""Streaming replication on the local cluster: real pg_basebackup replicas, real WAL."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from workbook.cluster import LocalCluster
from workbook.errors import ClusterError, UnknownNode

from .conftest import alive, run_cli


def _read_until(cluster: LocalCluster, node: str, sql: str, expected: object, deadline: float = 10.0) -> float:
    """Poll ``sql`` on ``node`` until it returns ``expected``; return how long that took."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < deadline:
        with psycopg.connect(cluster.dsn(node), autocommit=True) as conn:
            try:
                last = conn.execute(sql).fetchone()[0]
            except psycopg.errors.UndefinedTable:
                last = None
        if last == expected:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"{node} returned {last!r}, not {expected!r}, for {deadline}s")


def test_write_on_primary_is_readable_on_each_replica(replicated: LocalCluster) -> None:
    with replicated.target().connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS repl_check (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO repl_check SELECT g, 'row ' || g FROM generate_series(1, 5000) g")
        written = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
    for ep in replicated.target().replicas:
        _read_until(replicated, ep.name, "SELECT count(*) FROM repl_check", 5000, deadline=10)  # raises if not
        with psycopg.connect(ep.dsn, autocommit=True) as conn:
            replayed = conn.execute("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn)", (written,)).fetchone()[0]
        assert replayed >= 0, f"{ep.name} shows the rows, so it has replayed the WAL that wrote them"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            with psycopg.connect(ep.dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO repl_check VALUES (0, 'no')")


def test_status_reports_roles_ports_and_zero_lag_when_caught_up(replicated: LocalCluster) -> None:
    replicated.wait_caught_up()
    nodes = replicated.status()
    assert [n.role for n in nodes] == ["primary", "replica", "replica"]
    assert len({n.port for n in nodes}) == 3
    assert all(n.pid and n.pid > 0 for n in nodes)
    prim, *reps = nodes
    assert prim.state == "running"
    for r in reps:
        assert r.state == "streaming"
        assert r.lag_bytes == 0 and r.lag_seconds == 0.0


def test_pause_replay_grows_lag_and_resume_closes_it(replicated: LocalCluster) -> None:
    target = replicated.target()
    with target.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS lag_check (id bigint)")
    replicated.wait_caught_up()
    replicated.pause_replay("replica1")
    try:
        with target.connect() as conn:
            conn.execute("INSERT INTO lag_check SELECT generate_series(1, 20000)")
        time.sleep(0.3)
        first = {n.name: n for n in replicated.status()}
        with target.connect() as conn:
            conn.execute("INSERT INTO lag_check SELECT generate_series(1, 20000)")
        time.sleep(0.6)
        second = {n.name: n for n in replicated.status()}
        assert first["replica1"].state == second["replica1"].state == "paused"
        assert first["replica1"].lag_bytes > 0
        assert second["replica1"].lag_bytes > first["replica1"].lag_bytes
        assert second["replica1"].lag_seconds is not None
        assert second["replica1"].lag_seconds > first["replica1"].lag_seconds >= 0
        # the other replica kept replaying
        replicated_other = second["replica2"]
        assert replicated_other.state == "streaming"
        with psycopg.connect(replicated.dsn("replica1"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM lag_check").fetchone()[0] == 0
    finally:
        replicated.resume_replay("replica1")
    replicated.wait_caught_up(timeout=20)
    after = {n.name: n for n in replicated.status()}
    assert after["replica1"].state == "streaming" and after["replica1"].lag_bytes == 0
    _read_until(replicated, "replica1", "SELECT count(*) FROM lag_check", 40000, deadline=20)  # raises if not


def test_remote_apply_makes_commits_visible_on_replicas_before_returning(replicated: LocalCluster) -> None:
    target = replicated.target()
    with target.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS sync_check (id int)")
    replicated.set_sync_commit("remote_apply", standbys=2)
    try:
        assert replicated.sync_commit() == {"mode": "remote_apply", "standbys": 2}
        with target.connect() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "remote_apply"
            for i in range(20):
                conn.execute("INSERT INTO sync_check VALUES (%s)", (i,))
                for ep in target.replicas:  # no polling: already applied when COMMIT returned
                    with psycopg.connect(ep.dsn, autocommit=True) as rc:
                        assert rc.execute("SELECT count(*) FROM sync_check WHERE id = %s", (i,)).fetchone()[0] == 1
        # with a replica's replay paused, a commit that must wait for both cannot finish
        replicated.pause_replay("replica2")
        with target.connect() as conn:
            blocked = threading.Event()

            def cancel_later() -> None:
                time.sleep(1.0)
                blocked.set()
                conn.cancel_safe()

            t = threading.Thread(target=cancel_later)
            t.start()
            t0 = time.monotonic()
            conn.execute("INSERT INTO sync_check VALUES (-1)")  # commits locally, then waits (warning)
            waited = time.monotonic() - t0  # before the join: only a blocked commit takes this long
            t.join()
            assert blocked.is_set() and waited >= 0.9, f"the commit returned after {waited:.3f} s without waiting"
            assert conn.execute("SELECT count(*) FROM sync_check WHERE id = -1").fetchone()[0] == 1, "committed locally"
        with psycopg.connect(replicated.dsn("replica2"), autocommit=True) as rc:
            assert rc.execute("SELECT count(*) FROM sync_check WHERE id = -1").fetchone()[0] == 0, "not applied there"
    finally:
        replicated.resume_replay("replica2")
        replicated.set_sync_commit("async")
    with target.connect() as conn:
        assert conn.execute("SHOW synchronous_standby_names").fetchone()[0] == ""
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"


def test_sync_commit_rejects_impossible_settings(replicated: LocalCluster) -> None:
    with pytest.raises(ClusterError, match="needs that many replicas"):
        replicated.set_sync_commit("remote_apply", standbys=3)
    with pytest.raises(ClusterError, match="unknown synchronous-commit mode"):
        replicated.set_sync_commit("sometimes")
    assert replicated.sync_commit()["mode"] == "async"


def test_pause_on_unknown_or_primary_node_is_refused(replicated: LocalCluster) -> None:
    with pytest.raises(UnknownNode, match="nope"):
        replicated.pause_replay("nope")
    with pytest.raises(ClusterError, match="primary"):
        replicated.pause_replay("primary")


def test_replica_count_goes_0_2_1(cluster_factory) -> None:
    c = cluster_factory()
    assert [n.role for n in c.up()] == ["primary"]
    with c.target().connect() as conn:
        slots = conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0]
    assert slots == 0
    nodes = c.up(replicas=2)
    assert [(n.name, n.state) for n in nodes[1:]] == [("replica1", "streaming"), ("replica2", "streaming")]
    with c.target().connect() as conn:
        assert sorted(r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")) == [
            "wb_replica1", "wb_replica2"]
        assert conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0] == 2
    gone_dir = c.home / "nodes" / "replica2"
    gone_pids = c.pids()["replica2"]
    nodes = c.up(replicas=1)
    assert [n.name for n in nodes] == ["primary", "replica1"]
    assert not gone_dir.exists()
    assert not any(alive(p) for p in gone_pids)
    with c.target().connect() as conn:
        assert [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")] == ["wb_replica1"]
    assert len(c.target().replicas) == 1


def test_promote_turns_a_replica_writable_and_the_other_follows(cluster_factory) -> None:
    c = cluster_factory()
    c.up(replicas=2)
    with c.target().connect() as conn:
        conn.execute("CREATE TABLE failover (id int)")
        conn.execute("INSERT INTO failover VALUES (1)")
    c.wait_caught_up()
    old_primary_pids = c.pids()["primary"]
    with c.target().connect() as conn:
        old_timeline = int(conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0][:8], 16)
    nodes = c.promote("replica1")
    assert [(n.name, n.role) for n in nodes] == [("replica1", "primary"), ("replica2", "replica")]
    assert not any(alive(p) for p in old_primary_pids), "old primary must be fenced"
    assert not (c.home / "nodes" / "primary").exists()
    with psycopg.connect(c.dsn("replica1"), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        conn.execute("INSERT INTO failover VALUES (2)")
        timeline = int(conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0][:8], 16)
        assert timeline == old_timeline + 1, "a promotion starts a new timeline"
    assert c.target().primary.name == "replica1"
    _read_until(c, "replica2", "SELECT count(*) FROM failover", 2, deadline=30)  # follows the new timeline
    status = {n.name: n for n in c.status()}
    assert status["replica2"].state == "streaming"
    # the cluster keeps working: a new replica is built from the new primary
    added = c.add_replica()
    assert added.state == "streaming"
    _read_until(c, added.name, "SELECT count(*) FROM failover", 2)


def test_promote_unknown_or_primary_node_is_refused(replicated: LocalCluster) -> None:
    before = replicated.status()
    with pytest.raises(UnknownNode, match="no node 'replica9'"):
        replicated.promote("replica9")
    with pytest.raises(ClusterError, match="already the primary"):
        replicated.promote("primary")
    assert [(n.name, n.role) for n in replicated.status()] == [(n.name, n.role) for n in before]


def _slots(cluster: LocalCluster, node: str) -> dict[str, bool]:
    with psycopg.connect(cluster.dsn(node), autocommit=True) as conn:
        return dict(conn.execute("SELECT slot_name, active FROM pg_replication_slots").fetchall())


def _senders(cluster: LocalCluster, node: str) -> dict[str, int]:
    with psycopg.connect(cluster.dsn(node), autocommit=True) as conn:
        return dict(conn.execute("SELECT application_name, pid FROM pg_stat_replication").fetchall())


def test_cascading_replica_streams_through_its_upstream_and_goes_cleanly(replicated: LocalCluster) -> None:
    import os
    import signal

    c = replicated
    added = c.add_replica("cascade1", upstream="replica1")
    assert (added.state, added.upstream) == ("streaming", "replica1")
    assert _slots(c, "replica1") == {"wb_cascade1": True}, "its slot lives on its upstream"
    assert "wb_cascade1" not in _slots(c, "primary") and "cascade1" not in _senders(c, "primary")
    assert "cascade1" in _senders(c, "replica1")
    assert {n.name: n.upstream for n in c.status()} == {
        "primary": None, "replica1": None, "replica2": None, "cascade1": "replica1"}
    with c.target().connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS cascade_check (id int)")
        conn.execute("INSERT INTO cascade_check VALUES (1)")
    _read_until(c, "cascade1", "SELECT count(*) FROM cascade_check", 1)  # raises if it never arrives
    with pytest.raises(ClusterError, match="streaming from the primary"):
        c.set_sync_commit("remote_apply", standbys=3)  # a cascading replica confirms nothing to the primary

    # its lag is its upstream's and more: freeze the primary's WAL sender to replica1, write, compare
    sender = _senders(c, "primary")["replica1"]
    os.kill(sender, signal.SIGSTOP)
    try:
        with c.target().connect() as conn:
            conn.execute("INSERT INTO cascade_check SELECT generate_series(2, 20001)")
        _read_until(c, "replica2", "SELECT count(*) FROM cascade_check", 20001)  # the direct one has it all
        lag = {n.name: n for n in c.status()}
        assert lag["replica2"].lag_bytes == 0
        assert lag["replica1"].lag_bytes > 0
        assert lag["cascade1"].lag_bytes >= lag["replica1"].lag_bytes > 0
        assert lag["cascade1"].lag_seconds is not None
    finally:
        os.kill(sender, signal.SIGCONT)
    c.wait_caught_up(timeout=30)
    assert {n.name: n.lag_bytes for n in c.status()}["cascade1"] == 0

    pids = c.pids()["cascade1"]
    c.remove_replica("cascade1")
    assert _slots(c, "replica1") == {}, "removal drops its slot on the upstream"
    assert not (c.home / "nodes" / "cascade1").exists()
    assert not any(alive(p) for p in pids)
    assert [n.name for n in c.status()] == ["primary", "replica1", "replica2"]


def test_cascading_replica_heals_and_survives_promotion_of_its_upstream(cluster_factory) -> None:
    c = cluster_factory()
    c.up(replicas=1)
    with pytest.raises(ClusterError, match="is the primary"):
        c.add_replica(upstream="primary")
    with pytest.raises(UnknownNode):
        c.add_replica(upstream="nope")
    c.add_replica(upstream="replica1")  # replica2
    c._bare_node("replica2").kill()  # a crash: up() restarts it, still behind replica1
    nodes = {n.name: n for n in c.up()}
    assert (nodes["replica2"].state, nodes["replica2"].upstream) == ("streaming", "replica1")
    assert "replica2" in _senders(c, "replica1")
    c.promote("replica1")
    nodes = {n.name: n for n in c.status()}
    assert (nodes["replica2"].role, nodes["replica2"].state, nodes["replica2"].upstream) == ("replica", "streaming", None)
    assert _slots(c, "replica1") == {"wb_replica2": True}, "it streams from the new primary through the slot it had"
    with c.target().connect() as conn:
        conn.execute("CREATE TABLE after_promotion (id int)")
        conn.execute("INSERT INTO after_promotion VALUES (1)")
    _read_until(c, "replica2", "SELECT count(*) FROM after_promotion", 1, deadline=30)
    c.set_sync_commit("remote_apply", standbys=1)  # now a direct replica: it can confirm commits
    try:
        with c.target().connect() as conn:
            conn.execute("INSERT INTO after_promotion VALUES (2)")
    finally:
        c.set_sync_commit("async")


def test_cli_adds_a_cascading_replica_and_down_stops_it(cluster_factory) -> None:
    import json

    c = cluster_factory()
    c.up(replicas=1)
    res = run_cli("--home", str(c.home), "replica", "add", "--upstream", "replica1")
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert header.split()[-1] == "UPSTREAM" and rows[-1].split()[0] == "replica2" and rows[-1].split()[-1] == "replica1"
    res = run_cli("--home", str(c.home), "replica", "add", "--upstream", "nope")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no node 'nope'" in res.stderr
    res = run_cli("--home", str(c.home), "status", "--json")
    nodes = json.loads(res.stdout)["nodes"]
    assert [(n["name"], n["upstream"], n["state"]) for n in nodes] == [
        ("primary", None, "running"), ("replica1", None, "streaming"), ("replica2", "replica1", "streaming")]
    pids = [p for ps in c.pids().values() for p in ps]
    assert run_cli("--home", str(c.home), "down").returncode == 0
    assert not any(alive(p) for p in pids), "down stops the cascading replica too"
