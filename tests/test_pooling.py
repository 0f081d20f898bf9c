"""The pooling lesson (issue 18) and PgBouncer as a managed part of the local cluster, on a cluster
of this module's own at a small scale: 200 clients through PgBouncer (pool 50) → no error; 200
straight to a server of max_connections=100 → "too many clients" counted; PoolTimeouts counted
with a short timeout; the pooler's auth file is private and it listens on loopback only; `down`
leaves no pgbouncer process, even after the Python process that started it was killed -9; the
notebook runs headless and stores the figures run() returns."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from workbook.cluster import LocalCluster, _pooler
from workbook.dataset import load
from workbook.lab import Lab, open_lab
from workbook.lessons import LessonResult, pooling
from workbook.results import ResultsStore

from .conftest import REPO, built_notebook, destroy_and_prove, figure_keys, make_home, run_cli, run_notebook

NOTEBOOK = REPO / "notebooks" / "06_connections_and_pooling.ipynb"
SCALE = 0.01
SETUPS = {"direct", "psycopg_pool", "sqlalchemy", "pgbouncer"}

needs_pgbouncer = pytest.mark.skipif(_pooler.find_pgbouncer() is None, reason="pgbouncer is not installed")


def _pgbouncers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "pgbouncer"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    parent = make_home("wb-pool-")
    c = LocalCluster(parent / "home")
    c.up(replicas=0)
    load(c.target(), SCALE, 42, progress=False)
    yield c
    destroy_and_prove(c)
    assert not _pooler.processes(c.home)
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(cluster: LocalCluster) -> Lab:
    return open_lab(home=cluster.home, progress=False)


@pytest.fixture(scope="module")
def ran(lab: Lab, cluster: LocalCluster) -> LessonResult:
    t0 = time.perf_counter()
    result = pooling.LESSON.run(lab)
    seconds = time.perf_counter() - t0
    assert seconds < 120, f"the lesson took {seconds:.0f} s"
    assert cluster.pooler_status() is None, "the lesson stops the pooler it started"
    return result


def test_figures_are_named_as_the_issue_says(ran: LessonResult) -> None:
    f = ran.figures
    for key in ("clients", "max_connections", "setups", "pool_wait_p95_ms", "littles_law_wait_ms",
                "connect_per_request_tps"):  # fmt: skip
        assert key in f, key
    assert f["clients"] == 200 and f["max_connections"] == 100
    assert set(f["setups"]) == SETUPS
    for name, s in f["setups"].items():
        assert {"tps", "p95_ms", "errors"} <= set(s), name
    json.dumps(f)  # stored as JSON


def test_direct_counts_too_many_clients_and_pools_do_not(ran: LessonResult) -> None:
    s = ran.figures["setups"]
    f = ran.figures
    assert f["direct_connections_refused"] > 0 and "too many clients" in f["direct_refusal"], f
    assert f["direct_connections_opened"] + f["direct_connections_refused"] == 200
    assert f["direct_connections_opened"] <= 100
    assert set(s["direct"]["errors"]) <= {"too_many_clients"}, s["direct"]
    for name in ("psycopg_pool", "sqlalchemy"):
        assert s[name]["errors"] == {}, (name, s[name])
        assert s[name]["tps"] > 0


@needs_pgbouncer
def test_200_clients_through_pgbouncer_pool_50_have_no_errors(ran: LessonResult) -> None:
    p = ran.figures["setups"]["pgbouncer"]
    assert p["errors"] == {} and p["tps"] > 0, p
    run = ran.outputs["pgbouncer"]["through_pooler"]
    assert run.clients == 200
    assert ran.figures["not_run"] == {}
    # the pooler's idle server connections carry the run's name: they are the pool, not sessions the
    # run left open, and the note says what was closed
    assert not any("still open after it" in n for n in run.notes), run.notes


def test_pool_wait_follows_littles_law_and_short_timeouts_are_counted(ran: LessonResult) -> None:
    f = ran.figures
    assert f["pool_timeouts"]["count"] > 0
    # a busy shared machine slows the pool, never speeds it: the measured wait is near the law's
    assert 0.5 * f["littles_law_wait_ms"] <= f["pool_wait_p95_ms"] <= 3 * f["littles_law_wait_ms"] + 50, f
    assert f["connect_per_request_tps"] < f["persistent_connection_tps"] / 5


@needs_pgbouncer
def test_idle_in_transaction_starves_and_the_timeout_frees(ran: LessonResult) -> None:
    idle = ran.figures["idle_in_transaction"]
    assert idle["worker_requests_without_timeout"] == 0, idle
    assert idle["worker_requests_with_timeout"] > 0, idle
    prep = ran.figures["prepared_statements"]
    assert prep["errors_prepare_threshold_0"] > 0 and "already exists" in prep["first_error"], prep
    assert prep["errors_prepare_threshold_none"] == 0
    assert ran.outputs["put_back"]["idle_in_transaction_session_timeout"] == "0", "the setting is put back"


@needs_pgbouncer
def test_pooler_is_private_loopback_and_down_stops_it_after_kill_9(cluster: LocalCluster, lab: Lab) -> None:
    # the Python process that starts the pooler is killed -9: the pooler runs on, in its own session
    code = ("import os, signal, sys\nfrom workbook.cluster import LocalCluster\n"
            f"c = LocalCluster({str(cluster.home)!r})\nc.add_pooler(10)\nos.kill(os.getpid(), signal.SIGKILL)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    procs = _pooler.processes(cluster.home)
    assert procs, "the pooler did not start"
    st = cluster.pooler_status()
    assert st is not None and st.state == "running" and st.pool_size == 10
    auth = cluster.home / "pooler" / "userlist.txt"
    mode = stat.S_IMODE(auth.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert "SCRAM-SHA-256$" in auth.read_text()
    assert cluster._password() not in auth.read_text()
    for p in procs:
        assert p.uids().real == (cluster.run_as.uid if cluster.run_as.uid is not None else os.getuid())
        addrs = {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        assert addrs == {"127.0.0.1"}, addrs
    target = cluster.target()
    assert target.pooler is not None
    with target.connect("pooler") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pids = [p.pid for p in procs]
    cluster.stop()  # what 'workbook down' does
    assert not _pooler.processes(cluster.home)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    cluster.up()  # a cluster that has a pooler starts it again
    st = cluster.pooler_status()
    assert st is not None and st.state == "running"
    cluster.remove_pooler()
    assert cluster.pooler_status() is None and not _pooler.processes(cluster.home)
    assert not (cluster.home / "pooler").exists()


@needs_pgbouncer
def test_cli_up_pooler_status_bench_down(cluster: LocalCluster, lab: Lab) -> None:
    home = str(cluster.home)
    up = run_cli("--home", home, "up", "--pooler", "--pool-size", "50")
    assert up.returncode == 0, up.stderr
    assert "pooler (PgBouncer" in up.stdout
    st = run_cli("--home", home, "status", "--json")
    assert st.returncode == 0, st.stderr
    pooler = json.loads(st.stdout)["pooler"]
    assert pooler["state"] == "running" and pooler["pool_size"] == 50
    bench = run_cli("--home", home, "bench", "--mix", "point", "--clients", "200", "--duration", "2",
                    "--pool", "pgbouncer", "--json")  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    got = json.loads(bench.stdout)
    assert got["errors"] == {} and got["tps"] > 0, got
    for pool in ("psycopg", "sqlalchemy"):
        b = run_cli("--home", home, "bench", "--mix", "point", "--clients", "20", "--duration", "1",
                    "--pool", pool, "--pool-size", "5", "--json")  # fmt: skip
        assert b.returncode == 0, b.stderr
        assert json.loads(b.stdout)["errors"] == {}
    bad = run_cli("--home", home, "bench", "--mix", "point", "--pool", "pgbouncer", "--driver", "python")
    assert bad.returncode != 0 and "pgbench" in bad.stderr
    down = run_cli("--home", home, "down")
    assert down.returncode == 0, down.stderr
    assert not _pooler.processes(cluster.home)
    cluster.up()
    cluster.remove_pooler()


def test_notebook_runs_headless_and_stores_the_same_figures(
    cluster: LocalCluster, ran: LessonResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBOOK_HOME", str(cluster.home))
    monkeypatch.delenv("WORKBOOK_DSN", raising=False)
    cluster.up()
    with cluster.target().connect() as conn:
        started = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    out = run_notebook(NOTEBOOK)
    for needle in ("too_many_clients", "littles_law_wait_ms", "pool_timeouts", "direct_connect"):
        assert needle in out, needle
    stored = ResultsStore(cluster.home).lessons()
    mine = stored[(stored["lesson"] == "pooling") & (stored["source"] == "notebook") & (stored["created_at"] >= started)]
    assert len(mine) == 1
    assert figure_keys(mine["figures"].iloc[0]) == figure_keys(ran.figures)
    assert not _pooler.processes(cluster.home), "the notebook's pooler is stopped by its last step"



def test_notebook_builder_writes_the_committed_notebook(tmp_path: Path) -> None:
    assert built_notebook(tmp_path, NOTEBOOK.stem) == NOTEBOOK.read_text(), "run python notebooks/_build.py"


def test_no_pgbouncer_of_ours_is_left(cluster: LocalCluster) -> None:
    assert not _pooler.processes(cluster.home)
    assert all(p.cwd() != str(cluster.home / "pooler") for p in _pgbouncers() if _safe_cwd(p))


def _safe_cwd(p: psutil.Process) -> bool:
    try:
        p.cwd()
        return True
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return False


@needs_pgbouncer
@pytest.mark.slow
def test_the_pooler_runs_as_a_normal_user() -> None:
    """As a normal user (a laptop, Binder) PgBouncer runs as that user: up --pooler, status, a query
    through it, down — the way tests/test_nonroot.py drives the cluster (its user and venv)."""
    if os.geteuid() != 0:
        pytest.skip("not applicable: the whole suite already runs as a non-root user")

    import psycopg

    from .test_nonroot import SYSTEM_PYTHON, _as_user, _ensure_user, user_workbook

    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} is missing")
    entry = _ensure_user()
    home, py = user_workbook(entry)
    wb_home = home / "wb-pool-home"
    try:
        up = _as_user(entry, [py, "-m", "workbook", "--home", str(wb_home), "up", "--pooler", "--pool-size", "5"])
        assert up.returncode == 0, up.stderr
        st = _as_user(entry, [py, "-m", "workbook", "--home", str(wb_home), "status", "--json"])
        assert st.returncode == 0, st.stderr
        pooler = json.loads(st.stdout)["pooler"]
        assert pooler["state"] == "running" and pooler["pool_size"] == 5, pooler
        assert psutil.Process(pooler["pid"]).uids().real == entry.pw_uid
        password = (wb_home / "secrets" / "password").read_text().strip()
        dsn = f"host=127.0.0.1 port={pooler['port']} user=postgres dbname=workbook password={password}"
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
            assert conn.execute("SELECT current_setting('port')::int > 0").fetchone() == (True,)
        down = _as_user(entry, [py, "-m", "workbook", "--home", str(wb_home), "down"])
        assert down.returncode == 0, down.stderr
        assert not _pooler.processes(wb_home)
        assert not psutil.pid_exists(pooler["pid"]) or psutil.Process(pooler["pid"]).status() == psutil.STATUS_ZOMBIE
    finally:
        _as_user(entry, [py, "-m", "workbook", "--home", str(wb_home), "down", "--destroy"])
    assert not wb_home.exists()
