"""The cells of notebook pooling: ``python notebooks/_build.py`` writes it (without outputs).

Kept apart from _build.py; ``NOTEBOOKS`` here has the same shape as there (name -> [(kind,
source)]). Cell ids follow the same scheme: "<name>-<index:02d>".
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _build import OPEN, intro  # noqa: E402

NAME = "06_connections_and_pooling"

NOTEBOOKS = {
    NAME: [
        ("md", intro("Connections and pooling: 200 users, 100 server sessions, a pool of 50",
                     "put 200 concurrent clients on a server that takes 100 sessions: straight, through a psycopg pool, a SQLAlchemy engine and PgBouncer; then measure a pool's queue against Little's law, a connection per request, clients idle in a transaction, and prepared statements through a transaction pooler",
                     "why 'too many clients' happens and what a pool does instead, how long a request waits for a connection and how to predict it, what a new connection costs, how one forgotten transaction starves a pool, and the one psycopg setting PgBouncer 1.18 needs",
                     "00_start_here (or just run the first cell). PgBouncer for its arms (`sudo apt-get install pgbouncer`; without it they are marked not run). The lesson only reads the dataset", 2)),
        ("code", OPEN + "\n\nlesson = lab.lesson(\"pooling\")  # the same steps the report runs (workbook/lessons/pooling.py)"),
        ("md", "## The server and the pooler\n\n`max_connections` is how many sessions the server accepts (100 is PostgreSQL's default, and the local cluster keeps it; `reserved` of them are kept for superusers). If PgBouncer is installed, the lesson starts it in front of the primary — transaction pooling, 50 server connections, on 127.0.0.1 — as `workbook up --pooler` does."),
        ("code", "setup = lesson.step(\"setup\")\nsetup"),
        ("md", "`pgbouncer` is its version; if it is `None`, `not_run` says how to install it, and every PgBouncer arm below says **not run**.\n\n## 200 clients, one connection each\n\nThe `read` mix (the read side of chat plus the usage dashboard) from 200 Python threads, each opening its own connection."),
        ("code", "direct = lesson.step(\"direct\")\ndirect[\"connect_storm\"]"),
        ("md", "All 200 clients connected at once (a deploy, a restart of the app): `opened` is about `max_connections` minus the sessions already there, and every other client was `refused` with *sorry, too many clients already* (`too_many_clients`): past `max_connections` a client gets no session at all. Then the mix on one connection per client, for a few seconds:"),
        ("code", "print(direct[\"load\"].summary())\ndirect[\"load\"].errors()"),
        ("md", "The clients that got a session run; the others retry every 50 ms, each attempt a fork and a refusal (`too_many_clients`, when a retry lands while the server is full).\n\n## 200 threads on a psycopg_pool of 50"),
        ("code", "pool = lesson.step(\"psycopg_pool\")\nprint(pool.summary())"),
        ("md", "No errors: the 150 threads without a connection wait in the pool's queue. The p95 now includes that wait.\n\n## The same through a SQLAlchemy engine\n\n`create_engine(url, pool_size=50, max_overflow=0, pool_timeout=5)`: how most Python web apps meet a pool."),
        ("code", "lesson.step(\"sqlalchemy\")"),
        ("md", "## 200 clients through PgBouncer, pool 50\n\npgbench opens 200 connections to PgBouncer; PgBouncer lends its 50 server connections one transaction at a time. For comparison, 50 pgbench clients straight to the server, the same mix."),
        ("code", "bouncer = lesson.step(\"pgbouncer\")\nfor name, run in bouncer.items():\n    print(name, \"|\", run if isinstance(run, str) else run.summary())"),
        ("md", "`through_pooler` has 200 clients and **no errors**; its TPS is close to `direct_pool_size`'s, its p95 higher: four clients share each server connection, so each waits its turn.\n\n## The queue: Little's law and PoolTimeout\n\n200 threads, a pool of 50, every request `SELECT pg_sleep(0.05)`. In a closed loop 50 requests are served and 150 wait; Little's law says the wait is the queue length over the throughput: 150 / (50 / 0.05 s) = **150 ms**."),
        ("code", "q = lesson.step(\"queue\")\nq[\"wait\"]"),
        ("md", "Compare `wait_p50_ms` with `littles_law_wait_ms` (the law with the measured throughput) and `predicted_wait_ms` (before running anything). Now the same with a pool timeout of 0.1 s, shorter than that wait:"),
        ("code", "q[\"short_timeout\"]"),
        ("md", "`pool_timeouts` counts `PoolTimeout`s: the app gave up on requests the server would have served 50 ms later. A timeout shorter than the queue wait does not make the queue shorter.\n\n## A new connection per request\n\n`SELECT 1` with pgbench `-C` (connect, authenticate with SCRAM, run, disconnect) against connections kept open."),
        ("code", "lesson.step(\"connect_per_request\")"),
        ("md", "Compare the `tps` of `direct_connect` with `direct_persistent`: a new session costs a fork and a SCRAM exchange (4096 rounds of PBKDF2 on each side) — orders of magnitude more than the query. `pooler_connect` is the same through PgBouncer: it forks nothing, but still checks the password.\n\n## Idle in transaction starves the pool\n\nAs many clients as PgBouncer has server connections run `BEGIN; SELECT 1` and then wait 3 s (for a model's answer, say) with the transaction open; 20 other clients run `SELECT 1` meanwhile. Then again with `idle_in_transaction_session_timeout = '300ms'`."),
        ("code", "idle = lesson.step(\"idle_in_transaction\")\nidle"),
        ("md", "`worker_requests_done` is 0 without the timeout: every server connection is held by a transaction doing nothing. With it, the server ends those sessions after 300 ms (`holders_terminated`), PgBouncer gets its connections back and the other clients run.\n\n## Prepared statements through a transaction pooler\n\npsycopg prepares a statement after it ran 5 times (`prepare_threshold=5`); here `0` (prepare at once) against `None` (never), four clients through PgBouncer."),
        ("code", "lesson.step(\"prepared_statements\")"),
        ("md", "With `prepare_threshold=0` some requests fail with *prepared statement \"_pg3_0\" already exists*: two clients prepared the same name on the server connection PgBouncer lent them both. With `prepare_threshold=None`: no errors. (PgBouncer 1.21 and later tracks prepared statements itself: `max_prepared_statements`.)"),
        ("code", "lesson.step(\"put_back\")"),
        ("md", "## What was measured\n\nThe figures this lesson's claims rest on — the same names `workbook report --lessons pooling --json` prints."),
        ("code", "result = lesson.result()  # stored with the lab's results\nf = result.figures\n{k: (v[\"tps\"], v[\"p95_ms\"], v[\"errors\"]) for k, v in f[\"setups\"].items()}"),
        ("code", "f[\"pool_wait_p95_ms\"], f[\"littles_law_wait_ms\"], f[\"connect_per_request_tps\"], f[\"not_run\"]"),
        ("md", "## Summary\n\nA server with `max_connections` sessions refuses the client after them; 200 users need a pool, not a bigger server. A pool of 50 — psycopg_pool, a SQLAlchemy engine or PgBouncer in front of the server — serves all 200 without an error, and the price is a queue whose wait Little's law predicts from the pool size and the request time. A connection per request pays a fork and a SCRAM exchange every time. A transaction left open holds a pooled connection: set `idle_in_transaction_session_timeout`. Through a transaction pooler older than 1.21, tell psycopg `prepare_threshold=None`.\n\n**What's next:** `08_vectors_and_hybrid_search`, or the report: `workbook report --lessons pooling`. From the shell: `workbook up --pooler`, `workbook bench --mix read --clients 200 --pool pgbouncer`.\n\n**References:** PostgreSQL documentation, *Connections and Authentication* (`max_connections`); *Client Connection Defaults* (`idle_in_transaction_session_timeout`); *pgbench*. PgBouncer, *Configuration* (`pool_mode`, `default_pool_size`, `max_prepared_statements`). psycopg, *Connection pools*; *Prepared statements*. SQLAlchemy, *Connection Pooling*."),
        ("md", "## On your own\n\n100 threads on a pool of 20, each request 50 ms: how many milliseconds does a request wait for a connection, by Little's law? Write your answer and run the cell: it measures."),
        ("code", "from workbook.lessons.pooling import queue_wait\n\nanswer = 0  # your answer: the wait in ms\nm = queue_wait(lab.target, clients=100, pool_size=20, duration_s=2)\nprint(m)\nprint(\"right\" if abs(answer - m[\"wait_p50_ms\"]) < 0.2 * m[\"wait_p50_ms\"] else f\"not quite: {m['wait_p50_ms']} ms measured\")"),
    ],
}
