"""The results store (restarts, concurrent writers) and the charts (rendered by Vega for real)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbook.cluster import LocalCluster
from workbook.dataset import load_indexes
from workbook.experiment import WhatIfIndex, compare, explain, index_costs
from workbook.results import ResultsStore
from workbook.ui import before_after, index_tradeoff, latency_distribution, plan_view, tradeoff_frame

from .conftest import REPO, run_cli

_WRITER = """
import datetime as dt, sys, uuid
from workbook.results import ResultsStore
store = ResultsStore(sys.argv[1], lock_timeout_s=120)
for i in range(int(sys.argv[3])):
    run = {"run_id": uuid.uuid4().hex, "created_at": dt.datetime.now(dt.timezone.utc), "label": sys.argv[2],
           "shape": "s", "samples_ms": [1.0, 2.0], "median_ms": 1.5, "context": {"writer": sys.argv[2], "i": i}}
    store.append([run])
print(store.lock_waits)
"""


def test_store_round_trips_runs_and_survives_a_restart(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    assert store.runs().empty
    now = dt.datetime.now(dt.UTC)
    store.append([{"run_id": "a", "created_at": now, "shape": "x", "samples_ms": [1.0, 3.0], "median_ms": 2.0,
                   "knobs": [{"knob": "Setting", "label": "work_mem = 64MB"}], "params": [{"org_id": 3}]}])  # fmt: skip
    again = ResultsStore(tmp_path)  # a new process would do the same: nothing is cached in memory
    df = again.runs()
    assert list(df["run_id"]) == ["a"] and list(df["samples_ms"][0]) == [1.0, 3.0]
    row = again.run("a")
    assert row["knobs"][0]["label"] == "work_mem = 64MB" and row["params"] == [{"org_id": 3}]


def test_two_processes_appending_at_once_lose_no_run(tmp_path: Path) -> None:
    n = 40
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name, str(n)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for name in ("notebook-a", "notebook-b")
    ]
    waits = 0
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        waits += int(out.split()[-1])
    assert waits > 0, "the writers never collided, so this test proved nothing"
    df = ResultsStore(tmp_path).runs()
    assert len(df) == 2 * n and df["run_id"].is_unique
    assert df.groupby("label").size().to_dict() == {"notebook-a": n, "notebook-b": n}


def _svg(chart: object, path: Path) -> str:
    chart.save(str(path))  # type: ignore[attr-defined]  # vl-convert renders the Vega-Lite spec: a real layout
    return path.read_text()


def test_charts_render_with_their_data(lab: LocalCluster, tmp_path: Path) -> None:
    spec = load_indexes()["messages_conversation_created"]
    c = compare(lab.target(), "conversation_latest_messages", WhatIfIndex(spec), repeats=10)
    svg = _svg(before_after(c), tmp_path / "ba.svg")
    assert svg.count('role="graphics-symbol"') >= 4, "two bars and two whiskers"
    assert "faster, 95% CI" in svg and "interleaved" in svg
    svg = _svg(latency_distribution(c), tmp_path / "lat.svg")
    assert svg.count('role="graphics-symbol"') >= 20 and "log" in svg
    with lab.target().connect() as conn:
        plan = explain(conn, "SELECT count(*) FROM ai_app.messages m JOIN ai_app.conversations c ON c.id = m.conversation_id")
    svg = _svg(plan_view(plan), tmp_path / "plan.svg")
    for node in ("Hash Join", "Seq Scan on messages", "Seq Scan on conversations"):
        assert node in svg, node
    assert "misestimate" in svg
    cost = index_costs(lab.target(), spec, rounds=2, reps=10)
    svg = _svg(index_tradeoff(tradeoff_frame([(spec.name, c, cost)])), tmp_path / "trade.svg")
    assert "index trade-off" in svg and svg.count("<path") >= 1


def test_cli_explain_and_compare(lab: LocalCluster) -> None:
    home = str(lab.home)
    r = run_cli("--home", home, "explain", "--shape", "conversation_latest_messages", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["plan_summary"] == "Limit > Sort > Seq Scan on messages"
    assert [f["rule"] for f in out["findings"]] == ["seq_scan_selective_filter"]
    assert out["nodes"][2]["relation"] == "ai_app.messages" and out["execution_ms"] > 0
    text = run_cli("--home", home, "explain", "--shape", "conversation_latest_messages")
    assert "-> Seq Scan on messages" in text.stdout and "finding [seq_scan_selective_filter]" in text.stdout

    before = len(ResultsStore(lab.home).comparisons())
    r = run_cli("--home", home, "compare", "--shape", "conversation_latest_messages",
                "--index", "messages_conversation_created", "--repeats", "10", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"]["kind"] == "faster" and out["plan_changed"] and out["interleaved"]
    assert out["treatment"]["scans"] == [["Index Scan", "ai_app.messages", "messages_conversation_created"]]
    assert len(ResultsStore(lab.home).comparisons()) == before + 1, "the CLI stores its comparison in the home"
    assert lab._password() not in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "--shape", "conversation_latest_messages", "--index", "nope"], "no candidate index 'nope'"),
        (["compare", "--shape", "conversation_latest_messages"], "nothing to compare"),
        (["compare", "--shape", "conversation_latest_messages", "--set", "wrok_mem=1MB"], "did you mean 'work_mem'"),
        (["explain", "--shape", "no_such_shape"], "no query shape 'no_such_shape'"),
        (["explain", "--shape", "conversation_latest_messages", "--variant", "zzz"], "has no variant 'zzz'"),
    ],
)
def test_cli_bad_input_is_one_clear_line(lab: LocalCluster, args: list[str], message: str) -> None:
    r = run_cli("--home", str(lab.home), *args)
    assert r.returncode == 2 and r.stderr.startswith("error:") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_tables_show_units_and_sensible_decimals(lab: LocalCluster) -> None:
    import pandas as pd

    from workbook.lab import attach_lab
    from workbook.ui.tables import Table, table

    raw = pd.DataFrame([{"index": "messages_conversation_id", "size_bytes": 1245184, "build_seconds": 0.0412,
                         "write_cost": 1.0432, "median_ms": 5.4, "rows": 123456, "shared_hit": 2681,
                         "cache_hit_ratio": 0.99731, "missing": None}])  # fmt: skip
    shown = table(raw)._repr_html_()
    for text in ("1,216 kB", "0.041 s", "1.04×", "5.40 ms", "123,456", "2,681", "99.7%", "<td style='text-align: right'>–</td>"):
        assert text in shown, text
    assert "5.400000" not in shown and "<th>index</th>" in shown and ">0<" not in shown, "no index column, no raw floats"
    long = table(pd.DataFrame({"t_ms": range(1000)}))._repr_html_()
    assert long.count("<tr>") == 12 and "1,000 rows × 1 columns" in long, "a long frame folds as pandas' does"
    picked = table(raw)[["index", "median_ms"]]
    assert isinstance(picked, Table) and picked["median_ms"].sum() == 5.4, "the data stay numbers"
    wb = attach_lab(home=lab.home)
    tables = wb.tables()
    assert isinstance(tables, Table) and "dataset_info" not in set(tables["table"]), "internal tables are hidden"
    assert " kB" in tables._repr_html_() or " MB" in tables._repr_html_()
    with lab.target().connect() as conn:
        plan = explain(conn, "SELECT count(*) FROM ai_app.messages")
    assert isinstance(plan.frame(), Table) and " ms</td>" in plan.frame()._repr_html_()
