"""The workbook command and external targets: output shapes, bad input, secrets."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import psycopg
import pytest

from workbook.cluster import LocalCluster, Target, redact_dsn
from workbook.cluster.target import redact_text
from workbook.errors import ReadOnlyTarget, TargetError

from .conftest import run_cli


def _one_line_error(res) -> str:  # type: ignore[no-untyped-def]
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_status_json_has_the_documented_shape(replicated: LocalCluster) -> None:
    res = run_cli("--home", str(replicated.home), "status", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [n["name"] for n in doc["nodes"]] == ["primary", "replica1", "replica2"]
    for n in doc["nodes"]:
        assert set(n) == {"name", "role", "pid", "port", "state", "lag_bytes", "lag_seconds", "cpu_budget", "tls", "upstream"}
        assert n["cpu_budget"] is None, "no budget was asked for"
        assert n["role"] in ("primary", "replica")
        assert isinstance(n["pid"], int) and isinstance(n["port"], int)
    assert [n["role"] for n in doc["nodes"]] == ["primary", "replica", "replica"]
    assert replicated.password_file.read_text().strip() not in res.stdout


def test_psql_runs_on_a_named_node(replicated: LocalCluster) -> None:
    res = run_cli("--home", str(replicated.home), "psql", "--node", "replica2", "-At", "-c",
                  "SELECT pg_is_in_recovery()")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "t"


def test_external_target_status_and_read_only_by_default(replicated: LocalCluster) -> None:
    local = replicated.target()
    ext = Target.from_dsn(local.primary.dsn, [r.dsn for r in local.replicas])
    assert ext.allow_writes is False
    res = run_cli("--dsn", local.primary.dsn, "--replica-dsn", local.replicas[0].dsn, "status", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["target"] == "external"
    assert [(n["role"], n["pid"]) for n in doc["nodes"]] == [("primary", None), ("replica", None)]
    with pytest.raises(ReadOnlyTarget, match="read-only"):
        ext.require_writes("loading the dataset")
    with ext.connect() as conn:  # enforced by the server too, not only by our check
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE must_not_exist (id int)")
    with local.connect() as conn:
        assert conn.execute("SELECT to_regclass('must_not_exist')").fetchone()[0] is None
    writable = Target.from_dsn(local.primary.dsn, allow_writes=True)
    writable.require_writes("loading the dataset")
    res = run_cli("--dsn", local.primary.dsn, "psql", "-c", "CREATE TABLE must_not_exist (id int)")
    assert res.returncode != 0 and "read-only" in res.stderr


def test_external_target_with_a_dead_replica_reports_it(replicated: LocalCluster) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead = f"postgresql://postgres:pw@127.0.0.1:{dead_port}/workbook"
    ext = Target.from_dsn(replicated.target().primary.dsn, [dead])
    nodes = ext.status()
    assert [(n.role, n.state) for n in nodes] == [("primary", "running"), ("replica", "unreachable")]


def test_dsn_passwords_never_show(replicated: LocalCluster) -> None:
    secret = "s3cr3t-Pa55"
    ext = Target.from_dsn(f"postgresql://app:{secret}@127.0.0.1:1/db", [f"host=127.0.0.1 password={secret} port=2"])
    assert secret not in repr(ext) and secret not in str(ext)
    assert secret not in repr(ext.primary)
    assert "********" in redact_dsn(f"postgresql://app:{secret}@h/db")
    with pytest.raises(TargetError) as info:
        ext.connect()
    assert secret not in str(info.value)
    local_pw = replicated.password_file.read_text().strip()
    assert local_pw not in repr(replicated.target())


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--dsn", "postgresql://app:hunter2@127.0.0.1:1/db", "status"], "is the server running"),
        (["--dsn", "postgresql://app:hunter2@no-such-host.invalid/db", "status"], "host name"),
        (["--dsn", "host=127.0.0.1 password='hunter2", "status"], "not a valid PostgreSQL DSN"),
        (["--dsn", "postgresql://app:hunter2@127.0.0.1:1/db", "up"], "manages the local cluster"),
    ],
)
def test_bad_external_dsns_fail_with_one_line(args: list[str], expect: str) -> None:
    line = _one_line_error(run_cli(*args))
    assert expect.lower() in line.lower()  # a refused connection: libpq's own "Is the server running ...?"
    assert "hunter2" not in line


def test_wrong_password_fails_with_one_line(replicated: LocalCluster) -> None:
    port = replicated.status()[0].port
    line = _one_line_error(run_cli("--dsn", f"postgresql://postgres:wrong-pw@127.0.0.1:{port}/workbook", "status"))
    assert "password authentication failed" in line and "check the user name and password" in line
    assert "wrong-pw" not in line


def test_missing_binaries_fail_with_one_line_and_create_nothing(tmp_path: Path, scratch_home: Path) -> None:
    home = scratch_home
    line = _one_line_error(run_cli("--home", str(home), "up", env={"WORKBOOK_PG_BIN": str(tmp_path / "nope")}))
    assert "WORKBOOK_PG_BIN" in line and "missing initdb" in line
    assert not home.exists()


def test_port_taken_fails_with_one_line_and_creates_nothing(scratch_home: Path) -> None:
    home = scratch_home
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = _one_line_error(run_cli("--home", str(home), "up", "--port", str(port)))
    assert f"port {port}" in line and "--port" in line
    assert not home.exists()


def test_port_taken_at_restart_is_a_clear_error(cluster_factory) -> None:
    c = cluster_factory()
    c.up()
    port = c.status()[0].port
    c.stop()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old server's TIME_WAITs
        s.bind(("127.0.0.1", port))
        s.listen()
        line = _one_line_error(run_cli("--home", str(c.home), "up"))
        assert f"port {port}" in line and "taken" in line
    assert c.status()[0].state == "down"
    assert c.up()[0].state == "running"


def test_promote_unknown_node_fails_with_one_line(replicated: LocalCluster) -> None:
    line = _one_line_error(run_cli("--home", str(replicated.home), "promote", "ghost"))
    assert "no node 'ghost'" in line and "workbook status" in line
    assert [n.role for n in replicated.status()] == ["primary", "replica", "replica"]


def test_status_without_a_cluster_says_how_to_start_one(scratch_home: Path) -> None:
    home = scratch_home
    line = _one_line_error(run_cli("--home", str(home), "status"))
    assert "workbook up" in line
    assert not home.exists()
    res = run_cli("--home", str(home), "down")
    assert res.returncode == 0 and "nothing to stop" in res.stdout


def test_other_postgresql_binaries_can_be_used(cluster_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = Path("/usr/lib/postgresql/15/bin")
    if not (debian / "postgres").exists():
        pytest.skip("no distribution PostgreSQL 15 on this machine")
    c = cluster_factory(pg_bin=debian)
    nodes = c.up(replicas=1)
    assert [n.state for n in nodes] == ["running", "streaming"]
    with c.target().connect() as conn:
        assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("15")
    # the choice is remembered: a new object (a new process) keeps using those binaries
    assert json.loads(c.state_file.read_text())["pg_version"].startswith("15")
    monkeypatch.delenv("WORKBOOK_PG_BIN", raising=False)
    assert LocalCluster(c.home).bins.major == 15


def test_lab_starts_the_cluster_and_serves_the_notebooks(scratch_home: Path) -> None:
    import re
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env.pop("WORKBOOK_DSN", None)
    lab = subprocess.Popen(
        [sys.executable, "-m", "workbook", "--home", str(scratch_home), "lab", "--no-browser",
         "--lab-port", str(port), "--notebooks", str(Path(__file__).resolve().parents[1] / "notebooks")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        token = None
        deadline = time.monotonic() + 60
        seen = []
        while token is None and time.monotonic() < deadline:
            line = lab.stdout.readline()
            seen.append(line)
            m = re.search(r"token=([0-9a-f]+)", line)
            token = m.group(1) if m else None
        assert token, "".join(seen)[-2000:]
        names: list[str] = []
        while not names and time.monotonic() < deadline:  # the URL is printed just before it listens
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=10) as r:
                    names = [c["name"] for c in json.load(r)["content"]]
            except OSError:
                time.sleep(0.2)
        assert "README.md" in names
        assert LocalCluster(scratch_home).status()[0].state == "running"
    finally:
        lab.terminate()
        lab.wait(30)
        LocalCluster(scratch_home).destroy()


def test_negative_replica_count_on_a_fresh_home_creates_nothing(scratch_home: Path) -> None:
    line = _one_line_error(run_cli("--home", str(scratch_home), "up", "--replicas", "-1"))
    assert "replica count must be >= 0" in line
    assert not scratch_home.exists()


def test_psql_on_a_stopped_cluster_says_to_start_it(cluster_factory) -> None:
    c = cluster_factory()
    c.up()
    c.stop()
    line = _one_line_error(run_cli("--home", str(c.home), "psql", "-c", "select 1"))
    assert "is down" in line and "workbook up" in line


def test_a_short_password_is_hidden_without_mangling_the_message() -> None:
    # "p" as the password: every "p" of "primary" and "port" used to become ******** (and spelled the password out)
    line = _one_line_error(run_cli("--dsn", "postgresql://u:p@127.0.0.1:1/db", "status"))
    assert "cannot connect to primary" in line and "port=1" in line and "workbook up" in line, line
    assert "password=********" in line and "********r" not in line, line
    assert redact_text("the password p was refused; pp and p2 stay", "postgresql://u:p@h/db") == (
        "the password ******** was refused; pp and p2 stay")
