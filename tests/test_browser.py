"""A person's path through JupyterLab, in a real headless Chromium driven by Playwright.

JupyterLab runs token-less on loopback against a copy of the notebooks, its kernel attached to the
test cluster. The test opens ``01_indexes``, runs all cells, presses the panel's Run (sequential
scan), ticks the composite index, presses Run again and sees the plan become an index scan and
the charts render. The screenshot lands in ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbook.cluster import LocalCluster

from .conftest import ARTIFACTS, REPO, alive, catalog_snapshot

CHROMIUM = Path("/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def jupyterlab(lab: LocalCluster) -> Iterator[str]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    pytest.importorskip("playwright")
    work = Path(tempfile.mkdtemp(prefix="wb-jlab-"))
    shutil.copytree(REPO / "notebooks", work / "notebooks")
    port = _free_port()
    env = {**os.environ, "WORKBOOK_HOME": str(lab.home), "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
           "JUPYTER_CONFIG_DIR": str(work / "config"), "PYTHONPATH": str(REPO)}  # fmt: skip
    env.pop("WORKBOOK_DSN", None)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
            "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
            f"--ServerApp.root_dir={work / 'notebooks'}", f"--LabApp.workspaces_dir={work / 'workspaces'}",
            "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = open(work / "jupyterlab.log", "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise AssertionError("JupyterLab did not start:\n" + (work / "jupyterlab.log").read_text()[-3000:]) from None
            time.sleep(0.3)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    log.close()
    assert not alive(proc.pid)
    shutil.rmtree(work, ignore_errors=True)


def test_tick_an_index_in_jupyterlab_and_see_the_plan_change(jupyterlab: str, lab: LocalCluster) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    with lab.target().connect() as conn:
        before = catalog_snapshot(conn)
    ARTIFACTS.mkdir(exist_ok=True)
    profile = tempfile.mkdtemp(prefix="wb-chromium-")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"],
                viewport={"width": 1400, "height": 1000},
            )  # fmt: skip
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            try:
                page.goto(f"{jupyterlab}/lab/tree/01_indexes.ipynb")
                page.wait_for_selector(".jp-Notebook", timeout=60_000)
                # the status bar names the kernel once it is connected; clicking before that can be lost
                page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).wait_for(timeout=90_000)
                started = page.locator(".jp-InputArea-prompt", has_text=re.compile(r"\[(\*|\d+)\]"))
                for _attempt in range(3):  # Run > Run All Cells, until a cell has really started
                    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                    try:  # on a busy machine the kernel may not be up yet: JupyterLab then asks which one to start
                        page.locator(".jp-Dialog button", has_text="Select").click(timeout=3_000)
                    except PlaywrightTimeout:
                        pass
                    try:
                        started.first.wait_for(timeout=20_000)
                        break
                    except PlaywrightTimeout:
                        continue
                panel = page.locator(".workbook-experiment-panel")
                expect(panel).to_be_visible(timeout=180_000)
                panel.scroll_into_view_if_needed()

                run = panel.locator("button", has_text="Run")
                run.click()
                expect(panel.locator(".workbook-plan-plan")).to_contain_text("Seq Scan on messages", timeout=120_000)

                box = panel.locator(".widget-checkbox", has_text="messages_conversation_created").locator("input")
                box.check()
                expect(panel.locator(".workbook-ddl")).to_contain_text("CREATE INDEX CONCURRENTLY", timeout=30_000)
                run.click()
                after = panel.locator(".workbook-plan-after")
                expect(after).to_contain_text("Index Scan using messages_conversation_created", timeout=120_000)
                expect(panel.locator(".workbook-plan-before")).to_contain_text("Seq Scan on messages")
                expect(panel.locator(".workbook-verdict")).to_contain_text("faster")
                assert panel.locator("svg").count() >= 2, "the before/after chart and the plan view render"
                assert page.locator(".jp-OutputArea-output img, .jp-OutputArea-output svg").count() >= 2, "notebook charts render"
                panel.locator(".workbook-verdict").scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / "browser_01_indexes.png"), full_page=False)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "browser_01_indexes_failure.png"), full_page=True)
                raise
            finally:
                browser.close()
            assert not [e for e in errors if "workbook" in e.lower()], errors
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    with lab.target().connect() as conn:
        assert catalog_snapshot(conn) == before, "the clicks left no index behind"
