"""Each node its own CPU budget (issue 16): replicas that behave like separate machines.

Real servers, real cgroups: as root the nodes' postmasters and backends sit in per-node cgroup v1
groups whose quota the kernel enforces (a busy backend measured from /proc uses at most about its
budget); where cgroups are not writable (a normal user, simulated by pointing the cgroup root at
a place the kernel refuses to create groups in) whole-core budgets fall back to CPU affinity, and
anything else runs shared, said in one note.
"""

from __future__ import annotations

import json
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from workbook.cluster import LocalCluster, _cpu
from workbook.errors import ClusterError

from .conftest import alive, run_cli

#: a place where even root cannot create a directory (sysfs refuses mkdir): cgroups "not writable"
READ_ONLY_ROOT = Path("/sys/kernel")
#: tolerance for a 0.5-CPU budget measured over ~2 s (CFS quotas are exact per 100 ms period)
MAX_HALF_CORE = 0.7


def _cgroups_writable() -> bool:
    return os.geteuid() == 0 and _cpu.cgroup_unusable() is None


def _procs(group: Path) -> set[int]:
    return {int(x) for x in (group / "cgroup.procs").read_text().split()}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _busy_cores(dsn: str, seconds: float = 2.0) -> tuple[float, int]:
    """Cores one busy backend really used over ``seconds`` (from /proc), and its pid."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        conn.execute(f"SET statement_timeout = '{int((seconds + 1.5) * 1000)}ms'")

        def spin() -> None:
            try:
                conn.execute("DO $$BEGIN LOOP END LOOP; END$$")  # pure CPU, no I/O
            except psycopg.errors.QueryCanceled:
                pass  # the statement_timeout ends it

        t = threading.Thread(target=spin)
        t.start()
        time.sleep(0.5)
        a, t0 = _cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        b, t1 = _cpu_seconds(pid), time.monotonic()
        t.join()
    return (b - a) / (t1 - t0), pid


@pytest.fixture
def no_cgroups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cpu, "CGROUP_ROOT", READ_ONLY_ROOT)


def _leftover_groups() -> list[Path]:
    top = _cpu.CGROUP_ROOT / _cpu.GROUP
    return [p for p in top.iterdir() if p.is_dir()] if top.is_dir() else []


@pytest.fixture
def no_leftover_groups() -> Iterator[None]:
    before = set(_leftover_groups())
    yield
    assert set(_leftover_groups()) <= before, "the test left cgroup directories behind"


def test_cgroup_budget_is_enforced_changed_shown_and_removed(
    cluster_factory: Callable[..., LocalCluster], no_leftover_groups: None, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    if not _cgroups_writable():
        pytest.skip("not applicable: needs root and a writable cgroup v1 cpu controller")
    c = cluster_factory(cpus_per_node=0.5)
    nodes = c.up(replicas=1)
    assert "note:" not in capsys.readouterr().err
    assert json.loads(c.state_file.read_text())["cpus_per_node"] == 0.5
    for st in nodes:
        group = _cpu.node_group(c.home, st.name)
        assert st.cpu_budget == {"cpus": 0.5, "how": "cgroup"}, st
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (group / "cpu.cfs_period_us").read_text().strip() == "100000"
        with psycopg.connect(c.dsn(st.name)) as conn:  # a backend forked after the move inherits the group
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            members = _procs(group)
        assert st.pid in members and backend in members
        assert set(c.pids()[st.name]) <= members  # every process of the node, none of anyone else's
        assert os.getpid() not in members  # the caller (the load generator) stays outside
    assert "workbook" not in next(ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ":cpu:" in ln)

    # the kernel enforces it: a CPU-bound backend on the replica gets about half a core
    group = _cpu.node_group(c.home, "replica1")
    throttled = int(dict(ln.split() for ln in (group / "cpu.stat").read_text().splitlines())["nr_throttled"])
    used, _ = _busy_cores(c.dsn("replica1"))
    throttled = int(dict(ln.split() for ln in (group / "cpu.stat").read_text().splitlines())["nr_throttled"]) - throttled
    print(f"\nbusy backend under a 0.5-CPU budget used {used:.3f} cores ({throttled} periods throttled)")
    assert 0 < used < MAX_HALF_CORE, used

    # status, table and JSON, from another process: read back from the cgroup files
    res = run_cli("--home", str(c.home), "status", "--json")
    assert res.returncode == 0, res.stderr
    assert [n["cpu_budget"] for n in json.loads(res.stdout)["nodes"]] == [{"cpus": 0.5, "how": "cgroup"}] * 2
    table = run_cli("--home", str(c.home), "status").stdout
    assert "CPU_BUDGET" in table and table.count("0.5 (cgroup)") == 2, table

    # up with another budget rewrites the quota of the running nodes; it is remembered
    c.up(cpus_per_node=1.0)
    for name in ("primary", "replica1"):
        assert (_cpu.node_group(c.home, name) / "cpu.cfs_quota_us").read_text().strip() == "100000"
    assert LocalCluster(c.home).cpus_per_node == 1.0
    # a restart (down, then up from a fresh object) puts the new postmasters back in their groups
    c.stop()
    again = LocalCluster(c.home)
    for st in again.up():
        assert st.cpu_budget == {"cpus": 1.0, "how": "cgroup"}, st
        assert st.pid in _procs(_cpu.node_group(c.home, st.name))

    # a failover drops the old primary's group; the promoted node keeps its own; a new replica gets one
    again.promote("replica1")
    assert not _cpu.node_group(c.home, "primary").exists()
    st = again.add_replica()
    assert st.cpu_budget == {"cpus": 1.0, "how": "cgroup"}, st
    for st in again.status():
        assert st.pid in _procs(_cpu.node_group(c.home, st.name)), st
    # removing a replica removes its group; destroy removes the rest and leaves no process
    again.remove_replica(st.name)
    assert not _cpu.node_group(c.home, st.name).exists()
    pids = [p for ps in again.pids().values() for p in ps]
    again.destroy()
    assert not [p for p in pids if alive(p)]
    assert not _cpu.home_group(c.home).exists()


def test_budget_removed_with_zero(cluster_factory: Callable[..., LocalCluster], no_leftover_groups: None) -> None:
    if not _cgroups_writable():
        pytest.skip("not applicable: needs root and a writable cgroup v1 cpu controller")
    c = cluster_factory(cpus_per_node=0.25)
    [st] = c.up()
    assert st.cpu_budget == {"cpus": 0.25, "how": "cgroup"}
    [st] = c.up(cpus_per_node=0)
    assert st.cpu_budget is None and c.cpus_per_node is None
    assert not _cpu.home_group(c.home).exists()
    assert psutil.Process(st.pid).cpu_affinity() == _cpu.available_cores()


def test_without_cgroups_whole_cores_use_affinity_else_shared(
    cluster_factory: Callable[..., LocalCluster], no_cgroups: None, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cores = _cpu.available_cores()
    c = cluster_factory(cpus_per_node=1)
    [st] = c.up()  # the cluster starts all the same
    if len(cores) >= 2:
        assert st.cpu_budget == {"cpus": 1.0, "how": "affinity"}, st
        with psycopg.connect(c.dsn()) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            assert os.sched_getaffinity(backend) == {cores[-1]}  # inherited from the postmaster
        assert os.sched_getaffinity(st.pid) == {cores[-1]}
        assert os.sched_getaffinity(0) == set(cores)  # the caller is never pinned
    # half a core cannot be given by affinity: shared, said once, shown in status
    capsys.readouterr()
    [st] = c.up(cpus_per_node=0.5)
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "share" in err and "not writable" in err, err
    assert st.cpu_budget == {"cpus": 0.5, "how": "shared"}
    assert os.sched_getaffinity(st.pid) == set(cores)  # the pinning was taken away
    res = run_cli("--home", str(c.home), "status")  # another process, real cgroups: still shared
    assert "0.5 (shared)" in res.stdout, res.stdout + res.stderr


def test_a_normal_user_sees_no_writable_cgroups() -> None:
    """As a real unprivileged user (a forked child that dropped root), quotas are refused cleanly."""
    if os.geteuid() != 0:
        assert _cpu.plan(0.5, ["primary", "replica1"]).how == "shared"
        return
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            p = _cpu.plan(0.5, ["primary", "replica1"])
            os.write(w, json.dumps([p.how, p.why]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        how, why = json.loads(f.read())
    os.waitpid(pid, 0)
    assert how == "shared" and "not writable" in why, why


def test_bad_budgets_are_one_line_errors(scratch_home: Path) -> None:
    for bad in (-1, float("nan"), float("inf"), 0.001, 10_000, "half", True):
        with pytest.raises(ClusterError, match="cpus per node must be"):
            LocalCluster(scratch_home, cpus_per_node=bad)  # type: ignore[arg-type]
    res = run_cli("--home", str(scratch_home), "up", "--cpus-per-node", "-0.5")
    assert res.returncode == 2 and res.stderr.startswith("error: cpus per node must be"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not scratch_home.exists()


def test_doctor_says_what_cpus_per_node_does(no_cgroups: None) -> None:
    from workbook import doctor

    check = doctor._cgroup()
    assert not check.ok and "--cpus-per-node" in (check.consequence or "") and "share" in (check.consequence or "")
