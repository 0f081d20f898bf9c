"""The cells of notebook transactions: ``python notebooks/_build.py`` writes it (without outputs).

Kept apart from _build.py while both are edited; ``NOTEBOOKS`` here has the same shape as there
(name -> [(kind, source)]), so its entry can be merged into that file's dict unchanged. Cell ids
follow the same scheme: "<name>-<index:02d>".
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _build import OPEN, intro  # noqa: E402

NAME = "04_transactions_and_integrity"

NOTEBOOKS = {
    NAME: [
        ("md", intro("Transactions and integrity: constraints, races, hot rows, MVCC and the ORM",
                     "send the bad writes generated code makes to a copy of the app's tables without constraints and to the real ones; race four clients spending one org's token budget four ways; push rising clients at one counter row; leave a transaction open and watch VACUUM; count what an ORM sends",
                     "why constraints are the last line of defence, which strategies lose updates under concurrency and which do not (and what each costs), why a hot row caps throughput, how a forgotten transaction bloats tables and slows index-only scans, what fillfactor buys, and how to spot N+1 in SQLAlchemy",
                     "00_start_here (or just run the first cell). The lesson writes to the dataset: it takes a pristine copy first and puts the dataset back in its last step", 10)),
        ("code", OPEN + "\n\nlesson = lab.lesson(\"transactions\")  # the same steps the report runs (workbook/lessons/transactions.py)"),
        ("md", "## Constraints as the safety net\n\nThe \"shipped fast\" copy (schema `shipped_fast`, created for this step and dropped after it) has the app's columns, `NOT NULL`s and primary keys, and no foreign key, check or unique constraint. The same eight bad writes go to it and to `ai_app` (there in a transaction that is always rolled back)."),
        ("code", "safety = lesson.step(\"constraints\")\nsafety[\"writes\"][[\"bad write\", \"without_constraints\", \"with_constraints\", \"error\"]]"),
        ("md", "Every row of `without_constraints` says **accepted**: eight garbage rows the app will read back later (an orphan message, a negative token count, a second key with the same prefix ...). Every row of `with_constraints` says **rejected**, and `error` names the constraint class the server raised: that error is what the app's code should have handled. What do the constraints cost? Forty valid messages per transaction, into each schema, in interleaved turns:"),
        ("code", "cost = safety[\"cost\"]\nprint(cost[\"text\"])\nprint(f\"{cost['without_ms_per_insert']} ms per insert without, {cost['with_ms_per_insert']} ms with\")"),
        ("md", "Read the interval: three foreign-key lookups and three checks per row are a fraction of a millisecond — the round trip costs more. Garbage, once in, costs a migration to clean up.\n\n## Races: four clients spending one org's token budget\n\nEach client spends 7 tokens 25 times, with 2 ms of \"thinking\" between reading the counter and writing it back. `lost_updates` is exact: committed spends minus the growth of the counter, divided by 7."),
        ("code", "race = lesson.step(\"races\")\nrace[\"strategies\"]"),
        ("md", "`read_modify_write` loses many of its spends: two clients read the same value and the second write overwrites the first. `atomic_update` (`SET x = x + n`), `select_for_update` (the row is locked from read to commit) and `serializable_retry` (the server refuses the second writer with a serialization failure, and the app retries) lose **zero**. Compare their `tps` and `p95_ms`: the lock serialises the think time, and serializable pays with `retries`.\n\nThen every request is submitted twice at once (a double click, a client retry after a timeout):"),
        ("code", "race[\"double_submit\"]"),
        ("md", "Checking \"is it there yet?\" in application code and inserting after lets both submissions through. A unique idempotency key with `INSERT ... ON CONFLICT DO NOTHING` lets the database decide: **0** duplicates.\n\n## Hot rows: one counter, rising clients\n\n`increment_org_usage` (the app's counter update) on one hot org with 1, 2, 4 and 8 clients for a second each, with `pg_stat_activity` sampled every 10 ms; then the fix: each request appends a row, and one session rolls them up into the counter."),
        ("code", "hot = lesson.step(\"hot_rows\")\nprint(\"after the roll-up:\", hot[\"roll_up\"])\nhot[\"runs\"][[\"method\", \"clients\", \"tps\", \"lock_wait_share\", \"top_waits\"]]"),
        ("md", "Follow `lock_wait_share` down the hot-row rows: with more clients, more of them are waiting for the previous writer's transaction (`Lock:transactionid`) and throughput stops growing with them. The append-only rows have no lock waits; their waits are WAL flushes (`IO:WalSync`, `LWLock:WALWrite`), which group commit shares between clients. On a busy 2-core machine the TPS numbers swing: read the waits.\n\n## Long transactions and MVCC\n\nA 20,000-row table with an index that covers an index-only scan. A `REPEATABLE READ` transaction (a report, say) is opened and left open while the app updates every row three times; `VACUUM (VERBOSE)` runs after each round."),
        ("code", "mv = lesson.step(\"mvcc\")\nmv[\"long_transaction\"]"),
        ("md", "With the transaction open, `removed` stays 0 and `dead_not_removable` grows by 20,000 a round: VACUUM may not remove a version the open snapshot might still read. The table grows (`table_bytes`), and the index-only scan's `heap_fetches` climbs from 0: the visibility map no longer says \"all visible\", so every index entry is checked against the heap. Once the transaction is closed (the lesson always closes it) one VACUUM removes everything, and the heap fetches are back to 0.\n\nHOT (heap-only tuple) updates avoid touching the indexes when the new version fits on the same page and no indexed column changes:"),
        ("code", "mv[\"hot_updates\"]"),
        ("md", "At fillfactor 100 the pages are full: no update is HOT and the index grows by an entry per updated row. At fillfactor 70 there is room on every page: every update is HOT and the index does not grow.\n\n## The ORM: N+1 and bulk inserts\n\n`workbook.orm` holds typed SQLAlchemy 2 models of the schema. A user's latest twenty conversations, then each one's `messages`: lazily (the default), with `selectinload` and with `joinedload`. Statements are counted with SQLAlchemy's `before_cursor_execute` event; all three run with the index the loads need."),
        ("code", "orm_out = lesson.step(\"the_orm\")\norm_out[\"n_plus_one\"]"),
        ("md", "`statements` for `lazy` is 1 + the number of conversations: one query for the list, one per conversation as the loop touches `.messages`. `selectinload` sends two (the list, then every message `WHERE conversation_id IN (...)`), `joinedload` one (a `LEFT OUTER JOIN`). The fix is one option on the query:\n\n```python\nselect(Conversation).where(Conversation.user_id == uid).options(selectinload(Conversation.messages))\n```\n\nBulk inserts of 1,000 messages, each rolled back:"),
        ("code", "orm_out[\"bulk_insert\"]"),
        ("md", "`unit_of_work_row_by_row` is the unit of work with `use_insertmanyvalues=False` (SQLAlchemy 1.x's way): one `INSERT ... RETURNING` per object. SQLAlchemy 2 batches the same flush into one statement (`insertmanyvalues`); without objects to track, a bulk `insert(Message)` of dicts is faster still, and `COPY` is the fastest way in.\n\n## Put the dataset back\n\nThe races and the hot rows wrote to `ai_app.organisations`: the dataset is reset from the pristine copy taken before the first write."),
        ("code", "lesson.step(\"put_back\")"),
        ("md", "## What was measured\n\nThe figures this lesson's claims rest on — the same names `workbook report --lessons transactions --json` prints."),
        ("code", "result = lesson.result()  # stored with the lab's results\nf = result.figures\nf[\"garbage_rows_accepted\"], f[\"lost_updates_per_10k\"], f[\"duplicates_with_idempotency_key\"], f[\"hot_row_tps\"], f[\"orm_statements\"]"),
        ("md", "## Summary\n\nConstraints are cheap per insert and reject every bad write the app makes; without them the garbage stays. Under concurrency, read-modify-write in application code loses updates; an atomic `UPDATE ... SET x = x + n`, `SELECT ... FOR UPDATE` or `SERIALIZABLE` with a retry loop lose none, at different prices in throughput and retries, and only a unique key stops a double submit. Every writer of one row waits for the one before it: append and roll up instead. A transaction left open stops VACUUM and makes index-only scans read the heap; close transactions, and leave free space (fillfactor) where rows are updated. An ORM's lazy loading sends one statement per row: say `selectinload` or `joinedload`.\n\n**What's next:** `05_replicas_and_read_scaling`, or the report: `workbook report --lessons transactions`.\n\n**References:** PostgreSQL documentation, *Constraints*; *Transaction Isolation*; *Explicit Locking*; *Routine Vacuuming*; *Heap-Only Tuples (HOT)*; *Index-Only Scans and Covering Indexes*; *The Cumulative Statistics System* (`pg_stat_activity` wait events). SQLAlchemy documentation, *Relationship Loading Techniques*; *\"Insert Many Values\" Behavior for INSERT statements*."),
        ("md", "## On your own\n\nHow many statements does lazy loading send for a user's latest **five** conversations? Write your answer and run the cell: it loads them and counts."),
        ("code", "from workbook.lessons.transactions import n_plus_one\n\nanswer = 0  # your answer: statements sent, lazily, for five conversations\nmeasured = n_plus_one(lab, conversations=5, repeats=2).set_index(\"loading\")\nprint(measured[[\"conversations\", \"statements\"]])\nprint(\"right\" if answer == measured.loc[\"lazy\", \"statements\"] else f\"not quite: {measured.loc['lazy', 'statements']} measured\")"),
    ],
}
