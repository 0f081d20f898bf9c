"""The headless main job: `workbook report` writes one self-contained HTML file that opens offline."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbook.cluster import LocalCluster
from workbook.lab import open_lab
from workbook.results import ResultsStore

from .conftest import ARTIFACTS, catalog_snapshot, run_cli

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(lab: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    with lab.target().connect() as conn:
        before = catalog_snapshot(conn)
    r = run_cli("--home", str(lab.home), "report", "--out", str(out), "--repeats", "8", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    with lab.target().connect() as conn:
        assert catalog_snapshot(conn) == before, "the lessons change nothing in the database"
    yield out, r.stdout


def test_report_json_has_every_default_lesson_and_its_named_figures(report: tuple[Path, str]) -> None:
    import json

    from workbook.lessons import DEFAULT

    path, stdout = report
    out = json.loads(stdout)
    assert out["out"] == str(path) and list(out["lessons"]) == list(DEFAULT)
    for name, lesson in out["lessons"].items():
        assert lesson["seconds"] > 0 and lesson["figures"], name
    indexes = out["lessons"]["indexes"]["figures"]
    fk = indexes["comparisons"]["messages_conversation_created"]
    assert {"speedup", "ci_low", "ci_high", "write_cost", "write_cost_ci_low", "write_cost_ci_high"} <= set(fk)
    assert fk["ci_low"] <= fk["speedup"] <= fk["ci_high"] and fk["verdict"] == "faster"
    assert set(indexes["recommended"]) <= set(indexes["comparisons"]) and indexes["recommended"]
    pages = out["lessons"]["planner"]["figures"]["keyset_vs_offset"]
    assert set(pages) == {"1", "10", "100"} and all({"speedup", "ci_low", "ci_high"} <= set(p) for p in pages.values())


def test_report_has_environment_verdicts_plans_findings_and_ddl(report: tuple[Path, str], lab: LocalCluster) -> None:
    path, _ = report
    text = path.read_text()
    with lab.target().connect() as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    assert f"PostgreSQL {version}" in text and "checksum" in text and "scale 0.05" in text
    assert len(re.findall(r"<section class='lesson'", text)) == 3 and "<h2>Contents</h2>" in text
    sections = re.findall(r"<section class='experiment'", text)
    headings = re.findall(r"<section class='experiment' id='exp\d+'><h2>\d+\. (.*?)</h2>", text)
    assert len(headings) == len(sections) and len(set(headings)) == len(headings), "two experiments read the same"
    assert all(" tenant" in h for h in headings), headings[:3]
    assert len(sections) == 17  # indexes 5, jsonb 5, planner 7 (three page depths)
    assert text.count("95% CI") >= 17 and "faster, 95% CI" in text
    assert "plan before: <code>Limit &gt; Sort &gt; Seq Scan on messages</code>" in text
    seen = text[text.index("<h1>What the server saw</h1>"):]
    assert "Top statements by total time" in seen and "cache hit ratio" in seen and "conversation_latest_messages" in seen
    diff = text[text.index("<h3>what changed in the plan</h3>"):]
    diff = diff[: diff.index("</table>")]
    assert "<tr class='removed'><td>Seq Scan on messages</td>" in diff and "<tr class='added'><td>Index" in diff
    assert "Index Scan using messages_conversation_created" in text
    assert "class='num mis'" in text, "the correlated-columns misestimate is marked in its plan table"
    assert "stopped early" in text, "a Sort cut short by its Limit is not called a misestimate"
    assert "seq_scan_selective_filter" in text
    assert "recommended DDL" in text and "CREATE INDEX CONCURRENTLY IF NOT EXISTS" in text
    block = text[text.index("<h2>Recommended changes</h2>"):text.index("<h2>Environment</h2>")]
    verdicts = re.findall(r"<tr><td>[^<]+</td><td>([^<]+)</td>", block)
    assert verdicts and all(" faster, 95% CI " in v for v in verdicts), "only significant improvements are recommended"
    assert "messages_created_conversation" not in block, "the wrong column order is dominated, not recommended"
    assert "<script" not in text and "<link" not in text and not re.search(r"src=['\"]https?://", text), "nothing to fetch"
    assert "href='https://www.postgresql.org/docs/current/indexes-multicolumn.html'" in text, "references are links"
    figures = re.search(r"<th>comparisons\.messages_conversation_created\.speedup</th><td class='num'>([^<]+)</td>", text)
    assert figures and figures.group(1).endswith("×"), "figures carry their unit"
    costs = text[text.index("<th>write_cost_ci_high</th>"):]
    assert re.search(r"<td class='num'>[\d,]+ kB</td><td class='num'>[\d.]+ s</td><td class='num'>[\d.]+×</td>", costs), \
        "the write-cost table shows sizes, seconds and factors, not raw floats"
    assert not re.search(r"<td[^>]*>\d+\.\d{5,}</td>", text), "no cell prints a float with five or more decimals"
    import html
    import json

    pasted = re.findall(r"<pre class='plan-json'>(.*?)</pre>", text, re.S)
    assert len(pasted) == 2 * 17, "both plans of every experiment, ready to paste into PEV2"
    assert all("Node Type" in json.loads(html.unescape(p))[0]["Plan"] for p in pasted)


_CLIPPED_TEXT = """() => {
  const out = [];
  for (const s of document.querySelectorAll('svg.marks')) {
    const box = s.getBoundingClientRect();
    for (const t of s.querySelectorAll('text')) {
      const r = t.getBoundingClientRect();
      if (r.width > 0 && (r.left < box.left - 0.5 || r.right > box.right + 0.5)) out.push(t.textContent);
    }
  }
  return out;
}"""


def test_report_opens_offline_in_chromium_with_every_chart_rendered(report: tuple[Path, str]) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    path, _ = report
    requests: list[str] = []
    failed: list[str] = []
    console: list[str] = []
    profile = tempfile.mkdtemp(prefix="wb-chromium-")
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, offline=True,
                args=["--no-sandbox", "--disable-gpu"], viewport={"width": 1200, "height": 900},
            )  # fmt: skip
            page = ctx.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            sections = page.locator("section.experiment")
            assert sections.count() == 17
            for i in range(sections.count()):
                svgs = sections.nth(i).locator("svg")
                assert svgs.count() >= 2, f"experiment {i + 1}: the comparison chart and the plan view"
                box = svgs.first.bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 30, "charts are laid out, not empty"
            assert page.locator("svg [role='graphics-symbol']").count() > 50, "the charts have marks"
            small = page.evaluate("() => [...document.querySelectorAll('svg text')].filter(t => t.textContent.trim()"
                                  " && parseFloat(getComputedStyle(t).fontSize) < 12).map(t => t.textContent)")  # fmt: skip
            assert small == [], "chart text is at least 12 px as the browser draws it"
            clipped = page.evaluate(_CLIPPED_TEXT)
            assert clipped == [], "chart text drawn by the browser must fit inside its SVG (an inline SVG clips)"
            backgrounds = page.evaluate("() => [...document.querySelectorAll('td.mis')].map("
                                        "td => getComputedStyle(td).backgroundColor)")  # fmt: skip
            assert backgrounds and all(b not in ("rgba(0, 0, 0, 0)", "transparent") for b in backgrounds), \
                "misestimate cells are highlighted as the browser draws them"
            overflowing = page.evaluate("() => [...document.querySelectorAll('pre.ddl')]"
                                        ".filter(p => p.scrollWidth > p.clientWidth + 1).map(p => p.textContent)")  # fmt: skip
            assert overflowing == [], "recommended DDL wraps: nothing is cut off at the right edge"
            recommended = page.locator("h2:text('Recommended changes') + p + table pre.ddl").count()
            assert recommended >= 3, "the significant improvements are recommended"
            assert page.locator("p.not-recommended").count() >= 3, "the others say why they are not"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=False)
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert [u for u in requests if not u.startswith("file:")] == [], "the report made network requests"
    assert failed == [] and console == []


def test_report_never_contains_a_password(report: tuple[Path, str], lab: LocalCluster, tmp_path: Path) -> None:
    path, output = report
    password = lab._password()
    assert password and password not in path.read_text() and password not in output
    # the same through --dsn with the password inside the DSN
    out = tmp_path / "via-dsn.html"
    dsn = lab.target().primary.dsn
    assert password in dsn
    r = run_cli("--home", str(tmp_path / "home"), "--dsn", dsn, "--allow-writes", "report", "--out", str(out),
                "--lessons", "jsonb", "--repeats", "5", timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert password not in out.read_text() and password not in r.stdout + r.stderr
    assert out.read_text().count("<section class='experiment'") == 5  # the jsonb lesson's comparisons


def test_lab_report_from_chosen_runs(lab: LocalCluster, tmp_path: Path) -> None:
    wb = open_lab(home=lab.home, progress=False)
    c = wb.compare("audit_by_actor", wb.what_if("audit_actor_time"), repeats=5)
    d = wb.compare("usage_per_org_per_day", wb.what_if("usage_events_org_time"), repeats=5)
    out = wb.report(tmp_path / "one.html", [c])
    text = out.read_text()
    assert text.count("<section class='experiment'") == 1 and "audit_by_actor" in text
    both = wb.report(tmp_path / "both.html", [c, d]).read_text()
    assert both.count("<section class='experiment'") == 2 and "usage_per_org_per_day" in both


@pytest.mark.parametrize(
    ("args", "message"),
    [(["report", "--lessons", "nope"], "no lesson 'nope'"), (["report", "--scale", "0"], "scale")],
)
def test_report_bad_arguments(lab: LocalCluster, tmp_path: Path, args: list[str], message: str) -> None:
    r = run_cli("--home", str(lab.home), *args, "--out", str(tmp_path / "x.html"))
    assert r.returncode == 2 and message in r.stderr and not (tmp_path / "x.html").exists()


def test_report_refuses_an_unwritable_output_and_a_read_only_target_before_running_anything(
    lab: LocalCluster, tmp_path: Path
) -> None:
    before = len(ResultsStore(lab.home).comparisons())
    r = run_cli("--home", str(lab.home), "report", "--out", str(tmp_path / "missing" / "x.html"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--home", str(tmp_path / "h"), "--dsn", lab.target().primary.dsn, "report", "--out", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "read-only" in r.stderr and lab._password() not in r.stderr
    assert len(ResultsStore(lab.home).comparisons()) == before, "no experiment ran"
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "h").exists()


def test_shapes_on_a_database_without_the_dataset_say_so(lab: LocalCluster) -> None:
    with lab.target().connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS wb_empty")
        conn.execute("CREATE DATABASE wb_empty")
    try:
        dsn = lab.target().primary.dsn.replace("dbname=workbook", "dbname=wb_empty")
        for args in (["explain", "--shape", "conversation_latest_messages"],
                     ["--allow-writes", "compare", "--shape", "user_conversation_list", "--against", "window"]):  # fmt: skip
            r = run_cli("--dsn", dsn, *args)
            assert r.returncode == 2 and "no sample dataset in this database" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
    finally:
        with lab.target().connect() as conn:
            conn.execute("DROP DATABASE wb_empty")


# ------------------------------------------------------------------ the sequential rule the lessons time with
def test_the_exact_rank_test_matches_counting_every_ordering() -> None:
    import itertools

    import numpy as np

    from workbook.experiment.timing import rank_test_p

    rng = np.random.default_rng(3)
    a, b = list(rng.normal(0, 1, 4)), list(rng.normal(1, 1, 5))
    pooled = a + b
    u_obs = min(sum(x < y for x in a for y in b), sum(x > y for x in a for y in b))
    as_extreme = total = 0
    for pick in itertools.combinations(range(9), 4):  # every way to split the nine values 4 + 5
        xs = [pooled[i] for i in pick]
        ys = [pooled[i] for i in range(9) if i not in pick]
        total += 1
        as_extreme += sum(x < y for x in xs for y in ys) <= u_obs
    assert rank_test_p(a, b) == pytest.approx(min(1.0, 2 * as_extreme / total))
    assert rank_test_p([1.0] * 8, [1.0] * 8) == 1.0, "ties count against a difference"


def test_the_interim_look_stops_only_what_is_beyond_doubt() -> None:
    import numpy as np

    from workbook.experiment.timing import decided_early

    rng = np.random.default_rng(11)
    same = sum(decided_early(rng.lognormal(0, 0.3, n), rng.lognormal(0, 0.3, n)) for n in (8, 14) for _ in range(300))
    assert same <= 3, f"two identical arms stopped {same} times in 600 looks (each look's rate is < 0.001)"
    clear = sum(decided_early(rng.lognormal(np.log(3), 0.3, 8), rng.lognormal(0, 0.3, 8)) for _ in range(100))
    assert clear >= 90, "a 3x difference is decided after 8 turns"
    small = sum(decided_early(rng.lognormal(np.log(1.05), 0.01, 14), rng.lognormal(0, 0.01, 14)) for _ in range(50))
    assert small == 0, "a real but negligible difference (under the 1.10x threshold) never stops early"


def test_a_lab_comparison_stops_early_only_when_decided(lab: LocalCluster) -> None:
    wb = open_lab(home=lab.home, progress=False)
    fast = wb.compare("conversation_latest_messages", wb.what_if("messages_conversation_created"), repeats=20)
    assert fast.verdict.kind == "faster" and fast.extra["stopped_early"] == {"at": 8, "of": 20}
    assert len(fast.baseline.samples_ms) == len(fast.treatment.samples_ms) == 8
    assert "of at most 20 (decided at an interim look)" in fast.summary()
    # an index the query cannot use: nothing to decide, so every repetition is taken
    useless = wb.compare("conversation_latest_messages", wb.what_if("audit_actor_time"), repeats=20, confidence=0.99)
    assert "stopped_early" not in useless.extra and len(useless.treatment.samples_ms) == 20
    assert not useless.verdict.significant, useless.verdict


def test_a_step_s_values_align_numbers_right_and_sentences_left() -> None:
    from workbook.report.html import _step_outputs

    out = "".join(_step_outputs([("note", "more than the 3x CPU added: one node served 3,020 TPS"), ("read_tps", 12.5),
                                 ("replicas", 2), ("ran", True)], [0], {}))  # fmt: skip
    assert "<th>note</th><td>more than the 3x" in out
    assert "<th>read_tps</th><td class='num'>12.5</td>" in out and "<th>replicas</th><td class='num'>2</td>" in out
    assert "<th>ran</th><td>True</td>" in out


def test_records_are_tables_identifiers_have_no_separators_and_timeless_plans_say_so() -> None:
    from workbook.experiment import parse_plan
    from workbook.report.html import _output, _plan_table
    from workbook.ui.tables import cell

    records = [{"schema": "ai_app", "index": "messages_org", "scans": 0, "size_bytes": 16384},
               {"schema": "ai_app", "index": "chunks_org", "scans": 12, "size_bytes": 8192}]  # fmt: skip
    out = _output("health / unused_indexes", records, [0], {})
    assert "<table class='dataframe'>" in out and "<td>messages_org</td>" in out and "16 kB" in out and "null" not in out
    assert cell("queryid", -6934777537615515648) == "-6934777537615515648" and cell("pid", 28248) == "28248"
    assert cell("calls", 28248) == "28,248" and cell("blocked_by", ["holder"]) == "holder"
    assert cell("extends", 89.0) == "89" and cell("server_version", 180006) == "180006"  # pg_stat_io's gaps; a version
    timeless = parse_plan({"Plan": {"Node Type": "Seq Scan", "Relation Name": "t", "Plan Rows": 10, "Actual Rows": 10,
                                    "Actual Loops": 1}})  # auto_explain with log_timing off: rows, no times
    assert "<td class='num'>–</td><td class='num'>" in _plan_table(timeless)


def test_a_report_without_index_experiments_says_it_tested_none() -> None:
    from workbook.report.html import _recommended_block

    assert "These lessons tested no index" in _recommended_block([], {})  # the replicas or pooling lesson alone
