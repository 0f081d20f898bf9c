"""Hardening of the command line and the cluster: bad input, secrets, output files, dying servers.

Every bad input is one ``error:`` line with exit status 2, no traceback, no password, and nothing
changed; every check runs the real CLI against a real cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import REPO, destroy_and_prove, make_home, run_cli
from workbook import cli
from workbook.cluster import LocalCluster, Target, _ipc, _procs
from workbook.cluster.target import redact_dsn, redact_dsn_text, redact_text
from workbook.dataset import checksum, dataset_info, duckdb_checksum, load, to_duckdb
from workbook.dataset import duck as duck_module
from workbook.dataset.loader import STAGING, stale_staging
from workbook.errors import TargetError, WorkbookError

SCALE, SEED = 0.01, 42
SECRET = "Hunter2secret"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A primary with one replica and a small dataset; the last test of this module fails it over."""
    parent = make_home()
    c = LocalCluster(parent / "home")
    c.up(replicas=1)
    load(c.target(), SCALE, SEED, progress=False)
    yield c
    destroy_and_prove(c)
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_external_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORKBOOK_DSN", "WORKBOOK_REPLICA_DSNS", "WORKBOOK_PORT"):
        monkeypatch.delenv(var, raising=False)


def one_error(rc: int, out: str, err: str, *secrets: str) -> str:
    """The single ``error:`` line of a failed command (exit 2, no traceback, no secret anywhere)."""
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for s in secrets:
        assert s not in out and s not in err, f"{s!r} was printed"
    assert not lines[0][7:8].isupper(), "errors are lowercase"
    return lines[0]


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    got = capsys.readouterr()
    return rc, got.out, got.err


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------------------- passwords

MALFORMED = [
    f"postgresql://u:pa/ss w%zz{SECRET}@127.0.0.1:1/db",  # '/', a space and a bad escape
    f"postgresql://u:p@ss{SECRET}@127.0.0.1:1/db",  # '@' that libpq would split at
    f"postgresql://u:{SECRET}%zz@127.0.0.1:1/db",
    f"postgresql://u@127.0.0.1:1/db?password={SECRET}%zz",
    f"host=127.0.0.1 password='a b{SECRET}' dbname",  # a key without a value
    f"host=127.0.0.1 password='{SECRET}",  # unterminated quote
    f"host=127.0.0.1 port=1 password={SECRET}\\",  # a trailing backslash
    f"host=127.0.0.1 port=1 sslpassword={SECRET} password=x{SECRET}",
]


@pytest.mark.parametrize("dsn", MALFORMED)
def test_malformed_dsns_fail_in_one_line_without_the_password(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    line = one_error(*run_main(capsys, "--dsn", dsn, "status"), SECRET, "ss w%zz", "ss" + SECRET)
    assert "DSN" in line or "cannot connect" in line
    assert SECRET not in redact_dsn(dsn) and SECRET not in redact_dsn_text(dsn)
    assert SECRET not in redact_text(f"oops: {dsn} (again: {' '.join(dsn.split())})", dsn)


def test_dsns_from_the_environment_and_the_api_are_checked_the_same_way() -> None:
    dsn = f"postgresql://u:pa/ss{SECRET}@127.0.0.1:1/db"
    res = run_cli("status", env={"WORKBOOK_DSN": dsn})
    one_error(res.returncode, res.stdout, res.stderr, SECRET)
    for bad in (f"postgresql://u:{SECRET}\x00x@h/db", f"host=h password={SECRET}\x00x", b"host=h", None):
        with pytest.raises(TargetError) as info:
            Target.from_dsn(bad)  # type: ignore[arg-type]
        assert SECRET not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TargetError, match="NUL"):
        Target.from_dsn("host=h", [f"host=h password={SECRET}\x00"])


def test_invalid_utf8_arguments_are_one_line_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBOOK_")}
    for argv in ([b"explain", b"--shape", b"\xff"], [b"--dsn", b"postgresql://u:" + SECRET.encode() + b"\xff@h/db", b"status"]):
        res = subprocess.run([sys.executable.encode(), b"-m", b"workbook", b"--home", str(tmp_path / "h").encode(), *argv],
                             capture_output=True, env=env, timeout=60, check=False)  # fmt: skip
        line = one_error(res.returncode, res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace"), SECRET)
        assert "not valid UTF-8" in line
    assert not (tmp_path / "h").exists()


def test_a_server_error_mid_command_is_one_redacted_line(cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    port = cluster.status()[0].port
    with cluster.target().connect() as admin:
        admin.execute(psycopg.sql.SQL("CREATE ROLE wb_hardening LOGIN PASSWORD {}").format(psycopg.sql.Literal(SECRET)))
    try:  # connects, then the server refuses a query: psycopg's error reaches the top
        dsn = f"postgresql://wb_hardening:{SECRET}@127.0.0.1:{port}/workbook"
        line = one_error(*run_main(capsys, "--dsn", dsn, "dataset"), SECRET)
        assert "the server refused the command" in line and "permission denied" in line
    finally:
        with cluster.target().connect() as admin:
            admin.execute("DROP ROLE wb_hardening")
    # a session the server drops mid-command: one line that says to check the cluster
    target = cluster.target()
    with target.connect() as victim, target.connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError) as info:
            victim.execute("SELECT 1")
    message = cli._server_error(info.value, None)
    assert message.startswith("the server connection failed: ") and "workbook up" in message
    assert "\n" not in message


# ------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "args, expect",
    [
        (["compare", "--shape", "x", "--index", "y", "--repeats", "0"], "--repeats must be from 2"),
        (["compare", "--shape", "x", "--index", "y", "--repeats", "1"], "--repeats must be from 2"),
        (["report", "--repeats", "-1"], "--repeats must be from 2"),
        (["advise", "--sql", "select 1", "--repeats", "10001"], "to 10000"),
        (["up", "--replicas", "17"], "replica count must be at most 16"),
        (["up", "--replicas", "-1"], "replica count must be >= 0"),
        (["up", "--replicas", "12"], "at most 9"),  # max_wal_senders of a new primary is 10
        (["load", "--seed", str(2**31)], "--seed must be from 0"),
        (["up", "--port", "80"], "from 1024 to 65535"),
        (["up", "--port", "70000"], "from 1024 to 65535"),
        (["lab", "--lab-port", "0"], "--lab-port"),
        (["psql", "--node", ""], "--node needs a node name"),
        (["dataset", "--duckdb", "/nonexistent-folder/copy.duckdb"], "does not exist"),
    ],
)
def test_bad_arguments_fail_in_one_line_and_create_nothing(
    scratch_home: Path, capsys: pytest.CaptureFixture[str], args: list[str], expect: str
) -> None:
    line = one_error(*run_main(capsys, "--home", str(scratch_home), *args))
    assert expect in line, line
    assert not scratch_home.exists()


def test_bad_homes_fail_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    assert "empty path" in one_error(*run_main(capsys, "--home", "", "status"))
    assert "empty path" in one_error(*run_main(capsys, "--home", " ", "down", "--destroy"))
    assert "is a file" in one_error(*run_main(capsys, "--home", str(afile), "status"))
    assert "is a file" in one_error(*run_main(capsys, "--home", str(afile), "up"))
    assert "is a file" in one_error(*run_main(capsys, "--home", str(afile / "home"), "up"))
    assert afile.read_text() == "keep me\n" and files_under(tmp_path) == {"afile"}
    with pytest.raises(WorkbookError, match="empty path"):
        LocalCluster("")


def test_unwritable_places_fail_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    readonly = Path("/proc/sys")  # read-only even for root in most containers
    if os.access(readonly, os.W_OK):
        pytest.skip(f"not applicable: {readonly} is writable here")
    line = one_error(*run_main(capsys, "--home", str(readonly / "wb-home"), "up"))
    assert "not writable" in line
    line = one_error(*run_main(capsys, "--home", str(readonly / "wb-home"), "dataset", "--duckdb", "x.duckdb"))
    assert "not writable" in line
    with pytest.raises(WorkbookError, match="not writable"):
        duck_module.check_duckdb_path(readonly / "copy.duckdb")


def test_unknown_node_for_psql_is_one_line(cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(*run_main(capsys, "--home", str(cluster.home), "psql", "--node", "ghost", "-c", "select 1"))
    assert "no node 'ghost'" in line


def test_port_and_replica_limits_on_an_existing_cluster(cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    before = cluster.status()
    port = before[0].port
    other = port + 7 if port + 7 <= 65535 else port - 7
    line = one_error(*run_main(capsys, "--home", str(cluster.home), "up", "--port", str(other)))
    assert f"already listens on port {port}" in line
    # max_wal_senders is 10: at most 9 replicas (one sender more while one is built); refused up front
    line = one_error(*run_main(capsys, "--home", str(cluster.home), "up", "--replicas", "12"))
    assert "max_wal_senders=10" in line and "at most 9" in line
    assert sorted(p.name for p in (cluster.home / "nodes").iterdir()) == ["primary", "replica1"]
    with cluster.target().connect() as conn:
        assert [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")] == ["wb_replica1"]
    assert [(n.name, n.port, n.pid) for n in cluster.status()] == [(n.name, n.port, n.pid) for n in before]
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(WorkbookError, match="seconds > 0"):
            cluster.wait_caught_up(timeout=bad)
    with pytest.raises(WorkbookError, match="1024 to 65535"):
        LocalCluster(cluster.home, port=22)


# ---------------------------------------------------------------------------- --duckdb


def test_duckdb_copy_refuses_to_overwrite_or_touch_secrets_and_leaves_no_temp(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ["--home", str(cluster.home)]
    out = tmp_path / "copy.duckdb"
    out.write_bytes(b"precious")
    line = one_error(*run_main(capsys, *home, "dataset", "--duckdb", str(out)))
    assert "already exists" in line and "--force" in line
    assert out.read_bytes() == b"precious"
    line = one_error(*run_main(capsys, *home, "dataset", "--duckdb", str(tmp_path)))
    assert "is a folder" in line
    secrets = cluster.home / "secrets"
    before = files_under(secrets)
    for inside in (secrets / "copy.duckdb", secrets / "password", cluster.home / "secrets" / ".." / "secrets" / "x"):
        line = one_error(*run_main(capsys, *home, "dataset", "--duckdb", str(inside), "--force"))
        assert "secrets folder" in line
    assert files_under(secrets) == before

    rc, _out, err = run_main(capsys, *home, "dataset", "--duckdb", str(out), "--force")
    assert rc == 0, err
    assert files_under(tmp_path) == {"copy.duckdb"}
    import duckdb

    with cluster.target().connect() as conn, duckdb.connect(str(out)) as duck:
        assert duckdb_checksum(duck) == checksum(conn)

    # a copy interrupted midway (Ctrl-C) leaves neither a temporary file nor a partial copy
    real_copy = duck_module._copy_table
    calls = []

    def interrupted(*args: Any) -> None:
        calls.append(args[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_copy(*args)

    fresh = tmp_path / "fresh.duckdb"
    duck_module._copy_table = interrupted  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            to_duckdb(cluster.target(), fresh)
    finally:
        duck_module._copy_table = real_copy  # type: ignore[assignment]
    assert len(calls) == 3
    assert files_under(tmp_path) == {"copy.duckdb"}


# ---------------------------------------------------------------------- dying servers


def _postmaster(cluster: LocalCluster, node: str) -> int:
    return int((cluster.home / "nodes" / node / "data" / "postmaster.pid").read_text().split()[0])


def test_server_killed_mid_load_is_one_line_and_the_dataset_is_unchanged(cluster: LocalCluster) -> None:
    with cluster.target().connect() as conn:
        before = checksum(conn)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbook", "--home", str(cluster.home), "load", "--scale", "0.3", "--seed", "7", "--quiet"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with cluster.target().connect() as conn:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                row = conn.execute("SELECT count(*) FROM pg_stat_progress_copy WHERE tuples_processed > 0").fetchone()
                if row[0]:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the load ended before it could be killed"
            os.kill(_postmaster(cluster, "primary"), signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    line = one_error(proc.returncode, out, err, cluster.password_file.read_text().strip())
    assert "the server is down" in line and "workbook up" in line and "dataset is unchanged" in line, line
    cluster.up()
    with cluster.target().connect() as conn:
        assert dataset_info(conn).seed == SEED  # type: ignore[union-attr]
        assert checksum(conn) == before
    load(cluster.target(), SCALE, SEED, progress=False)  # drops whatever the killed load staged
    with cluster.target().connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (STAGING,)).fetchone()[0] == 0
        assert stale_staging(conn) is None
        assert checksum(conn) == before
    cluster.wait_caught_up()


def _password_anywhere(root: Path, password: str) -> list[str]:
    found = subprocess.run(["grep", "-rlF", password, str(root)], capture_output=True, text=True, check=False)
    return found.stdout.split()


def test_crashed_primary_promote_warns_of_lost_commits_and_no_file_holds_the_password(cluster: LocalCluster) -> None:
    password = cluster.password_file.read_text().strip()
    assert _password_anywhere(cluster.home / "nodes", password) == []
    passfile = cluster.home / "secrets" / "pgpass"
    assert passfile.stat().st_mode & 0o777 == 0o600
    conf = (cluster.home / "nodes" / "replica1" / "data" / "postgresql.auto.conf").read_text()
    assert "passfile=" in conf and "password=" not in conf

    # the replica stops receiving, the primary writes on, then crashes
    with cluster._connect("replica1") as rep:
        rep.execute("ALTER SYSTEM SET primary_conninfo = ''")
        rep.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while rep.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        received = rep.execute("SELECT pg_last_wal_receive_lsn()").fetchone()[0]
    with cluster.target().connect() as conn:
        conn.execute("CREATE TABLE lost_on_failover AS SELECT generate_series(1, 1000) AS id")
        behind = int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (received,)).fetchone()[0])
    data = cluster.home / "nodes" / "primary" / "data"
    shmid = int((data / "postmaster.pid").read_text().splitlines()[6].split()[1])
    segments = _procs.shm_segments(p.pid for p in _procs.processes_in(data))
    assert segments and _ipc._sysv(shmid) is not None
    os.kill(_postmaster(cluster, "primary"), signal.SIGKILL)

    res = run_cli("--home", str(cluster.home), "promote", "replica1")
    assert res.returncode == 0, res.stderr
    # the crashed primary's data directory is dropped, so no start of PostgreSQL would ever free its shared memory:
    # the workbook does (its System V header and the /dev/shm segments it listed), or they stay in RAM until reboot
    assert _ipc._sysv(shmid) is None and not [p for p in segments if p.exists()]
    warnings = res.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), res.stderr
    assert "not shut down cleanly" in warnings[0] and "may be lost" in warnings[0]
    reported = re.search(r"was ([\d,]+) bytes behind the WAL on the old primary's disk", warnings[0])
    assert reported, warnings[0]
    # what it wrote after our last look (a running-transactions record) may add a few bytes
    assert behind <= int(reported.group(1).replace(",", "")) <= behind + 8192, (behind, warnings[0])
    assert "Traceback" not in res.stderr and password not in res.stdout + res.stderr

    # a clean failover (the primary still runs): no warning, and the API says so
    cluster.add_replica()
    nodes = cluster.promote("replica2")
    assert [(n.name, n.role) for n in nodes] == [("replica2", "primary")]
    assert cluster.last_failover is not None and cluster.last_failover.clean_shutdown is True
    assert cluster.last_failover.warning is None
    assert _password_anywhere(cluster.home / "nodes", password) == []
    assert sorted(_password_anywhere(cluster.home / "secrets", password)) == sorted([str(cluster.password_file), str(passfile)])


def test_a_reader_that_goes_away_is_not_a_traceback() -> None:
    """`workbook doctor | head -0`: the pipe closes before the output is written; no traceback, the
    exit status a shell shows for a writer ended by SIGPIPE."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "workbook", "doctor"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the command (a second of imports and probes away) writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err
