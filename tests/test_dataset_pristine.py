"""A write workload changes the dataset; the pristine copy and reset put it back, replicas included."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import psycopg
import pytest

from workbook.cluster import LocalCluster
from workbook.dataset import checksum, load
from workbook.dataset.pristine import is_pristine, mark_written, protect, reset
from workbook.errors import WorkbookError

from .conftest import destroy_and_prove, make_home, run_cli


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    parent = make_home("wb-pristine-")
    c = LocalCluster(parent / "home")
    c.up(replicas=1)
    load(c.target(), 0.01, 3, progress=False)
    yield c
    destroy_and_prove(c)
    shutil.rmtree(parent, ignore_errors=True)


def _sum(c: LocalCluster, node: str = "primary") -> str:
    with c.target().connect(node) as conn:
        return checksum(conn).value


def test_reset_restores_the_checksum_on_the_primary_and_the_replica(cluster: LocalCluster) -> None:
    target = cluster.target()
    loaded = _sum(cluster)
    with pytest.raises(WorkbookError, match="no pristine copy"):
        reset(target)  # nothing protected yet: refused, nothing dropped
    assert _sum(cluster) == loaded
    assert is_pristine(target) is True
    assert protect(target) is True
    with target.connect() as conn:
        conn.execute("DELETE FROM ai_app.feature_flags")
        conn.execute("UPDATE ai_app.organisations SET name = 'changed'")
    mark_written(target, "a test's writes")
    assert is_pristine(target) is False and _sum(cluster) != loaded
    held = target.connect()  # a session on the working database: reset ends it, and says so
    result = reset(target)
    assert result.ended_sessions >= 1 and result.seconds > 0
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()
    assert _sum(cluster) == loaded and is_pristine(target) is True
    cluster.wait_caught_up()
    deadline = time.monotonic() + 30
    while True:  # the replica replays the new database's creation from the WAL
        try:
            if _sum(cluster, "replica1") == loaded:
                break
        except (WorkbookError, psycopg.Error):
            pass
        assert time.monotonic() < deadline, "the replica never showed the reset dataset"
        time.sleep(0.2)


def test_cli_reset_and_dataset_report_it(cluster: LocalCluster) -> None:
    target = cluster.target()
    protect(target)
    with target.connect() as conn:
        conn.execute("DELETE FROM ai_app.audit_log")
    mark_written(target, "the CLI test")
    r = run_cli("--home", str(cluster.home), "dataset")
    assert r.returncode == 0 and "workbook reset" in r.stdout
    r = run_cli("--home", str(cluster.home), "reset", "--json")
    assert r.returncode == 0 and '"database": "workbook"' in r.stdout, r.stderr
    with target.connect() as conn:
        assert conn.execute("SELECT count(*) FROM ai_app.audit_log").fetchone()[0] > 0


def test_a_new_load_is_pristine_again_and_takes_a_new_copy(cluster: LocalCluster) -> None:
    target = cluster.target()
    mark_written(target, "before a reload")
    load(target, 0.01, 4, progress=False)
    assert is_pristine(target) is True, "a load starts clean"
    assert protect(target) is True
    with target.connect() as conn:
        conn.execute("DELETE FROM ai_app.feature_flags")
    mark_written(target, "writes on the new load")
    reset(target)
    with target.connect() as conn:
        info = conn.execute("SELECT seed FROM ai_app.dataset_info").fetchone()[0]
        assert info == 4, "reset went back to the latest load, not the first one's copy"
        assert conn.execute("SELECT count(*) FROM ai_app.feature_flags").fetchone()[0] > 0
