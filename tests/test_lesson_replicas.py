"""The replicas lesson (issue 17) on the shared lab cluster at test scale, run once through its
notebook (headless): real replicas scale reads, lag under a burst, stale reads counted exactly
(every read stale with replay paused, none with remote_apply or LSN-wait), the failover drill's
figures, and the cluster (replica count, synchronous commit, CPU budget), the dataset and the
catalog as before. The panel measures for real; an external target says what it could not run."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from workbook.cluster import LocalCluster, Target
from workbook.dataset import checksum, is_pristine
from workbook.errors import WorkbookError
from workbook.lab import Lab
from workbook.lessons import DEFAULT, LESSONS, replicas
from workbook.results import ResultsStore
from workbook.ui.replica_panel import ReplicaPanel, measure

from .conftest import REPO, built_notebook, catalog_snapshot

NOTEBOOK = REPO / "notebooks" / "05_replicas_and_read_scaling.ipynb"
FIGURES = {  # named as the issue names them, with the keys it names
    "read_tps": {"0", "1", "2"},
    "read_p95_ms": {"0", "1", "2"},
    "cpus_per_node": None,
    "stale_reads_per_1000": {"async", "remote_apply", "lsn_wait"},
    "commit_p50_ms": {"off", "local", "on", "remote_write", "remote_apply"},
    "failover": {"async", "remote_apply"},
    "max_lag_bytes_during_burst": None,
}


def _cluster_state(c: LocalCluster) -> dict[str, Any]:
    nodes = c.status()
    return {"nodes": [(n.name, n.role, n.state) for n in nodes], "sync": c.sync_commit(), "cpus": c.cpus_per_node,
            "budgets": [n.cpu_budget for n in nodes]}  # fmt: skip


def _state(c: LocalCluster) -> tuple[Any, ...]:
    with c.target().connect() as conn:
        return _cluster_state(c), checksum(conn), catalog_snapshot(conn)


@pytest.fixture(scope="module")
def notebook(lab: LocalCluster) -> Iterator[tuple[dict[str, Any], str]]:
    """The notebook run headless once (the lesson's one run here): its stored figures and its output text.
    The cluster, the dataset and the catalog must be as before it."""
    before = _state(lab)
    with lab.target().connect() as conn:
        started = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "committed with outputs"
    env = {"WORKBOOK_HOME": str(lab.home)}
    old = {k: os.environ.get(k) for k in (*env, "WORKBOOK_DSN")}
    os.environ.update(env)
    os.environ.pop("WORKBOOK_DSN", None)
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # fmt: skip
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    out = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                    for c in nb.cells for o in c.get("outputs", []))  # fmt: skip
    after = _state(lab)
    assert after[0] == before[0], "the lesson left the cluster changed (replicas, synchronous commit or CPU budget)"
    assert after[1] == before[1], "the lesson left the dataset changed"
    assert after[2] == before[2], "the lesson left tables, schemas or indexes behind"
    assert is_pristine(lab.target()) is not False
    assert not (lab.home / replicas.STATE_FILE).exists()
    assert seconds < 240, f"the notebook took {seconds:.0f} s"
    stored = ResultsStore(lab.home).lessons()
    mine = stored[(stored["lesson"] == "replicas") & (stored["source"] == "notebook") & (stored["created_at"] >= started)]
    assert len(mine) == 1
    figures = mine["figures"].iloc[0]
    yield (json.loads(figures) if isinstance(figures, str) else figures), out


def test_the_lesson_is_registered_but_not_in_the_default_set() -> None:
    assert LESSONS["replicas"] is replicas.LESSON and "replicas" not in DEFAULT


def test_figures_are_named_as_the_issue_says(notebook: tuple[dict[str, Any], str]) -> None:
    figures, _ = notebook
    for name, keys in FIGURES.items():
        assert name in figures, name
        if keys is not None:
            assert set(figures[name]) == keys, name
    for mode in ("async", "remote_apply"):
        assert {"acknowledged", "lost", "rto_s"} <= set(figures["failover"][mode])


def test_replicas_serve_reads_and_lag_under_a_burst(notebook: tuple[dict[str, Any], str]) -> None:
    f, out = notebook
    for k in ("0", "1", "2"):
        assert f["read_tps"][k] > 0 and f["read_p95_ms"][k] > 0
        lo, hi = f["read_p95_ms_ci"][k]
        assert lo <= f["read_p95_ms"][k] <= hi
    assert f["max_lag_bytes_during_burst"] > 1_000_000, "a bulk insert of messages puts a replica megabytes behind"
    assert f["burst"]["rows"] > 0
    if os.geteuid() == 0:  # as root the cgroup v1 quota is there to use (test_cluster_cpu proves it)
        assert f["cpus_per_node"] == replicas.CPUS_PER_NODE and f["cpu_budget"] == "cgroup"
    else:
        assert f["cpu_budget"] == "cgroup" or "cpu_budget" in f["not_run"]
    for k, nodes in (("0", {"primary"}), ("1", {"primary", "replica1"}), ("2", {"primary", "replica1", "replica2"})):
        assert f["read_tps_per_node"][k] == pytest.approx(f["read_tps"][k] / len(nodes), abs=0.1)
        shares = f["read_cpu_throttled_share"][k]
        assert set(shares) == nodes, shares
        if f["cpu_budget"] == "cgroup":  # read from each node's cpu.stat (a busy machine may not let a node reach
            assert all(v is not None and 0 <= v <= 1 for v in shares.values()), shares  # its budget: 0.08 seen)
    speedup = f["read_speedup_2"]
    if f["read_scaling_note"] is not None:
        assert f"{speedup:.2f}x with 3 nodes" in f["read_scaling_note"]
        if "only" not in f["read_scaling_note"]:  # every node at its budget: the note explains the speed-up
            assert (speedup > 3) == ("more than the 3x" in f["read_scaling_note"])


def test_the_scaling_note_says_why_the_speedup_is_off_the_nodes_added() -> None:
    def arm(tps: float, *nodes: str, share: float | None = 0.95) -> dict[str, Any]:
        return {"tps": tps, "by_node": {n: {"tps": tps / len(nodes), "cpu_throttled_share": share} for n in nodes}}

    three = ("primary", "replica1", "replica2")
    beyond = replicas.scaling_note({"0": arm(3000, "primary"), "2": arm(12000, *three)}, 9)
    assert beyond and "4.00x with 3 nodes is more than the 3x" in beyond and "3,000 TPS with 9 clients" in beyond
    assert "4,000 TPS per node with 3" in beyond
    below = replicas.scaling_note({"0": arm(3000, "primary"), "2": arm(5000, *three)}, 9)
    assert below and "well below the 3x" in below
    assert replicas.scaling_note({"0": arm(3000, "primary"), "2": arm(8800, *three)}, 9) is None, "about 3x: nothing to explain"
    busy = replicas.scaling_note({"0": arm(1800, "primary", share=0.6), "2": arm(6400, *three, share=0.37)}, 9)
    assert busy and "3.56x with 3 nodes" in busy and "only 37%-60% of its periods" in busy and "not the budgets" in busy
    shared = replicas.scaling_note({"0": arm(3000, "primary", share=None), "2": arm(12000, *three, share=None)}, 9)
    assert shared is None, "without CPU budgets the setup step already says the scaling could not be shown"


def test_no_stale_read_with_remote_apply_or_lsn_wait(notebook: tuple[dict[str, Any], str]) -> None:
    f, _ = notebook
    assert f["stale_reads_per_1000"]["remote_apply"] == 0
    assert f["stale_reads_per_1000"]["lsn_wait"] == 0
    assert f["lsn_wait_p50_ms"] is not None
    assert all(f["commit_p50_ms"][lv] > 0 for lv in replicas.LEVELS)


def test_every_read_is_stale_with_replay_paused(open_: Lab, lab: LocalCluster) -> None:
    before = _cluster_state(lab)
    got = replicas.paused_stale_reads(open_, writes=40)
    assert got["stale"] == 40 and got["per_1000"] == 1000.0, got
    assert _cluster_state(lab) == before, "the replica was not removed, or replay not resumed"


def test_the_drill_loses_acknowledged_writes_in_async_only(notebook: tuple[dict[str, Any], str]) -> None:
    f, out = notebook
    fo = f["failover"]
    assert "not_run" not in fo["async"], fo
    assert fo["async"]["acknowledged"] > 0 and fo["remote_apply"]["acknowledged"] > 0
    assert fo["remote_apply"]["lost"] == 0
    assert fo["async"]["rto_s"] > 0
    assert "SIGSTOP" in out  # how the replica was made to fall behind is said


def test_the_exercise_checks_its_answer(notebook: tuple[dict[str, Any], str]) -> None:
    _, out = notebook
    assert "not quite: 200 of 200 were stale" in out


def test_an_external_target_says_what_needs_the_local_cluster(lab: LocalCluster, open_: Lab) -> None:
    ext = Lab(target=Target.from_dsn(lab.dsn()), store=open_.store, home=open_.home)
    for step in (replicas.failover, replicas.cascade):
        got = step(ext)
        text = json.dumps(got)
        assert "needs the local cluster" in text, text
    assert replicas.stale(ext)["not_run"]
    assert replicas.setup(ext)["not_shown"].startswith("the target has no replicas")


def test_the_panel_measures_replicas_routing_and_sync_and_puts_sync_back(lab: LocalCluster) -> None:
    before = _cluster_state(lab)
    panel = ReplicaPanel(lab.target(), ResultsStore(lab.home), lab)
    try:
        panel.replicas.value, panel.route.value, panel.sync.value = 1, "all", "remote_apply"
        panel.clients.value, panel.duration.value, panel.mix.value = 2, 1.0, "point"
        row = panel.run()
        assert row is not None, panel.status.value
        assert row["replicas"] == 1 and row["tps"] > 0 and row["sync"] == "remote_apply"
        assert "replica1" in panel.last.as_dict()["by_node"]  # type: ignore[union-attr]
        assert "<svg" in panel.chart.value and "<svg" in panel.lag.value
        assert lab.sync_commit() == before["sync"], "the run's synchronous standbys were not put back"
    finally:
        lab.up(replicas=0)
    assert _cluster_state(lab) == before


def test_measure_refuses_bad_input_in_one_line(lab: LocalCluster) -> None:
    before = _cluster_state(lab)
    with pytest.raises(WorkbookError, match="route must be one of"):
        measure(lab.target(), lab, replicas=0, route="nowhere", sync="on", clients=1)
    with pytest.raises(WorkbookError, match="synchronous commit must be one of"):
        measure(lab.target(), lab, replicas=0, route="primary", sync="sometimes", clients=1)
    with pytest.raises(WorkbookError, match="needs replicas"):
        measure(lab.target(), lab, replicas=0, route="replicas", sync="on", clients=1)
    assert _cluster_state(lab) == before


def test_notebook_builder_writes_the_committed_notebook(tmp_path: Path) -> None:
    assert built_notebook(tmp_path, NOTEBOOK.stem) == NOTEBOOK.read_text(), "run python notebooks/_build.py"


def test_without_cgroups_the_lesson_says_what_it_could_not_show(
    open_: Lab, lab: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """As on Binder (a normal user, no writable cgroup controller): the nodes share the CPUs, and setup says so."""
    from workbook.cluster import _cpu

    monkeypatch.setattr(_cpu, "CGROUP_ROOT", Path("/nonexistent/cgroup/cpu"))
    before = _cluster_state(lab)
    try:
        got = replicas.setup(open_)
    finally:
        replicas.restore(open_)
    assert got["cpu_budget"] == "shared" and got["replicas"] == ["replica1", "replica2"]
    assert "share this machine's CPUs" in got["not_shown"] and "no cgroup v1 cpu controller" in got["not_shown"]
    assert _cluster_state(lab) == before


def test_the_panel_cancels_a_run_within_seconds(lab: LocalCluster) -> None:
    panel = ReplicaPanel(lab.target(), None, lab)
    panel.replicas.value, panel.route.value, panel.mix.value = 0, "primary", "point"
    panel.clients.value, panel.duration.value = 2, 30.0
    t0 = time.monotonic()
    panel.run(background=True)
    time.sleep(1.5)
    panel.cancel()
    panel.wait(timeout=20)
    assert time.monotonic() - t0 < 10, "Cancel did not stop the run"
    assert panel.rows and panel.rows[-1]["cancelled"] and panel.rows[-1]["tps"] > 0, panel.status.value
    assert "(cancelled)" in panel.status.value and not panel.run_button.disabled
