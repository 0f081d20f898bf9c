"""A Binder dry run: as a non-root user, in a fresh virtual environment, do what repo2docker does.

repo2docker (Binder) installs ``binder/requirements.txt``, copies the repository, runs
``binder/postBuild`` as the notebook user, and at launch runs ``binder/start <command>``. This test
does exactly that with a fresh venv of Debian's python3 and runs ``00_start_here`` headless as the
command; then it checks the notebook's outputs and that no server outlives ``workbook down``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from .conftest import REPO
from .test_nonroot import SYSTEM_PYTHON, _as_user, _ensure_user

IGNORE = shutil.ignore_patterns(".git", ".workbook", "test-artifacts", "__pycache__", "*.egg-info", ".pytest_cache", "report.html")


@pytest.mark.slow
def test_binder_dry_run_as_a_normal_user_runs_the_first_notebook() -> None:
    if os.geteuid() != 0:
        pytest.skip("not applicable: needs root to create the normal user Binder runs as")
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} is missing: .ci/run installs python3 and python3-venv")
    entry = _ensure_user()
    home = Path(entry.pw_dir)
    repo, venv, out = home / "binder-repo", home / "binder-venv", home / "start_here.out.ipynb"
    for p in (repo, venv, home / ".workbook"):
        shutil.rmtree(p, ignore_errors=True)
    shutil.copytree(REPO, repo, ignore=IGNORE)
    subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(repo)], check=True)
    env = {"HOME": str(home), "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "LANG": "C.UTF-8", "USER": entry.pw_name,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip

    def as_user(args: list[str]) -> subprocess.CompletedProcess[str]:
        return _as_user(entry, args, 900, env=env, cwd=repo)

    steps = [
        [SYSTEM_PYTHON, "-m", "venv", str(venv)],
        ["pip", "install", "-q", "-r", "binder/requirements.txt"],
        ["bash", "binder/postBuild"],
    ]
    for step in steps:
        r = as_user(step)
        assert r.returncode == 0, f"{step}: {r.stderr[-3000:]}"
    try:
        r = as_user(["binder/start", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                     "--ExecutePreprocessor.timeout=300", "--output", str(out), "notebooks/00_start_here.ipynb"])  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        nb = json.loads(out.read_text())
        text = json.dumps([c.get("outputs", []) for c in nb["cells"]])
        assert "Seq Scan on messages" in text and "seq_scan_selective_filter" in text
        servers = [p for p in psutil.process_iter(["username", "name"]) if p.info["username"] == entry.pw_name
                   and p.info["name"] == "postgres"]  # fmt: skip
        assert servers, "binder/start started the embedded PostgreSQL as the notebook user"
    finally:
        down = as_user(["workbook", "--home", str(home / ".workbook"), "down", "--destroy"])
        assert down.returncode == 0, down.stderr
    left = [p.pid for p in psutil.process_iter(["username", "name"])
            if p.info["username"] == entry.pw_name and p.info["name"] == "postgres" and p.status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    assert left == [], f"postgres processes {left} outlived workbook down"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
