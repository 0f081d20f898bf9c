"""Index advice on tables it has never seen, verified by what-if measurement; read-only targets; the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from workbook.cluster import LocalCluster, Target
from workbook.experiment import advise

from .conftest import catalog_snapshot, run_cli

QUERY = "SELECT id, subject FROM helpdesk.tickets WHERE tenant_id = 17 AND status = 'open' ORDER BY opened_at DESC LIMIT 20"


@pytest.fixture(scope="module")
def tickets(lab: LocalCluster) -> Iterator[LocalCluster]:
    """A table the workbook knows nothing about: 200k tickets, 53 tenants, 4 statuses (every tenant has ~940 tickets in each status)."""
    with lab.target().connect() as conn:
        conn.execute("CREATE SCHEMA helpdesk")
        conn.execute(
            "CREATE TABLE helpdesk.tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tenant_id int NOT NULL,"
            " status text NOT NULL, opened_at timestamptz NOT NULL, subject text NOT NULL, tags jsonb NOT NULL)"
        )
        conn.execute(
            "INSERT INTO helpdesk.tickets (tenant_id, status, opened_at, subject, tags)"
            " SELECT i % 53, (ARRAY['open', 'closed', 'closed', 'pending'])[1 + i % 4],"
            "        timestamptz '2026-01-01' + i * interval '37 seconds', 'ticket ' || i,"
            "        jsonb_build_object('channel', (ARRAY['mail', 'chat', 'phone'])[1 + i % 3])"
            " FROM generate_series(1, 200000) i"
        )
        conn.execute("VACUUM ANALYZE helpdesk.tickets")
    yield lab
    with lab.target().connect() as conn:
        conn.execute("DROP SCHEMA helpdesk CASCADE")


def test_advice_on_an_unknown_table_proposes_the_composite_index_in_the_right_order(tickets: LocalCluster) -> None:
    with tickets.target().connect() as conn:
        before = catalog_snapshot(conn)
    advice = advise(tickets.target(), QUERY, repeats=10)
    best = advice.suggestions[0]
    assert best.table == "helpdesk.tickets" and best.method == "btree"
    assert best.columns == ["tenant_id", "status", "opened_at"], "equality columns (more distinct first), then ORDER BY"
    assert best.used and best.verdict_kind == "faster" and best.ci[0] > 1
    assert "Seq Scan" in best.plan_before and "Index Scan" in best.plan_after
    assert best.size_bytes > 0 and best.write_ratio is not None and best.write_ratio > 0
    assert best.ddl.startswith('CREATE INDEX IF NOT EXISTS "wb_advice_tickets_tenant_id_status_opened_at" ON "helpdesk"."tickets"')
    with tickets.target().connect() as conn:
        assert catalog_snapshot(conn) == before, "what-if indexes and write-cost tables are all rolled back"


def test_jsonb_containment_gets_a_gin_index_and_key_equality_an_expression_index(tickets: LocalCluster) -> None:
    gin = advise(tickets.target(), "SELECT count(*) FROM helpdesk.tickets WHERE tags @> '{\"channel\": \"phone\"}'",
                 repeats=8, measure_write_cost=False)  # fmt: skip
    cands = gin.suggestions + gin.rejected
    assert [(c.method, c.columns) for c in cands] == [("gin", ["tags"])]
    assert "jsonb_path_ops" in cands[0].ddl
    expr = advise(tickets.target(), "SELECT id FROM helpdesk.tickets WHERE tags->>'channel' = 'chat' AND tenant_id = 3",
                  repeats=8, measure_write_cost=False)  # fmt: skip
    assert ["tenant_id", "(tags ->> 'channel')"] in [c.columns for c in expr.suggestions + expr.rejected]


def test_no_index_can_help_a_full_scan_and_the_reason_says_why(tickets: LocalCluster) -> None:
    advice = advise(tickets.target(), "SELECT sum(length(subject)) FROM helpdesk.tickets")
    assert advice.suggestions == [] and "no predicate, join or ORDER BY" in advice.reason


def test_a_candidate_that_does_not_help_is_dropped_with_its_measurement(tickets: LocalCluster) -> None:
    # half the table, every column: the planner may use a B-tree on status, but it buys nothing
    advice = advise(tickets.target(), "SELECT * FROM helpdesk.tickets WHERE status = 'closed'", repeats=8)
    assert advice.suggestions == []
    assert advice.rejected and advice.rejected[0].rejected_because
    assert advice.reason.startswith("no candidate helps")


def test_read_only_target_gets_unverified_candidates_and_an_explanation(tickets: LocalCluster) -> None:
    ro = Target.from_dsn(tickets.target().primary.dsn)
    advice = advise(ro, QUERY)
    assert advice.suggestions and not any(c.verified for c in advice.suggestions)
    assert "read-only" in advice.reason and "NOT measured" in advice.reason


def test_cli_advise_prints_the_documented_json(tickets: LocalCluster) -> None:
    dsn = tickets.target().primary.dsn
    r = run_cli("--dsn", dsn, "--allow-writes", "advise", "--sql", QUERY, "--repeats", "8", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    first = out["suggestions"][0]
    assert {"table", "columns", "method", "ddl", "speedup"} <= set(first) and isinstance(out["reason"], str)
    assert first["table"] == "helpdesk.tickets" and first["columns"] == ["tenant_id", "status", "opened_at"]
    assert first["speedup"] > 1
    password = tickets._password()
    assert password not in r.stdout and password not in r.stderr
    bad = run_cli("--dsn", dsn, "advise", "--sql", "SELEC 1", "--json")
    assert bad.returncode == 2 and "'SELEC', which is not a query" in bad.stderr and "did you mean SELECT?" in bad.stderr
    assert password not in bad.stderr and bad.stderr.count("\n") == 1
