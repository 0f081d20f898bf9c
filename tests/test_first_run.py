"""The first ten minutes (issue 14): root in a private directory, a wheel installed elsewhere,
clusters started at the same moment, and the CLI's own surface (--version, doctor, global options).

Real processes only: the project is copied into a fresh 0700 directory (like a clone under
/root), installed into fresh virtual environments (``--system-site-packages`` for the
dependencies, ``--no-deps`` for the workbook itself, so the test takes seconds, not a download of
JupyterLab), and driven through its ``workbook`` script.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from workbook import config
from workbook.cli import _parser
from workbook.cluster import LocalCluster

from .conftest import REPO, alive, destroy_and_prove, make_home, run_cli

pytestmark = pytest.mark.slow


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBOOK_") and k != "VIRTUAL_ENV"}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _run(args: list[str | Path], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_clean_env(**env), capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def _ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, f"{res.args}: {res.stdout[-1500:]}\n{res.stderr[-3000:]}"
    return res


def _processes_under(home: Path) -> list[int]:
    """Live processes whose working directory is inside ``home`` (every server process runs in its data directory)."""
    found = []
    for p in psutil.process_iter(["cwd"]):
        cwd = p.info.get("cwd")
        if cwd and (cwd == str(home) or cwd.startswith(f"{home}/")) and alive(p.pid):
            found.append(p.pid)
    return found


def _venv(where: Path) -> Path:
    _ok(_run([sys.executable, "-m", "venv", "--system-site-packages", where], cwd=where.parent))
    return where / "bin"


@pytest.fixture(scope="module")
def private_root() -> Iterator[Path]:
    """A fresh 0700 directory (like /root) holding a copy of the project's files as they are now."""
    root = Path(tempfile.mkdtemp(prefix="wb-first-", dir="/tmp"))
    assert root.stat().st_mode & 0o777 == 0o700
    repo = root / "repo"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():  # a file deleted but still in the index is skipped
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_readme_first_command_as_root_in_a_private_directory(private_root: Path) -> None:
    repo = private_root / "repo"
    bin_ = _venv(private_root / "venv")
    _ok(_run([bin_ / "python", "-m", "pip", "install", "-q", "--no-deps", "-e", "."], cwd=repo))
    where = _ok(_run([bin_ / "python", "-c", "import workbook; print(workbook.__file__)"], cwd=private_root))
    assert where.stdout.strip().startswith(str(repo)), where.stdout
    home = Path("/var/tmp") / f"workbook-{os.getuid()}-{hashlib.sha256(str(repo).encode()).hexdigest()[:12]}"
    assert not home.exists()
    try:
        # the README's first command, its CLI part, exactly
        report = _ok(_run([bin_ / "workbook", "report", "--out", "report.html"], cwd=repo, timeout=600))
        assert (repo / "report.html").stat().st_size > 10_000
        notes = [ln for ln in report.stderr.splitlines() if ln.startswith("note:") and str(home) in ln]
        assert len(notes) == 1 and "out of reach" in notes[0], report.stderr
        assert not (repo / ".workbook").exists()
        up = _ok(_run([bin_ / "workbook", "up"], cwd=repo))
        assert f"cluster home: {home} " in up.stdout and "note:" not in up.stderr  # said once, at creation
        status = json.loads(_ok(_run([bin_ / "workbook", "status", "--json"], cwd=repo)).stdout)
        assert [(n["role"], n["state"]) for n in status["nodes"]] == [("primary", "running")]
        pid = status["nodes"][0]["pid"]
        assert pid in _processes_under(home)
        down = _ok(_run([bin_ / "workbook", "down"], cwd=repo))
        assert str(home) in down.stdout and "nothing to stop" not in down.stdout
        assert _processes_under(home) == [] and not alive(pid)
    finally:
        _run([bin_ / "workbook", "down", "--destroy"], cwd=repo)
    assert not home.exists() and _processes_under(home) == []


def test_a_wheel_installed_elsewhere_finds_its_datasets_and_notebooks(private_root: Path) -> None:
    repo = private_root / "repo"
    dist = private_root / "dist"
    _ok(_run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, repo], cwd=private_root))
    (wheel,) = dist.glob("workbook-*.whl")
    bin_ = _venv(private_root / "venv-wheel")
    _ok(_run([bin_ / "python", "-m", "pip", "install", "-q", "--no-deps", wheel], cwd=private_root))
    elsewhere = make_home("wb-elsewhere-")  # an empty, world-traversable folder outside the repository
    try:
        code = "from workbook.dataset.paths import dataset_dir, notebooks_dir; print(dataset_dir()); print(notebooks_dir())"
        found = _ok(_run([bin_ / "python", "-c", code], cwd=elsewhere)).stdout.split()
        site = str(private_root / "venv-wheel" / "lib")
        assert all(p.startswith(site) and "/workbook/_data/" in p for p in found), found
        assert (
            _ok(_run([bin_ / "workbook", "--version"], cwd=elsewhere)).stdout.strip() == f"workbook {config_version()}"
        )
        loaded = json.loads(_ok(_run([bin_ / "workbook", "load", "--json"], cwd=elsewhere)).stdout)
        assert loaded["scale"] == config.DEFAULT_SCALE and loaded["rows"]["messages"] > 0
        plan = json.loads(_ok(_run([bin_ / "workbook", "explain", "--shape", "conversation_latest_messages", "--json"],
                                   cwd=elsewhere)).stdout)  # fmt: skip
        assert plan["shape"] == "conversation_latest_messages" and plan["nodes"]
        _check_lab_copies_the_notebooks(bin_, elsewhere)
    finally:
        _run([bin_ / "workbook", "down", "--destroy"], cwd=elsewhere)
        assert _processes_under(elsewhere) == []
        shutil.rmtree(elsewhere, ignore_errors=True)


def config_version() -> str:
    from importlib.metadata import version

    return version("workbook")


def _check_lab_copies_the_notebooks(bin_: Path, cwd: Path) -> None:
    """``workbook lab`` outside the repository opens ./workbook-notebooks, a copy made once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mine = cwd / "workbook-notebooks" / "00_start_here.ipynb"
    mine.parent.mkdir()
    mine.write_text("{}")  # the user's edit: never overwritten
    lab = subprocess.Popen([str(bin_ / "workbook"), "lab", "--no-browser", "--lab-port", str(port)], cwd=cwd,
                           env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        token, seen, deadline = None, [], time.monotonic() + 90
        while token is None and time.monotonic() < deadline:
            line = lab.stdout.readline()  # type: ignore[union-attr]
            seen.append(line)
            m = re.search(r"token=([0-9a-f]+)", line)
            token = m.group(1) if m else None
        assert token, "".join(seen)[-3000:]
        assert any("copied" in ln and str(mine.parent) in ln for ln in seen), "".join(seen)[-3000:]
        names: list[str] = []
        while not names and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=10) as r:
                    names = [c["name"] for c in json.load(r)["content"]]
            except OSError:
                time.sleep(0.2)
        assert {"00_start_here.ipynb", "01_indexes.ipynb"} <= set(names), names
        assert mine.read_text() == "{}"
    finally:
        lab.terminate()
        lab.wait(30)


def test_clusters_started_at_the_same_moment_all_come_up() -> None:
    """Both pick the same free port, both find it free, one binds first: the other moves on."""
    parents: list[Path] = []
    try:
        for _round in range(5):
            homes = []
            for _ in range(2):
                parents.append(make_home("wb-race-"))
                homes.append(parents[-1] / "home")
            procs = [subprocess.Popen([sys.executable, "-m", "workbook", "--home", str(h), "up", "--replicas", "1"],
                                      env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for h in homes]  # fmt: skip
            results = [(p.wait(120), *p.communicate()) for p in procs]
            for rc, _out, err in results:
                assert rc == 0, err
                assert "taken" not in err
            ports = [n.port for h in homes for n in LocalCluster(h).status()]
            assert len(set(ports)) == 4, ports
            assert [n.state for h in homes for n in LocalCluster(h).status()] == ["running", "streaming"] * 2
            for h in homes:  # the recorded ports are the ones the servers listen on
                states = json.loads((h / "cluster.json").read_text())["nodes"]
                assert {s["port"] for s in states} == {n.port for n in LocalCluster(h).status()}
                destroy_and_prove(LocalCluster(h))
    finally:
        for parent in parents:
            if (parent / "home").exists():
                LocalCluster(parent / "home").destroy()
            shutil.rmtree(parent, ignore_errors=True)


def test_home_rule_as_root_is_one_place_per_working_directory(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root runs the server as another user")
    private = Path(tempfile.mkdtemp(prefix="wb-private-", dir="/tmp"))  # 0700
    public = make_home("wb-public-")  # 0755
    code = "from workbook.cluster import resolve_home; print(resolve_home())"
    try:
        got = _ok(_run([sys.executable, "-c", code], cwd=private)).stdout.strip()
        assert got == f"/var/tmp/workbook-{os.getuid()}-{hashlib.sha256(str(private).encode()).hexdigest()[:12]}"
        assert _ok(_run([sys.executable, "-c", code], cwd=public)).stdout.strip() == str(public / ".workbook")
        # WORKBOOK_HOME and --home still win; an explicit unreachable home is still refused
        assert _ok(_run([sys.executable, "-c", code], cwd=private, WORKBOOK_HOME=str(private / "h"))).stdout.strip() \
            == str(private / "h")  # fmt: skip
        res = _run([sys.executable, "-m", "workbook", "--home", str(private / "h"), "up"], cwd=private)
        assert res.returncode == 2 and "cannot reach" in res.stderr and not (private / "h").exists()
        down = _ok(_run([sys.executable, "-m", "workbook", "down"], cwd=private))
        assert "nothing to stop" in down.stdout and got in down.stdout
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(public, ignore_errors=True)


def test_version_doctor_and_global_options_after_the_command(scratch_home: Path) -> None:
    from importlib.metadata import version

    res = _ok(run_cli("--version"))
    assert res.stdout.strip() == f"workbook {version('workbook')}"
    doc = json.loads(_ok(run_cli("doctor", "--json", "--home", str(scratch_home))).stdout)
    assert doc["home"] == str(scratch_home) and not scratch_home.exists()  # the doctor creates nothing
    for key in ("embedded_postgresql", "workbook_pg_bin", "pgvector", "pgbench", "pgbouncer", "chromium",
                "postgresql_15", "cgroup_v1_cpu_quota", "free_disk", "free_memory"):  # fmt: skip
        assert key in doc["checks"], key
    for key, check in doc["checks"].items():
        assert check["detail"]
        assert check["ok"] or (check["consequence"] and check["fix"]), (key, check)
        assert (key in doc["missing"]) is (not check["ok"])
    # a missing piece says what it disables: other binaries without pgvector
    if Path("/usr/lib/postgresql/15/bin/postgres").exists():
        text = _ok(run_cli("doctor", env={"WORKBOOK_PG_BIN": "/usr/lib/postgresql/15/bin"})).stdout
        assert re.search(r"pgvector missing: the sample dataset loads without its embeddings", text), text
    # global options after the command: parsed the same as before it
    dead = "postgresql://app:pw@127.0.0.1:1/db"
    for argv in (["advise", "--dsn", dead, "--sql", "select 1"], ["--dsn", dead, "advise", "--sql", "select 1"],
                 ["status", "--dsn", dead, "--replica-dsn", dead]):  # fmt: skip
        res = run_cli(*argv)
        assert res.returncode == 2 and "cannot connect to primary" in res.stderr, (argv, res.stderr)
    res = run_cli("status", "--home", str(scratch_home))
    assert res.returncode == 2 and str(scratch_home) in res.stderr and "workbook up" in res.stderr
    res = run_cli("status", "--replica-dsn", dead)
    assert res.returncode == 2 and "--replica-dsn needs --dsn" in res.stderr
    # one default scale, from one place; a bad WORKBOOK_SCALE is one line before anything starts
    res = run_cli("--home", str(scratch_home), "load", env={"WORKBOOK_SCALE": "lots"})
    assert (
        res.returncode == 2 and res.stderr.strip() == "error: WORKBOOK_SCALE must be a number > 0 like 0.05, got 'lots'"
    )
    assert not scratch_home.exists()


def test_every_option_has_help_text() -> None:
    parser = _parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "doctor" in subs.choices
    for name, sub in [("workbook", parser), *subs.choices.items()]:
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings or action.dest)
    ld = subs.choices["load"].parse_args([])
    rp = subs.choices["report"].parse_args([])
    assert ld.scale is None and rp.scale is None  # both mean config.default_scale()
    assert config.default_scale() == config.DEFAULT_SCALE == 0.05
