"""Write notebook 07 (observability and circuit breakers), without outputs: python notebooks/_build_observability.py

Kept apart from _build.py while both are edited; ``NOTEBOOKS`` here has the same shape as there
(name -> [(kind, source)]), so its entry can be merged into that file's dict unchanged. Cell ids
follow the same scheme: "<name>-<index:02d>".
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _build import OPEN, intro  # noqa: E402

NAME = "07_observability_and_circuit_breakers"

NOTEBOOKS = {
    NAME: [
        ("md", intro("Observability and economic circuit breakers: pg_stat_statements, health, locks, timeouts, budgets, retry storms",
                     "run a known workload and read what `pg_stat_statements` counted; check the database's health; get index advice for the whole workload; watch sessions queue behind a row lock; cut a runaway analytics query with a per-role timeout; enforce token budgets in the database; and price a retry storm",
                     "which statements cost the most and how to map them back to code, which indexes are dead weight, how `lock_timeout`, `statement_timeout`, `idle_in_transaction_session_timeout` and `transaction_timeout` each bound a failure, why a budget belongs in the write's transaction, and why retries need backoff and a breaker",
                     "00_start_here (or just run the first cell). The lesson creates two roles, three indexes and a scratch schema, and the chat mix writes to the dataset: its last step drops them and resets the dataset", 10)),
        ("code", OPEN + "\n\nlesson = lab.lesson(\"observability\")  # the same steps the report runs (workbook/lessons/observability.py)"),
        ("md", "## What the server saw\n\n`pg_stat_statements` is emptied, then a known read workload runs for two seconds with two clients: six opens of a conversation, three API-key lookups and one usage dashboard in every ten requests. Three lesson indexes exist meanwhile: `messages (conversation_id)`, `messages (conversation_id, created_at DESC)` and `usage_events (model)`."),
        ("code", "seen = lesson.step(\"what_the_server_saw\")\nseen[\"by_calls\"][[\"shape\", \"calls\", \"total_ms\", \"mean_ms\", \"rows\", \"hit_ratio\"]]"),
        ("md", "`shape` maps each normalised statement (constants became `$1`, `$2` ...) back to the query shape in `datasets/ai_app/queries/` it came from: the three shapes come in the order of the mix's weights. Rows without a shape are the load generator's own bookkeeping. Sorted by **total time** the order changes: the dashboard runs least often and costs the most — the statement to fix first."),
        ("code", "seen[\"by_total_time\"][[\"shape\", \"calls\", \"total_ms\", \"mean_ms\"]]"),
        ("md", "## Health\n\nThe checks a DBA runs after a workload: indexes nobody scanned, indexes one of which is a prefix of another, the cache hit ratio, `pg_stat_io` (PostgreSQL 16+), and per table the dead tuples and how many more autovacuum waits for."),
        ("code", "h = lesson.step(\"health_check\")\nprint(\"scans per lesson index:\", h[\"index_scans\"])\nprint(\"unused by the workload:\", h[\"unused_by_workload\"])\nprint(\"overlapping:\", [(o[\"redundant\"], o[\"covered_by\"]) for o in h[\"overlapping_indexes\"]])\nprint(\"cache hit ratio:\", h[\"cache_hit_ratio\"])"),
        ("md", "The index on `usage_events (model)` was never scanned: it costs every insert and buys nothing. Of the two on `messages` the planner used one for every open of a conversation and never the other, and `(conversation_id)` is a leading prefix of `(conversation_id, created_at DESC)`: one of the two is redundant. (The lesson drops all three now.) Dead tuples and autovacuum lag per table, and the I/O by backend type:"),
        ("code", "import pandas as pd\n\ndisplay(pd.DataFrame(h[\"tables\"]).head(6)[[\"table\", \"live\", \"dead\", \"dead_share\", \"autovacuum_at\", \"autovacuum_lag\"]])\npd.DataFrame(h[\"io\"]).head(6)"),
        ("md", "## Advice for the whole workload\n\n`pg_stat_statements` holds statements with `$1` where the values were. The top three by total time are advised together: on PostgreSQL 16+ their candidates come from `EXPLAIN (GENERIC_PLAN)`, values for timing are sampled from the column statistics, and an index proposed by several statements is one candidate, measured for each of them with a what-if index."),
        ("code", "advice = lesson.step(\"workload_advice\")\nprint(advice.reason)\nfor w in advice.chosen:\n    print(w.candidate.ddl, \"serves\", w.speedups)\n[(s[\"shape\"], s[\"note\"][:90]) for s in advice.statements]"),
        ("md", "Each chosen index lists the statements it speeds up (by their position above) and by how much. The same advice from a terminal: `workbook advise --from-stats --top 3`.\n\n## Locks, live\n\nA session takes a row lock on an organisation (`SELECT ... FOR UPDATE`) and keeps its transaction open. Two more sessions want the same row, one with `lock_timeout = 500ms`, one with `1s`. Every 50 ms `pg_stat_activity` and `pg_blocking_pids()` are sampled."),
        ("code", "lk = lesson.step(\"locks_live\")\nprint(\"\\n\".join(lk[\"tree\"]))\nlk[\"waiters\"]"),
        ("md", "The tree: the first waiter waits for the holder's **transaction** (`Lock:transactionid`), the second for the **row** the first one is queued on (`Lock:tuple`). Each ends with `LockNotAvailable`: the first after its 500 ms. Read the second's `waited_ms`: more than its 1 s, because `lock_timeout` counts each lock wait on its own — it waited for the tuple lock, then started over on the transaction lock once the first waiter gave up. The samples over time:"),
        ("code", "lk[\"samples\"].groupby([\"session\", \"wait\"], dropna=False).size()"),
        ("md", "## A runaway query beside the chat mix\n\nTwo roles are created: `wb_lesson_app` (the chat mix logs in with it) and `wb_lesson_analytics` (two dashboard sessions running a heavy aggregate in a loop). First with no timeout, then with `ALTER ROLE ... SET statement_timeout` — 500 ms for the app, 250 ms for analytics — which applies to each role's next sessions."),
        ("code", "rq = lesson.step(\"runaway_query\")\nfor phase in (\"without\", \"with\"):\n    run = rq[phase][\"load\"]\n    print(phase, run.latency(), \"errors:\", run.errors())\n    print(\"   runaway attempts:\", [(a[\"ms\"], a[\"outcome\"]) for a in rq[phase][\"runaway\"]][:4])"),
        ("md", "Without a timeout each runaway query runs until the lesson cancels it at the end of the window, holding a core the chat mix needed: compare the chat's `p95_ms` in the two phases. With the analytics role's timeout every attempt ends at about 250 ms (`cut by statement_timeout`), and the chat's errors stay bounded. Two more timeouts end whole sessions:"),
        ("code", "rq[\"sessions\"]"),
        ("md", "`idle_in_transaction_session_timeout` ended a session that opened a transaction and went idle; `transaction_timeout` (PostgreSQL 17+) ended one that stayed busy with short statements, which neither `statement_timeout` nor the idle timeout would ever stop. Both end the **session** (the server says `terminating connection`): the app must reconnect.\n\n## Token budgets, in the write's transaction\n\nFive orgs, 5,000 tokens each; four clients send 150 requests of 100 tokens each to random orgs. The budget check and the usage write are one statement: `WITH spent AS (UPDATE budgets SET used = used + t WHERE org_id = o AND used + t <= token_limit RETURNING org_id) INSERT INTO usage ... SELECT ... FROM spent`."),
        ("code", "tb = lesson.step(\"token_budgets\")\n{k: tb[k] for k in (\"requests\", \"accepted\", \"refused\", \"overspent_orgs\", \"ledger_matches\", \"overhead\")}"),
        ("md", "`accepted` is exactly the budgets' total divided by 100: no org overspent, under four racing clients, and the usage rows add up to each budget's `used` (`ledger_matches`). `overhead` is the verdict of the guarded write against a bare insert, interleaved: the price of a check that cannot be raced.\n\n## A retry storm\n\nEight clients call an endpoint whose query takes about 25 ms alone and has a timeout of 1.5 times that: alone it fits, eight at once on two cores do not. Each user request is tried up to five times: again **at once**, after **exponential backoff with full jitter**, or behind a **circuit breaker** (open after three failures in a row, 250 ms, then one probe)."),
        ("code", "storm = lesson.step(\"retry_storm\")\nprint(f\"{storm['timeout_ms']} ms timeout, {storm['alone_ms']} ms alone, ${storm['price_per_vcpu_hour']} per vCPU-hour\")\nstorm[\"runs\"][[\"policy\", \"requests\", \"succeeded\", \"attempts\", \"amplification\", \"session_s\", \"usd_per_million_requests\"]]"),
        ("md", "`amplification` is attempts per user request. Immediate retries keep the server at full overload, so nearly every attempt times out and most requests cost five attempts — and `session_s`, the seconds of server sessions burned, is the largest. Backoff with jitter spreads the retries out: fewer attempts, more successes. The breaker stops sending while the endpoint is failing: the fewest attempts and seconds, at the price of failing fast. `usd_per_million_requests` turns the seconds into money at the stated price; multiply by your traffic.\n\n## Put everything back"),
        ("code", "lesson.step(\"put_back\")"),
        ("md", "## What was measured\n\nThe figures this lesson's claims rest on — the same names `workbook report --lessons observability --json` prints."),
        ("code", "result = lesson.result()  # stored with the lab's results\nf = result.figures\nf[\"top_statements\"], f[\"unused_indexes\"], f[\"cache_hit_ratio\"], f[\"runaway\"], f[\"budget_refused\"], f[\"retry_amplification\"]"),
        ("md", "## Summary\n\n`pg_stat_statements` already knows which statements cost the most; sorted by total time, not calls, it says what to fix first, and the advice can start from it, parameters and all. Health checks find indexes that only cost writes. Every wait and every query needs a bound set in the database: `lock_timeout` for waits, `statement_timeout` per role so analytics cannot starve the app, `idle_in_transaction_session_timeout` and `transaction_timeout` for sessions that hold on. A budget checked in the same statement as the usage write cannot be overspent by racing clients. Retries without backoff multiply the load exactly when the server can least take it.\n\n**What's next:** `08_vectors_and_hybrid_search`, or the report: `workbook report --lessons observability`; from a terminal: `workbook top`, `workbook health`, `workbook advise --from-stats`.\n\n**References:** PostgreSQL documentation, *pg_stat_statements*; *The Cumulative Statistics System* (`pg_stat_io`, `pg_stat_user_indexes`, wait events); *Viewing Locks*; *Client Connection Defaults* (`statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout`, `transaction_timeout`); *ALTER ROLE*; *Routine Vacuuming*."),
        ("md", "## On your own\n\nA session with `lock_timeout = 300ms` asks for a row another session has locked and keeps locked. About how many milliseconds does it wait before `LockNotAvailable`? Write your answer and run the cell: it measures."),
        ("code", "from workbook.lessons.observability import locks_live\n\nanswer = 0  # your answer, in milliseconds\nwaited = locks_live(lab, waits_ms=(300, 300))[\"waiters\"][\"waiter_1\"][\"waited_ms\"]\nprint(f\"measured {waited} ms:\", \"right\" if abs(answer - waited) <= 100 else \"not quite\")"),
    ],
}


def build(out: Path = HERE) -> None:
    for name, cells in NOTEBOOKS.items():
        nb = nbf.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name}-{i:02d}"
        nbf.write(nb, out / f"{name}.ipynb")


if __name__ == "__main__":
    build()
