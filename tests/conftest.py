"""Fixtures: real PostgreSQL clusters under throw-away homes, always torn down.

Every cluster a test makes is destroyed afterwards and the teardown *proves* it: each process
that served one of its data directories must be gone (checked by pid).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from workbook.cluster import LocalCluster
from workbook.config import DEFAULT_SCALE

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def alive(pid: int) -> bool:
    """A pid that still runs (a zombie has exited: it only waits for its parent to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def make_home(prefix: str = "wb-") -> Path:
    """A fresh, world-traversable directory (as root the server runs as an unprivileged user)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.pop("WORKBOOK_DSN", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "workbook", *args], capture_output=True, text=True, env=full_env,
        timeout=timeout, check=False,
    )


def destroy_and_prove(cluster: LocalCluster) -> None:
    pids = [p for ps in cluster.pids().values() for p in ps] if (cluster.home / "nodes").exists() else []
    cluster.destroy()
    left = [p for p in pids if alive(p)]
    assert not left, f"processes {left} outlived destroy()"
    assert not cluster.home.exists()


@pytest.fixture
def scratch_home() -> Iterator[Path]:
    """A home path that does not exist yet (its parent is removed afterwards)."""
    parent = make_home()
    yield parent / "home"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def cluster_factory() -> Iterator[Callable[..., LocalCluster]]:
    made: list[tuple[LocalCluster, Path]] = []

    def make(**kwargs: object) -> LocalCluster:
        parent = make_home()
        c = LocalCluster(parent / "home", **kwargs)  # type: ignore[arg-type]
        made.append((c, parent))
        return c

    yield make
    for c, parent in made:
        destroy_and_prove(c)
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def replicated() -> Iterator[LocalCluster]:
    """A primary with two streaming replicas, shared by the tests of one module."""
    parent = make_home()
    c = LocalCluster(parent / "home")
    c.up(replicas=2)
    yield c
    destroy_and_prove(c)
    shutil.rmtree(parent, ignore_errors=True)


LAB_SCALE = float(os.environ.get("WORKBOOK_TEST_SCALE", str(DEFAULT_SCALE)))  # tests only: not a workbook setting


@pytest.fixture(scope="session")
def lab() -> Iterator[LocalCluster]:
    """One cluster with the sample dataset at LAB_SCALE, shared by the experiment tests.

    Tests may add indexes/tables only inside rolled-back transactions or must remove them; the
    ``catalog_unchanged`` fixture proves it for the tests that use it.
    """
    from workbook.dataset import load

    parent = make_home("wb-lab-")
    c = LocalCluster(parent / "home")
    c.up(replicas=0)
    load(c.target(), LAB_SCALE, 42, progress=False)
    yield c
    destroy_and_prove(c)
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def open_(lab: LocalCluster) -> Any:
    """A Lab on the shared ``lab`` cluster, as a notebook's first cell opens it (one per test module)."""
    from workbook.lab import open_lab

    return open_lab(home=lab.home, progress=False)


def catalog_snapshot(conn: object) -> dict[str, list[tuple[object, ...]]]:
    """Indexes, extended statistics and relations of every user schema: what a toggle may not leave behind."""
    q = {
        "indexes": "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes"
                   " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3",
        "statistics": "SELECT stxname FROM pg_statistic_ext ORDER BY 1",
        "relations": "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                     " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%%'"
                     " ORDER BY 1, 2",
    }  # fmt: skip
    return {k: conn.execute(v).fetchall() for k, v in q.items()}  # type: ignore[attr-defined]


@pytest.fixture
def conn(lab: LocalCluster) -> Iterator[Any]:
    """A connection to the shared lab cluster (test_dataset_load overrides it with its own cluster's)."""
    with lab.target().connect() as c:
        yield c


@pytest.fixture
def catalog_unchanged(lab: LocalCluster) -> Iterator[None]:
    """Fails the test if it leaves any index, statistics object or relation behind."""
    with lab.target().connect() as conn:
        before = catalog_snapshot(conn)
    yield
    with lab.target().connect() as conn:
        after = catalog_snapshot(conn)
    assert after == before, "the test left the catalog changed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With ``WORKBOOK_TEST_NO_SKIP=1`` (``.ci/run`` sets it) a test skipped because something is
    missing (Chromium, PostgreSQL 15, pgbouncer ...) fails instead: CI can never go green by
    skipping. Only a skip that says "not applicable:" (the test does not apply to this kind of
    run, e.g. root-only steps as a normal user) stays a skip."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.skipped or os.environ.get("WORKBOOK_TEST_NO_SKIP") != "1" or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "not applicable:" in reason:
        return
    report.outcome = "failed"
    report.longrepr = f"skipped, and WORKBOOK_TEST_NO_SKIP=1 forbids skips: {reason}"


def figure_keys(figures: Any, prefix: str = "") -> set[str]:
    """Every key path of a lesson's figures (values differ from run to run; names and nesting must not).
    The results store hands figures back as JSON text or dicts: both are read."""
    if isinstance(figures, str):
        import json

        try:
            figures = json.loads(figures)
        except ValueError:
            return {prefix}
    if not isinstance(figures, dict):
        return {prefix}
    return {k for name, v in figures.items() for k in figure_keys(v, f"{prefix}/{name}")}


def run_notebook(path: Path, timeout: float = 300) -> str:
    """Execute a committed notebook (it must be saved without outputs) top to bottom in a real kernel,
    headless; the text of all its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} committed with outputs"
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells for o in c.get("outputs", []))  # fmt: skip


def built_notebook(tmp_path: Path, name: str) -> str:
    """The text notebooks/_build.py writes for notebook ``name`` (to compare with the committed one)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_build", REPO / "notebooks" / "_build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path, only=[name])
    return (tmp_path / f"{name}.ipynb").read_text()
