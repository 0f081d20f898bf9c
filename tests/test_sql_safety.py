"""SQL from a user is one statement and cannot escape the rolled-back, read-only session.

A property-based fuzz (Hypothesis) over the CLI (``workbook.cli.main`` in-process, so a thousand
inputs run in seconds; a few through a real subprocess too) and the Python API (``explain``,
``advise``, ``parse_shape``, ``clock_distortion``), against the local cluster and against a
**read-only external target**: Debian's PostgreSQL 15 started by the test and reached by a
superuser DSN, as a careless user would point the workbook at production.

For every input: either a correct answer, or exit status 2 with exactly one ``error:`` line and no
traceback. After every input: the catalog (relations, indexes, roles, databases, prepared
transactions, replication slots, settings and the configuration files, comments, advisory
locks), the rows of the tables the inputs aim at, and a canary folder that COPY/lo_export would
write into are unchanged; at the end, the dataset's content checksum too. No password appears in
any output.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbook.cli import main
from workbook.cluster import LocalCluster, Target
from workbook.dataset import checksum
from workbook.dataset.shapes import parse_shape
from workbook.errors import WorkbookError
from workbook.experiment import advise, explain
from workbook.experiment.distortion import clock_distortion

from .conftest import destroy_and_prove, make_home

PG15 = Path("/usr/lib/postgresql/15/bin")
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])  # fmt: skip

STATE_SQL = """
SELECT x FROM (
  SELECT 'rel:' || n.nspname || '.' || c.relname || ':' || c.relkind::text FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%%'
     AND n.nspname NOT LIKE 'pg_toast_temp%%'
  UNION ALL SELECT 'idx:' || indexdef FROM pg_indexes
  UNION ALL SELECT 'role:' || rolname || rolsuper::text || rolcanlogin::text FROM pg_roles
  UNION ALL SELECT 'db:' || datname FROM pg_database
  UNION ALL SELECT 'dbset:' || coalesce(setconfig::text, '') FROM pg_db_role_setting
  UNION ALL SELECT 'px:' || gid FROM pg_prepared_xacts
  UNION ALL SELECT 'slot:' || slot_name FROM pg_replication_slots
  UNION ALL SELECT 'set:' || name || '=' || setting || ':' || source FROM pg_settings WHERE source NOT IN ('session', 'client') AND name NOT LIKE '%%.%%'
  UNION ALL SELECT 'file:' || coalesce(sourcefile, '') || ':' || coalesce(name, '') || '=' || coalesce(setting, '') FROM pg_file_settings
  UNION ALL SELECT 'desc:' || description FROM pg_description WHERE objoid >= 16384
  UNION ALL SELECT 'stx:' || stxname FROM pg_statistic_ext
  UNION ALL SELECT 'adv:' || objid::text FROM pg_locks WHERE locktype = 'advisory'
  UNION ALL SELECT 'seq:' || sequencename || ':' || coalesce(last_value, 0)::text FROM pg_sequences
     WHERE sequencename <> 'organisations_id_seq'  -- a rolled-back INSERT still advances it (not transactional)
  UNION ALL SELECT 'rows:' || md5(string_agg(f::text, ',' ORDER BY f.id)) FROM ai_app.feature_flags f
  UNION ALL SELECT 'rows:' || md5(string_agg(o::text, ',' ORDER BY o.id)) FROM ai_app.organisations o
) s(x) ORDER BY x
"""

# ---------------------------------------------------------------------------------------- inputs
READS = [
    "select count(*) from ai_app.feature_flags where key = 'a;b'",
    "select key from ai_app.feature_flags where key like $q$%;commit;%$q$",
    'select 1 as "odd;""name", \'it\'\'s; fine\' as "ü ✓"',
    "select e'\\'; drop table ai_app.organisations; --' as x",
    "select id from ai_app.organisations where slug = 'x' /* ; commit; */ order by id",
    "  (select name from ai_app.organisations where id < 3)  ",
    "with t as (select id from ai_app.organisations) select count(*) from t",
    "select 1 -- ; drop table ai_app.organisations",
    "select 99999999999999999999999999999999999999::numeric * 1e300",
    "select pg_sleep(0.01)",
]
WRITES = [
    "update ai_app.feature_flags set enabled = not enabled where id = 1",
    "delete from ai_app.feature_flags where key like 'a%'",
    "insert into ai_app.organisations (name, slug, plan, created_at) values ('x', 'fuzz-x', 'free', now())",
    "with d as (delete from ai_app.feature_flags returning id) select count(*) from d",
    "select * from ai_app.organisations where id = 1 for update",
]


def dangerous(canary: Path) -> list[str]:
    return [
        "commit", "end", "begin", "begin read write", "start transaction read write", "rollback", "abort",
        "savepoint s1", "release savepoint s1", "rollback to savepoint s1", "prepare transaction 'wbfuzz'",
        "commit prepared 'wbfuzz'", "set transaction read write", "set session characteristics as transaction read write",
        "set default_transaction_read_only = off", "reset all", "discard all",
        "update ai_app.organisations set name = 'pwned'", "delete from ai_app.feature_flags",
        "drop table ai_app.feature_flags", "truncate ai_app.organisations cascade",
        "alter table ai_app.feature_flags add column pwned int", "create table ai_app.pwned (x int)",
        "create index pwned on ai_app.feature_flags (key)", "create role pwned superuser login",
        "grant all on ai_app.organisations to public", "comment on table ai_app.organisations is 'pwned'",
        f"copy (select 1) to program 'touch {canary}/program'", f"copy ai_app.organisations to '{canary}/file'",
        "copy ai_app.organisations from '/etc/hostname'",
        "do $$begin perform 1; end$$", "do $body$ begin execute 'drop table ai_app.feature_flags'; end $body$",
        "call pwned()", "vacuum", "vacuum full ai_app.organisations", "analyze", "checkpoint", "cluster",
        "create database pwned", "drop database postgres", "alter system set work_mem = '1MB'",
        "alter database postgres set work_mem = '1MB'", "load 'plpgsql'", "listen pwned", "notify pwned",
        "lock table ai_app.organisations", "declare c cursor for select 1", "prepare p as select 1",
        "execute p", "deallocate all", "explain analyze delete from ai_app.feature_flags", "show all",
        "select pg_terminate_backend(pid) from pg_stat_activity where pid <> pg_backend_pid()",
        "select pg_catalog.pg_cancel_backend(1)", "select \"pg_reload_conf\"()", "select pg_switch_wal()",
        f"select lo_export(lo_create(0), '{canary}/lo')", "select lo_import('/etc/hostname')",
        "select pg_read_file('/etc/hostname')", "select setval('ai_app.feature_flags_id_seq', 1)",
        "select nextval('ai_app.organisations_id_seq')", "select pg_advisory_lock(42)",
        "select query_to_xml('select pg_terminate_backend(1)', true, true, '')",
        "select * into ai_app.pwned from ai_app.organisations", "select pg_create_physical_replication_slot('pwned')",
        "select pg_stat_reset()", "select set_config('default_transaction_read_only', 'off', false)",
    ]  # fmt: skip


SEPARATORS = [";", "; ", ";\n", " ;  ", "/* c */;", ";-- x\n", ";\t\n", ";;"]


def case(draw: Any, text: str) -> str:
    how = draw(st.sampled_from(["as is", "upper", "lower", "mixed"]))
    if how == "upper":
        return text.upper()
    if how == "lower":
        return text.lower()
    if how == "mixed":
        flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
        return "".join(c.upper() if f else c.lower() for c, f in zip(text, flips))
    return text


@st.composite
def user_sql(draw: Any, canary: Path) -> str:
    """Multi-statement strings, transaction control, refused commands, odd identifiers, unicode and NUL."""
    bad = dangerous(canary)
    kind = draw(st.sampled_from(["chain", "chain", "single-bad", "read", "write", "noise", "unicode"]))
    if kind == "chain":
        parts = [draw(st.sampled_from(READS + WRITES))]
        parts += draw(st.lists(st.sampled_from(bad), min_size=1, max_size=3))
        text = ""
        for p in parts:
            text += (draw(st.sampled_from(SEPARATORS)) if text else "") + case(draw, p)
        return text + draw(st.sampled_from(["", ";", "; -- end"]))
    if kind == "single-bad":
        lead = draw(st.sampled_from(["", " ", "\n", "/* x */ ", "-- c\n", "((", "("]))
        return lead + case(draw, draw(st.sampled_from(bad))) + draw(st.sampled_from(["", ";", " ; "]))
    if kind == "read":
        return draw(st.sampled_from(READS)) + draw(st.sampled_from(["", ";", "; ", "; -- done"]))
    if kind == "write":
        return case(draw, draw(st.sampled_from(WRITES)))
    if kind == "noise":
        return draw(st.sampled_from(["select ", "SELECT 1 ", "", "with x as (", "values ("])) + draw(
            st.text(alphabet=string.printable, max_size=60)
        )
    return draw(st.sampled_from(["select ", ""])) + draw(
        st.text(alphabet=st.characters(blacklist_categories=()), max_size=30)  # NUL and lone surrogates included
    )


# -------------------------------------------------------------------------------------- fixtures
class World:
    """A target, a connection that watches it, the canary folder, and the state to compare with."""

    def __init__(self, target: Target, home: Path | None, canary: Path, passwords: list[str]) -> None:
        self.target, self.home, self.canary, self.passwords = target, home, canary, passwords
        self.watch = target.connect()
        self.watch.execute("SET default_transaction_read_only = on")
        self.before = self.state()
        self.checksum = checksum(self.watch).value if home is not None else None

    def state(self) -> list[str]:
        return [r[0] for r in self.watch.execute(STATE_SQL).fetchall()]

    def assert_unchanged(self, what: str) -> None:
        assert not list(self.canary.iterdir()), f"{what!r} wrote into the canary folder"
        now = self.state()
        if now != self.before:
            gone, new = sorted(set(self.before) - set(now)), sorted(set(now) - set(self.before))
            pytest.fail(f"{what!r} changed the server's state: gone {gone[:5]}, new {new[:5]}")
        assert self.watch.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'workbook'"
                                  " AND pid <> pg_backend_pid() AND state <> 'idle'").fetchone()[0] == 0  # fmt: skip

    def cli(self, *args: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            base = ["--home", str(self.home)] if self.home else ["--dsn", self.target.primary.dsn]
            rc = main([*base, *args])
        return rc, out.getvalue() + err.getvalue()


def make_canary() -> Path:
    d = make_home("wb-canary-")
    d.chmod(0o777)  # the server's OS user could write here, if anything let it
    return d


@pytest.fixture(scope="module")
def local(lab: LocalCluster) -> Iterator[World]:
    canary = make_canary()
    world = World(lab.target(), lab.home, canary, [lab._password()])
    yield world
    world.assert_unchanged("the whole module")
    assert checksum(world.watch).value == world.checksum, "the dataset's rows changed"
    world.watch.close()
    shutil.rmtree(canary, ignore_errors=True)


@pytest.fixture(scope="module")
def external() -> Iterator[World]:
    """Debian's PostgreSQL 15 as a user's own server, reached read-only with a superuser DSN."""
    if not (PG15 / "postgres").exists():
        pytest.skip("Debian's PostgreSQL 15 is not installed (.ci/run installs it)")
    parent = make_home("wb-ext15-")
    cluster = LocalCluster(parent / "home", pg_bin=PG15)
    cluster.up(replicas=0)
    try:
        with cluster.target().connect() as conn:
            conn.execute("CREATE SCHEMA ai_app")
            conn.execute("CREATE TABLE ai_app.organisations (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                         " name text NOT NULL, slug text NOT NULL UNIQUE, plan text NOT NULL, created_at timestamptz NOT NULL)")
            conn.execute("CREATE TABLE ai_app.feature_flags (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                         " org_id bigint, key text NOT NULL, enabled boolean NOT NULL)")
            conn.execute("INSERT INTO ai_app.organisations (name, slug, plan, created_at)"
                         " SELECT 'org ' || i, 'org-' || i, 'free', now() FROM generate_series(1, 500) i")
            conn.execute("INSERT INTO ai_app.feature_flags (org_id, key, enabled)"
                         " SELECT i % 50, 'flag_' || (i % 7), i % 2 = 0 FROM generate_series(1, 2000) i")
            conn.execute("ANALYZE")  # fmt: skip
        canary = make_canary()
        target = Target.from_dsn(cluster.dsn(), allow_writes=False)
        world = World(target, None, canary, [cluster._password()])
        yield world
        world.assert_unchanged("the whole module")
        world.watch.close()
        shutil.rmtree(canary, ignore_errors=True)
    finally:
        destroy_and_prove(cluster)
        shutil.rmtree(parent, ignore_errors=True)


def assert_answer_or_one_error(rc: int, output: str, world: World, what: str) -> None:
    assert "Traceback" not in output, f"{what!r} gave a traceback:\n{output}"
    for pw in world.passwords:
        assert pw not in output, f"{what!r} printed a password"
    if rc != 0:
        assert rc == 2, f"{what!r}: exit status {rc}\n{output}"
        lines = [ln for ln in output.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1 and lines[-1].startswith("error:"), f"{what!r}: not one error line:\n{output}"


# ------------------------------------------------------------------------------------------ tests
def test_refused_before_anything_reaches_the_server(local: World, tmp_path: Path) -> None:
    """The classic escapes of the issue, each refused up front with its own one-line reason: libpq's
    protocol trace of the connection shows that not one message was sent for them."""
    cases = {
        "select 1; commit; begin read write; update ai_app.organisations set name = 'x'; commit": "more than one statement",
        "select 1; prepare transaction 'x'": "more than one statement",
        "commit": "transaction control (COMMIT)",
        "prepare transaction 'x'": "transaction control (PREPARE TRANSACTION)",
        f"copy (select 1) to program 'touch {local.canary}/x'": "COPY",
        "do $$ begin end $$": "procedural code",
        "vacuum": "maintenance",
        "create database x": "CREATE DATABASE",
        "alter system set work_mem = '1MB'": "ALTER SYSTEM",
        "select 1\x00": "NUL byte",
        "select pg_terminate_backend(1)": "pg_terminate_backend()",
        "select * into ai_app.x from ai_app.organisations": "SELECT ... INTO",
        42: "must be a str",
    }
    trace = tmp_path / "libpq.trace"
    with local.target.connect() as conn, open(trace, "w") as fh:
        conn.pgconn.trace(fh.fileno())
        try:
            for sql_text, reason in cases.items():
                with pytest.raises(WorkbookError) as err:
                    explain(conn, sql_text)  # type: ignore[arg-type]
                assert reason in str(err.value) and "\n" not in str(err.value), (sql_text, str(err.value))
        finally:
            conn.pgconn.untrace()
        assert trace.read_text() == "", "a refused statement reached the server"
        explain(conn, "select 1")  # the same connection still works
    local.assert_unchanged("the refusals")


def test_a_write_runs_and_is_rolled_back_on_the_local_cluster(local: World) -> None:
    with local.target.connect() as conn:
        plan = explain(conn, "delete from ai_app.feature_flags")
    assert plan.root.node_type == "ModifyTable" and plan.root.actual_rows is not None
    local.assert_unchanged("delete from ai_app.feature_flags")


def test_a_read_runs_in_a_read_only_transaction(local: World) -> None:
    # a data-modifying CTE is a write the server would refuse in a read-only transaction; so the
    # check must classify it as a write, and a plain read must see transaction_read_only = on
    with local.target.connect() as conn:
        plan = explain(conn, "select current_setting('transaction_read_only') as ro")
        ro = conn.execute("SELECT current_setting('transaction_read_only')").fetchone()[0]
    assert plan.root.node_type == "Result" and ro == "off", "read-only was local to the experiment's transaction"
    with local.target.connect() as conn:
        row = conn.execute("SELECT 1").fetchone()
        assert row == (1,)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_fuzz_cli_advise_local(local: World, data: st.DataObject) -> None:
    text = data.draw(user_sql(local.canary))
    rc, out = local.cli("advise", "--sql", text, "--repeats", "2", "--no-write-cost")
    assert_answer_or_one_error(rc, out, local, text)
    local.assert_unchanged(text)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_fuzz_api_explain_and_shapes_local(local: World, data: st.DataObject) -> None:
    text = data.draw(user_sql(local.canary))
    with local.target.connect() as conn:
        try:
            plan = explain(conn, text, timeout_s=5)
            assert plan.root is not None
        except WorkbookError as exc:
            assert "\n" not in str(exc)
    try:
        parse_shape(f"-- shape: fuzz\n-- title: fuzz\n-- variant: a\n{text}\n")
    except WorkbookError as exc:
        assert "\n" not in str(exc)
    local.assert_unchanged(text)


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzz_cli_advise_read_only_external(external: World, data: st.DataObject) -> None:
    text = data.draw(user_sql(external.canary))
    rc, out = external.cli("advise", "--sql", text, "--repeats", "2", "--no-write-cost")
    assert_answer_or_one_error(rc, out, external, text)
    external.assert_unchanged(text)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_fuzz_api_read_only_external(external: World, data: st.DataObject) -> None:
    text = data.draw(user_sql(external.canary))
    for call in (lambda: explain(external.watch, text, timeout_s=5),
                 lambda: advise(external.target, text, repeats=2, measure_write_cost=False),
                 lambda: clock_distortion(external.target, text, repeats=1)):  # fmt: skip
        try:
            call()
        except WorkbookError as exc:
            assert "\n" not in str(exc)
    external.assert_unchanged(text)


def test_writes_on_a_read_only_target_are_refused_up_front(external: World) -> None:
    for text in WRITES:
        rc, out = external.cli("advise", "--sql", text, "--no-write-cost")
        if text.startswith(("update", "delete")):  # advice is for the read that finds the rows
            assert rc == 0 and f"advice for the read the {text.split()[0].upper()} does" in out, out
        else:
            assert rc == 2 and out.startswith("error:"), out
        with pytest.raises(WorkbookError, match="read-only"):
            explain(external.watch, text)
    external.assert_unchanged("the writes")


def test_cli_through_a_real_process_gives_one_line(local: World) -> None:
    from .conftest import run_cli

    for text in ("select 1; commit; drop table ai_app.organisations", "commit", "select \x01\x02 from nowhere"):
        r = run_cli("--home", str(local.home), "advise", "--sql", text, "--no-write-cost")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:"), r.stderr
    local.assert_unchanged("the CLI runs")


@st.composite
def passwords(draw: Any) -> str:
    middle = draw(st.text(alphabet=st.sampled_from(list("/ %@:?#&=+'\"\\;zZ9é✓")), min_size=1, max_size=8))
    return "Pw" + middle + draw(st.sampled_from(["q7", "%zz", "%2", "/x", " y", "@h"]))


@st.composite
def dsns(draw: Any) -> tuple[str, str]:
    pw = draw(passwords())
    form = draw(st.sampled_from(["uri", "uri-encoded", "kv", "kv-quoted", "uri-nul"]))
    if form == "uri":
        return f"postgresql://me:{pw}@127.0.0.1:1/app", pw
    if form == "uri-encoded":
        from urllib.parse import quote

        return f"postgresql://me:{quote(pw, safe='')}@127.0.0.1:1/app", pw
    if form == "kv":
        return f"host=127.0.0.1 port=1 user=me password={pw} dbname=app", pw
    if form == "kv-quoted":
        escaped = pw.replace("\\", "\\\\").replace("'", "\\'")
        return f"host=127.0.0.1 port=1 user=me password='{escaped}' dbname=app", pw
    return f"postgresql://me:{pw}\x00@127.0.0.1:1/app", pw


@settings(FUZZ, max_examples=200)
@given(pair=dsns(), command=st.sampled_from([["status"], ["advise", "--sql", "select 1"], ["dataset"]]))
def test_fuzz_bad_dsns_never_print_their_password(pair: tuple[str, str], command: list[str]) -> None:
    dsn, pw = pair
    out, err = io.StringIO(), io.StringIO()
    env = dict(os.environ)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--dsn", dsn, *command])
    text = out.getvalue() + err.getvalue()
    assert os.environ == env
    assert rc == 2 and "Traceback" not in text and text.startswith("error:") and text.count("\n") == 1, text
    from urllib.parse import quote

    for secret in {pw, quote(pw, safe=""), pw.strip()} - {""}:
        assert secret not in text, f"password {secret!r} printed: {text!r}"
