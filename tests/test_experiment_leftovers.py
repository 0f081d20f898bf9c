"""A killed ``compare --real`` leaves an index; the next command finds it by its mark and drops it.

Real processes, real kill -9, the shared lab cluster: the index is observed in the catalog while
the run is alive, marked with its session; after the kill the next command says it dropped it,
the catalog is back as it was, and a comparison afterwards has the same verdict as a clean one.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from workbook.cluster import LocalCluster
from workbook.experiment import find_leftovers

from .conftest import catalog_snapshot, run_cli

SHAPE, INDEX = "audit_by_actor", "audit_actor_time"  # both arms fast: the kill lands while the index is in use


def _index_present(conn: Any) -> bool:
    return conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", (INDEX,)).fetchone()[0] == 1


def _compare(home: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "workbook", "--home", home, "compare", "--shape", SHAPE, "--index", INDEX, "--real", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("delay", [0.0, 0.2], ids=["as-the-index-appears", "while-timing"])
def test_kill_9_of_compare_real_then_next_command_drops_the_index(lab: LocalCluster, delay: float) -> None:
    target = lab.target()
    with target.connect() as conn:
        before = catalog_snapshot(conn)
        assert not _index_present(conn)
        proc = _compare(str(lab.home), "--repeats", "6000")
        try:
            _wait(lambda: _index_present(conn) or proc.poll() is not None, 60, "the real index to be built")
            assert proc.poll() is None, f"compare ended before it could be killed: {proc.communicate()}"
            live = find_leftovers(conn, include_live=True)
            assert [x.name for x in live] == [INDEX] and live[0].owner_alive, "the index is marked with its live session"
            assert find_leftovers(conn) == [], "an index in use is not a leftover"
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert _index_present(conn), "kill -9 runs no cleanup: the index is still there"
        # the server ends the dead client's backend as soon as it sees the socket closed
        _wait(lambda: [x.name for x in find_leftovers(conn)] == [INDEX], 30, "the index to be a leftover")
    r = run_cli("--home", str(lab.home), "explain", "--shape", SHAPE, "--json")
    assert r.returncode == 0, r.stderr
    assert f"dropped index ai_app.{INDEX}" in r.stderr and "killed" in r.stderr
    assert not any(s[0] == "Index Scan" and s[2] == INDEX for s in json.loads(r.stdout)["scans"])
    with target.connect() as conn:
        assert catalog_snapshot(conn) == before
        assert find_leftovers(conn, include_live=True) == []


def test_after_a_sweep_the_verdict_matches_a_clean_run(lab: LocalCluster) -> None:
    with lab.target().connect() as conn:
        assert not _index_present(conn), "the previous test's sweep left the catalog clean"
    runs = []
    for _ in range(2):
        r = run_cli("--home", str(lab.home), "compare", "--shape", SHAPE, "--index", INDEX, "--real",
                    "--repeats", "15", "--json")  # fmt: skip
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert not any(s[2] == INDEX for s in out["baseline"]["scans"]), "the baseline ran without the index"
        runs.append(out["verdict"]["kind"])
    assert runs == ["faster", "faster"]
    with lab.target().connect() as conn:
        assert not _index_present(conn)


def test_status_and_dataset_list_leftovers(lab: LocalCluster) -> None:
    from workbook.dataset import load_indexes
    from workbook.experiment import Index

    with lab.target().connect() as owner:
        Index(load_indexes()[INDEX]).apply(owner)  # never reverted: the connection closes under it
    with lab.target().connect() as conn:
        _wait(lambda: len(find_leftovers(conn)) == 1, 30, "the closed session's index to be a leftover")
    r = run_cli("--home", str(lab.home), "dataset", "--json")
    assert r.returncode == 0, r.stderr
    assert [x["name"] for x in json.loads(r.stdout)["leftovers"]] == [INDEX]
    r = run_cli("--home", str(lab.home), "status")
    assert r.returncode == 0 and f"ai_app.{INDEX}" in r.stdout + r.stderr
    r = run_cli("--home", str(lab.home), "advise", "--sql", "select 1", "--no-write-cost")
    assert r.returncode == 0 and f"dropped index ai_app.{INDEX}" in r.stderr
    with lab.target().connect() as conn:
        assert find_leftovers(conn, include_live=True) == [] and not _index_present(conn)
