"""The pool panel measures connection strategies for real and draws them side by side."""

from __future__ import annotations

from workbook.cluster import LocalCluster
from workbook.results import ResultsStore
from workbook.traffic.runner import APP_PREFIX
from workbook.ui.pool_panel import PoolPanel, measure_strategy


def test_pool_panel_measures_strategies_and_says_when_pgbouncer_is_not_running(lab: LocalCluster) -> None:
    target = lab.target()
    panel = PoolPanel(target, ResultsStore(lab.home))
    panel.clients.value, panel.pool_size.value, panel.duration.value = 12, 3, 1.0
    for strategy in ("direct", "psycopg_pool", "sqlalchemy"):
        panel.strategy.value = strategy
        row = panel.run()
        assert row is not None and row["tps"] > 0 and row["clients"] == 12, panel.status.value
    assert [r["strategy"] for r in panel.rows] == ["direct", "psycopg_pool", "sqlalchemy"]
    assert "<svg" in panel.chart.value and "psycopg_pool (12 clients, pool 3)" in panel.chart.value
    panel.strategy.value = "pgbouncer"  # the lab cluster runs no pooler: said, nothing measured
    assert panel.run() is None and "workbook up --pooler" in panel.status.value and len(panel.rows) == 3
    with target.connect() as conn:  # every client's session ended with its run (the engine names them)
        left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s"
                            " AND pid <> pg_backend_pid()", (APP_PREFIX + "%",)).fetchone()[0]  # fmt: skip
    assert left == 0


def test_measure_strategy_refuses_bad_input_in_one_line(lab: LocalCluster) -> None:
    import pytest

    from workbook.errors import WorkbookError

    with pytest.raises(WorkbookError, match="strategy must be one of"):
        measure_strategy(lab.target(), "magic", clients=2, pool_size=1)
    with pytest.raises(WorkbookError, match="at least 1"):
        measure_strategy(lab.target(), "direct", clients=0, pool_size=1)
