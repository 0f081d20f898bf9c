"""The observability lesson (issue 20) on the shared lab: ``top`` after a known workload lists its
shapes in the order of their calls; advice on ``$1`` statements (generic plan on 18, values from
the statistics on 15) and for several statements together; a runaway query is cut at its timeout
while the chat mix's errors stay bounded; immediate retries amplify more than backoff; the named
figures; roles, indexes, settings and the dataset as before; the notebook runs headless."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workbook.cluster import LocalCluster
from workbook.dataset import checksum, is_pristine
from workbook.experiment import advise
from workbook.experiment.advise import bind_parameters, parameter_numbers
from workbook.experiment.workload import advise_workload, fingerprint, reset_statements, top_statements
from workbook.lab import Lab
from workbook.lessons import LESSONS, LessonResult, observability
from workbook.results import ResultsStore
from workbook.traffic import Mix, run_load

from .conftest import REPO, built_notebook, catalog_snapshot, figure_keys, run_cli, run_notebook

NOTEBOOK = REPO / "notebooks" / "07_observability_and_circuit_breakers.ipynb"
PG15 = Path("/usr/lib/postgresql/15/bin")
FIGURES = {
    "top_statements": None, "unused_indexes": None, "cache_hit_ratio": None,
    "runaway": {"chat_p95_ms_without", "chat_p95_ms_with", "errors_without", "errors_with"},
    "budget_refused": None, "retry_amplification": {"immediate", "backoff_jitter", "circuit_breaker"},
    "slow_plans": None,
}  # fmt: skip
LATEST = "SELECT id, role FROM ai_app.messages WHERE conversation_id = $1 ORDER BY created_at DESC LIMIT $2"


def _state(lab: LocalCluster) -> tuple[Any, ...]:
    """The dataset, the catalog, the roles and the per-role settings."""
    with lab.target().connect() as conn:
        roles = conn.execute("SELECT rolname FROM pg_roles ORDER BY 1").fetchall()
        settings = conn.execute("SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting ORDER BY 1, 2").fetchall()
        return checksum(conn), catalog_snapshot(conn), roles, settings


@pytest.fixture(scope="module")
def ran(open_: Lab, lab: LocalCluster) -> Iterator[LessonResult]:
    before = _state(lab)
    result = observability.LESSON.run(open_)
    after = _state(lab)
    assert after[0] == before[0], "the lesson left the dataset changed"
    assert after[1:] == before[1:], "the lesson left indexes, relations, roles or role settings behind"
    assert is_pristine(lab.target()) is True
    yield result


def test_the_lesson_is_registered_but_not_in_the_default_set() -> None:
    from workbook.lessons import DEFAULT

    assert LESSONS["observability"] is observability.LESSON and "observability" not in DEFAULT


def test_top_lists_the_workload_shapes_in_order_of_calls(lab: LocalCluster) -> None:
    target = lab.target()
    reset_statements(target)
    weights = {"conversation_latest_messages": 6, "api_key_lookup": 3, "usage_per_org_per_day": 1}
    run_load(target, Mix("known", weights), clients=2, duration_s=1.5, driver="pgbench", monitor=False)
    with target.connect() as conn:
        checksum(conn)  # the workbook's own bookkeeping (one full read per table): marked, and left out of top
    top = top_statements(target, order="calls", limit=20)
    assert not top["query"].str.contains("dataset checksum").any(), top["query"].tolist()
    mine = top_statements(target, order="total", limit=50, internal=True)
    assert mine["query"].str.contains("/* workbook: dataset checksum */", regex=False).any()
    shapes = [s for s in top["shape"] if s is not None and isinstance(s, str)]
    assert shapes == list(weights), top[["shape", "calls"]]
    assert list(top["calls"]) == sorted(top["calls"], reverse=True)
    cli = run_cli("top", "--by", "calls", "--json", env={"WORKBOOK_HOME": str(lab.home)})
    assert cli.returncode == 0, cli.stderr
    def no_nan(token: str) -> None:
        raise AssertionError(f"top --json wrote {token}, which is not JSON (a statement of no shape is null)")

    statements = json.loads(cli.stdout, parse_constant=no_nan)["statements"]
    listed = [s["shape"] for s in statements if s["shape"]]
    assert listed[:3] == list(weights)


def test_a_least_privilege_role_is_told_what_it_cannot_see_and_cannot_do(lab: LocalCluster, catalog_unchanged: None) -> None:
    """A managed cluster's application role: SELECT on the schema, no pg_read_all_stats, no CREATE.
    Explain works; top says how many statements of other roles it cannot see and the grant that
    shows them (never '<insufficient privilege>' rows); advise proposes without measuring; compare
    is refused before anything is built; nothing changes."""
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    target = lab.target()
    run_load(target, Mix("other role", {"api_key_lookup": 1}), clients=1, duration_s=0.5, driver="pgbench", monitor=False)
    role, password = "wb_least_privilege", "lp-secret-1"
    with target.connect() as conn:
        before = checksum(conn)
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA ai_app TO {0}; GRANT SELECT ON ALL TABLES IN SCHEMA ai_app TO {0}")
                     .format(sql.Identifier(role)))  # fmt: skip
    dsn = make_conninfo(**{k: v for k, v in conninfo_to_dict(target.primary.dsn).items() if k not in ("user", "password")},
                        user=role, password=password)  # fmt: skip
    env = {"WORKBOOK_HOME": str(lab.home), "WORKBOOK_DSN": dsn}
    try:
        ex = run_cli("--allow-plaintext", "explain", "--shape", "conversation_latest_messages", "--json", env=env)
        assert ex.returncode == 0, ex.stderr
        assert json.loads(ex.stdout)["nodes"], "a SELECT grant is enough to explain"
        top = run_cli("--allow-plaintext", "top", "--json", env=env)
        assert top.returncode == 0, top.stderr
        doc = json.loads(top.stdout)
        assert doc["hidden"] > 0 and f"GRANT pg_read_all_stats TO {role}" in doc["note"], doc
        assert all(s["query"] != "<insufficient privilege>" for s in doc["statements"])
        text = run_cli("--allow-plaintext", "top", "--limit", "1", env=env)
        assert f"{doc['hidden']:,} statement" in text.stderr and "hidden from role" in text.stderr, text.stderr
        adv = run_cli("--allow-plaintext", "advise", "--sql", "SELECT id FROM ai_app.messages WHERE token_count > 900", env=env)
        assert adv.returncode == 0, adv.stderr
        assert "not measured" in adv.stdout and "None" not in adv.stdout, adv.stdout
        cmp = run_cli("--allow-plaintext", "compare", "--shape", "conversation_latest_messages", "--index", "audit_actor_time",
                      env=env)  # fmt: skip
        assert cmp.returncode != 0 and cmp.stderr.count("\n") == 1 and "read-only" in cmp.stderr, cmp.stderr
        assert password not in ex.stderr + top.stderr + adv.stdout + adv.stderr + cmp.stderr
        with target.connect() as conn:
            conn.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(role)))
        granted = json.loads(run_cli("--allow-plaintext", "top", "--json", env=env).stdout)
        assert granted["hidden"] == 0 and granted["note"] is None
    finally:
        with target.connect() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))
            assert checksum(conn) == before


def test_fingerprint_maps_placeholders_constants_and_spacing_together() -> None:
    a = "SELECT x FROM t\n WHERE a = %(org_id)s  AND b >= %(since)s::timestamptz LIMIT 20"
    b = "select x from t where a = $1 and b >= $2 limit $3"
    assert fingerprint(a) == fingerprint(b)


def test_advise_on_dollar_parameters_postgresql_18(lab: LocalCluster, catalog_unchanged: None) -> None:
    target = lab.target()
    assert parameter_numbers(LATEST) == [1, 2] and parameter_numbers("SELECT '$1'") == []
    with target.connect() as conn:
        assert conn.info.server_version >= 160000
        b = bind_parameters(conn, LATEST)
    assert "$1" not in b.sql and b.values[1][0] == "bigint" and b.values[2][1] == "20"
    a = advise(target, LATEST, repeats=5, measure_write_cost=False)
    assert a.suggestions, a.reason
    assert "parameters sampled" in a.reason
    assert a.suggestions[0].columns[0] == "conversation_id"


def test_advice_for_several_statements_counts_a_shared_index_once(lab: LocalCluster, catalog_unchanged: None) -> None:
    both = [LATEST, "SELECT count(*) FROM ai_app.messages WHERE conversation_id = $1"]
    w = advise_workload(lab.target(), both, weights=[10.0, 5.0], repeats=5)
    assert w.chosen, w.reason
    best = w.chosen[0]
    assert best.candidate.columns[0] == "conversation_id" and set(best.speedups) == {0, 1}
    assert [c.candidate.ddl for c in w.chosen].count(best.candidate.ddl) == 1


@pytest.fixture(scope="module")
def pg15() -> Iterator[LocalCluster]:
    if not (PG15 / "postgres").exists():
        pytest.skip("Debian's PostgreSQL 15 is not installed (.ci/run installs it)")
    from .conftest import destroy_and_prove, make_home

    parent = make_home("wb-pg15-obs-")
    c = LocalCluster(parent / "home", pg_bin=PG15)
    c.up(replicas=0)
    yield c
    destroy_and_prove(c)
    shutil.rmtree(parent, ignore_errors=True)


def test_advise_on_dollar_parameters_postgresql_15(pg15: LocalCluster) -> None:
    target = pg15.target()
    with target.connect() as conn:
        assert conn.info.server_version // 10000 == 15
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, account int NOT NULL, at timestamptz NOT NULL, body text)")
        conn.execute("INSERT INTO events SELECT g, g % 500, now() - g * interval '1 minute', md5(g::text)"
                     " FROM generate_series(1, 60000) g")  # fmt: skip
        conn.execute("ANALYZE events")
    q = "SELECT id, body FROM events WHERE account = $1 ORDER BY at DESC LIMIT $2"
    a = advise(target, q, repeats=5, measure_write_cost=False)
    assert "parameters sampled" in a.reason and "events.account" in a.reason
    assert a.suggestions and a.suggestions[0].columns[:2] == ["account", "at"], a.reason


def test_runaway_query_is_cut_at_its_timeout_and_chat_errors_are_bounded(ran: LessonResult) -> None:
    rq = ran.outputs["runaway_query"]
    cut = [a for a in rq["with"]["runaway"] if a["outcome"] == "cut by statement_timeout"]
    assert cut, rq["with"]["runaway"]
    limit = rq["timeouts_ms"]["analytics"]
    assert all(limit * 0.9 <= a["ms"] <= limit + 400 for a in cut), cut
    assert all(a["ms"] > 1000 for a in rq["without"]["runaway"]), "without a timeout it runs to the end of the window"
    run = rq["with"]["load"]
    assert sum(run.errors().values()) <= 0.1 * len(run.transactions)
    sessions = rq["sessions"]
    assert sessions["idle_in_transaction"]["outcome"] == "IdleInTransactionSessionTimeout"
    assert sessions["transaction_timeout"]["outcome"] == "TransactionTimeout"
    assert 250 <= sessions["transaction_timeout"]["ended_after_ms"] <= 1500


def test_immediate_retries_amplify_more_than_backoff(ran: LessonResult) -> None:
    amp = ran.figures["retry_amplification"]
    assert amp["immediate"] > amp["backoff_jitter"], amp
    runs = ran.outputs["retry_storm"]["runs"].set_index("policy")
    assert runs.loc["immediate", "session_s"] > runs.loc["circuit_breaker", "session_s"]


def test_locks_queue_and_lock_timeout_ends_each_wait(ran: LessonResult) -> None:
    lk = ran.outputs["locks_live"]
    w1 = lk["waiters"]["waiter_1"]
    assert w1["outcome"] == "LockNotAvailable" and 450 <= w1["waited_ms"] <= 1500
    assert lk["waiters"]["waiter_2"]["outcome"] == "LockNotAvailable"
    assert lk["tree"] and lk["tree"][0].startswith("holder") and len(lk["tree"]) >= 2


def test_budgets_refuse_over_budget_requests_and_nothing_is_overspent(ran: LessonResult) -> None:
    tb = ran.outputs["token_budgets"]
    cap = observability.BUDGET_ORGS * observability.BUDGET_TOKENS // observability.REQUEST_TOKENS
    assert tb["accepted"] == cap and tb["refused"] == tb["requests"] - cap == ran.figures["budget_refused"]
    assert tb["overspent_orgs"] == 0 and tb["ledger_matches"]
    assert tb["overhead"]["kind"] in ("faster", "slower", "no measurable difference", "negligible"), tb["overhead"]
    assert tb["overhead"]["verdict"]


def test_slow_plans_step_captures_the_unindexed_open_of_a_conversation(ran: LessonResult) -> None:
    sp = ran.outputs["slow_plans"]
    assert sp["capture"]["ran"], sp["capture"]["reason"]
    threshold = sp["capture"]["threshold_ms"]
    assert observability.SLOW_MIN_MS <= threshold <= observability.SLOW_MS
    shapes = sp["by_shape"].set_index("shape")
    opens, lookups = shapes.loc["conversation_latest_messages"], shapes.loc["api_key_lookup"]
    assert "Seq Scan on messages" in opens["plan"]
    # the threshold is half the open's measured median: most opens cross it; a lookup (~40x faster)
    # only when one is delayed, a tail outlier
    assert opens["executed"] > 0 and opens["captured_share"] > 0.3, shapes
    assert lookups["executed"] > 0 and lookups["captured_share"] < min(0.05, opens["captured_share"] / 5), shapes
    captured = shapes[shapes["statements"] > 0]
    assert (captured["max_ms"] >= threshold).all()
    assert ran.figures["slow_plans"] == sp["capture"]["workload_statements"] >= 1
    assert set(sp["overhead"]["arm"]) >= {"without auto_explain", "log_analyze, buffers, timing off"}


def test_figures_are_named_as_the_issue_says(ran: LessonResult) -> None:
    f = ran.figures
    assert set(f) == set(FIGURES)
    for name, keys in FIGURES.items():
        if keys:
            assert set(f[name]) == keys, name
    assert f["top_statements"] >= 3
    assert "wb_lesson_obs_usage_events_model" in f["unused_indexes"]
    assert 0 < f["cache_hit_ratio"] <= 1
    json.dumps(f)


def test_health_cli_reports_overlaps_and_unused(lab: LocalCluster) -> None:
    with lab.target().connect() as conn:
        conn.execute("CREATE INDEX wb_test_obs_a ON ai_app.api_keys (org_id)")
        conn.execute("CREATE INDEX wb_test_obs_b ON ai_app.api_keys (org_id, id)")
    try:
        cli = run_cli("health", "--json", env={"WORKBOOK_HOME": str(lab.home)})
        assert cli.returncode == 0, cli.stderr
        doc = json.loads(cli.stdout)
    finally:
        with lab.target().connect() as conn:
            conn.execute("DROP INDEX ai_app.wb_test_obs_a, ai_app.wb_test_obs_b")
    assert {"redundant": "wb_test_obs_a", "covered_by": "wb_test_obs_b"}.items() <= next(
        o for o in doc["overlapping_indexes"] if o["redundant"] == "wb_test_obs_a").items()
    assert "wb_test_obs_b" in {i["index"] for i in doc["unused_indexes"]}
    assert doc["cache_hit_ratio"] is not None and doc["settings"]["statement_timeout"]


def test_notebook_runs_headless_and_stores_the_same_figures(
    lab: LocalCluster, ran: LessonResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBOOK_HOME", str(lab.home))
    monkeypatch.delenv("WORKBOOK_DSN", raising=False)
    before = _state(lab)
    with lab.target().connect() as conn:
        started = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    out = run_notebook(NOTEBOOK)
    for needle in ("conversation_latest_messages", "unused by the workload", "LockNotAvailable", "Lock:transactionid",
                   "cut by statement_timeout", "IdleInTransactionSessionTimeout", "backoff_jitter", "'pristine': True",
                   "not quite", "Seq Scan on messages"):  # fmt: skip
        assert needle in out, needle
    after = _state(lab)
    assert after == before, "the notebook left the dataset, the catalog or the roles changed"
    stored = ResultsStore(lab.home).lessons()
    mine = stored[(stored["lesson"] == "observability") & (stored["source"] == "notebook") & (stored["created_at"] >= started)]
    assert len(mine) == 1
    assert figure_keys(mine["figures"].iloc[0]) == figure_keys(ran.figures)



def test_notebook_builder_writes_the_committed_notebook(tmp_path: Path) -> None:
    assert built_notebook(tmp_path, NOTEBOOK.stem) == NOTEBOOK.read_text(), "run python notebooks/_build.py"
