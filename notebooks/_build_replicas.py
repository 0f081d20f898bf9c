"""The cells of notebook replicas: ``python notebooks/_build.py`` writes it (without outputs).

Kept apart from _build.py; ``NOTEBOOKS`` here has the same shape as there (name -> [(kind,
source)]). Cell ids follow the same scheme: "<name>-<index:02d>".
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _build import OPEN, intro  # noqa: E402

NAME = "05_replicas_and_read_scaling"

NOTEBOOKS = {
    NAME: [
        ("md", intro("Read replicas: read scaling, lag, stale reads, synchronous commit and failover",
                     "give the primary two streaming replicas, each node its own CPU budget, and measure what they buy and what they cost: read throughput by replica count, lag during a write burst, reads that miss a write made a moment before, the commit latency of each synchronous-commit level, the writes a crash of the primary loses, and a replica of a replica",
                     "when replicas scale reads (and why on one laptop only with a CPU budget per node), what replication lag looks like in bytes and seconds, how to read your own writes (remote_apply or waiting for an LSN) and what each costs, and how many acknowledged writes async replication can lose in a failover",
                     "00_start_here (or just run the first cell). CPU budgets need cgroups (root or a delegated controller); without them (Binder) the nodes share the CPUs and the lesson says what it could not show. The lesson adds two replicas and puts the cluster back at the end; it writes only to scratch tables", 3)),
        ("code", OPEN + "\nfrom workbook.ui.replica_panel import lag_chart, scaling_chart\n\nlesson = lab.lesson(\"replicas\")  # the same steps the report runs (workbook/lessons/replicas.py)"),
        ("md", "## Replicas and CPU budgets\n\nOn one laptop every node shares the same cores: a replica adds no CPU, so it cannot add read throughput. The lesson gives each node its own budget (half a core, a cgroup quota) so that the primary and its replicas behave like three small machines, and adds two replicas (pg_basebackup, each with its own slot)."),
        ("code", "setup = lesson.step(\"setup\")\n{k: setup[k] for k in (\"replicas\", \"cpus_per_node\", \"cpu_budget\", \"not_shown\")}"),
        ("md", "`cpu_budget` is how the budget is enforced (`cgroup`); `shared` means this machine could not give each node its own CPU, and `not_shown` says why: the next step still measures, but cannot show what separate machines would.\n\n## Read scaling: primary, + 1, + 2 replicas\n\nThe `read` mix (the read side of chat and the usage dashboard) from the same six pgbench clients: routed to the primary alone, then spread over primary + 1 and primary + 2 replicas; two rounds in rotating order."),
        ("code", "scaling = lesson.step(\"read_scaling\")\nrows = [{\"label\": f\"primary + {k} replicas\", **v} for k, v in scaling[\"arms\"].items()]\nshow(scaling_chart(rows))\n{k: (v[\"tps\"], v[\"tps_ci\"], v[\"p95_ms\"]) for k, v in scaling[\"arms\"].items()}"),
        ("md", "Read the TPS with its interval (the black bar): with a budget per node, each replica adds about one node's worth of throughput, and p95 falls because each node has fewer clients queued on its half core. `by_node` in each arm shows the clients' work spread over the nodes.\n\n## Lag during a write burst\n\nWhile four clients read from the replicas, the primary bulk-inserts messages (copies of the dataset's rows into a scratch table with the same columns and indexes, so the dataset stays as loaded). Every 50 ms: how many bytes of WAL each replica has not replayed yet, and `replay_lag` in seconds."),
        ("code", "lagged = lesson.step(\"lag\")\nshow(lag_chart(lagged[\"frame\"], (lagged[\"burst_start_s\"], lagged[\"burst_end_s\"])))\nlagged[\"rows\"], lagged[\"burst_seconds\"], lagged[\"per_replica\"]"),
        ("md", "During the burst (shaded) the replicas fall megabytes behind: each replays the WAL on its own half core, with the readers' queries beside it. A read sent to a replica then sees the database as it was that long ago.\n\n## Stale reads: reading your own writes\n\n500 times: insert a row on the primary, then read it at once from a replica. Async (the default): the replica may not have it yet. `remote_apply` (every replica a synchronous standby): the commit returns only when the replicas applied it. LSN-wait: the writer reads its commit's WAL position (`pg_current_wal_insert_lsn()`), the reader waits until `pg_last_wal_replay_lsn()` passes it."),
        ("code", "stale = lesson.step(\"stale\")\n{m: {k: v.get(k) for k in (\"per_1000\", \"commit_p50_ms\", \"commit_p95_ms\", \"wait_p50_ms\")} for m, v in stale.items()}"),
        ("md", "`per_1000` is the stale reads per thousand. Async misses many; `remote_apply` and LSN-wait miss none. The price differs: `remote_apply` makes **every** commit wait for the replicas (`commit_p50_ms`), LSN-wait makes only the reads that follow a write wait (`wait_p50_ms`), and only for as long as the replica needs.\n\n## What each synchronous-commit level costs\n\nThe same one-row insert, its session at each `synchronous_commit` level, with both replicas synchronous standbys; levels interleaved in five rounds."),
        ("code", "levels = lesson.step(\"sync_levels\")\nlevels[\"levels\"]"),
        ("md", "`off` does not wait for the local WAL flush (a crash can lose the last moments of commits, never corrupt); `local` waits for it; `on` also for a replica's flush, `remote_write` for its write (not its flush), `remote_apply` for its replay. On loopback the network costs microseconds: what you see is the replicas' disk and CPU.\n\n## Failover drill: kill -9 the primary\n\nOn a scratch cluster of its own (the lab's stays untouched): four writers insert rows and record every id whose commit returned; the primary's WAL senders are frozen for the last half second (as a stalled network would; on loopback the WAL would otherwise already be on its way), the primary is killed with `kill -9`, the most advanced replica is promoted, and the acknowledged ids it does not have are counted. Then the same with `remote_apply`."),
        ("code", "drill = lesson.step(\"failover\")\n{m: {k: d.get(k) for k in (\"acknowledged\", \"lost\", \"rto_s\", \"behind_bytes\", \"not_run\")} for m, d in drill.items()}"),
        ("md", "`lost` is the recovery point in transactions: acknowledged to the app, gone after the failover. With `remote_apply` it is 0: no commit was acknowledged before a replica had it. `rto_s` is the time from the kill to the first write the new primary accepted (a real failover manager adds its detection timeout). `how_behind` says exactly how the replicas were made to fall behind:"),
        ("code", "drill[\"async\"].get(\"how_behind\") or drill[\"async\"].get(\"not_run\")"),
        ("md", "## A cascading replica\n\nA third replica that streams from `replica1` instead of the primary (fewer WAL senders on the primary, one more hop for the WAL). The same kind of burst, without readers: its lag beside a direct replica's."),
        ("code", "cascaded = lesson.step(\"cascade\")\nif \"frame\" in cascaded:\n    show(lag_chart(cascaded[\"frame\"], (cascaded[\"burst_start_s\"], cascaded[\"burst_end_s\"])))\n{k: cascaded.get(k) for k in (\"upstream\", \"cascaded\", \"direct\", \"per_replica\", \"not_run\")}"),
        ("code", "lesson.step(\"put_back\")  # the replica count, synchronous commit and CPU budget the cluster had"),
        ("md", "## What was measured\n\nThe figures this lesson's claims rest on — the same names `workbook report --lessons replicas --json` prints."),
        ("code", "result = lesson.result()  # stored with the lab's results\nf = result.figures\nf[\"read_tps\"], f[\"read_p95_ms\"], f[\"cpus_per_node\"], f[\"max_lag_bytes_during_burst\"]"),
        ("code", "f[\"stale_reads_per_1000\"], f[\"commit_p50_ms\"], {m: (v[\"acknowledged\"], v[\"lost\"], v[\"rto_s\"]) for m, v in f[\"failover\"].items()}, f[\"not_run\"]"),
        ("md", "## Summary\n\nReplicas scale reads when each has CPU of its own: on one laptop that takes a budget per node, and then two replicas multiply read throughput. They lag: a write burst puts them megabytes behind, and a read sent to a replica right after a write misses it. Reading your own writes takes `remote_apply` (every commit pays) or waiting on the replica for the write's LSN (only the read after a write pays). Async replication acknowledges commits a failover can lose; `remote_apply` loses none, at a commit latency you measured.\n\n**What's next:** `06_connections_and_pooling` — 200 users on a server that takes 100 sessions. From the shell: `workbook up --replicas 2`, `workbook bench --mix read --route all`, `workbook drill failover --sync async`.\n\n**References:** PostgreSQL documentation, *High Availability, Load Balancing, and Replication*; *Log-Shipping Standby Servers* (streaming and cascading replication); *Write Ahead Log* settings (`synchronous_commit`); *Replication* settings (`synchronous_standby_names`); *The Statistics Collector* (`pg_stat_replication`); *Recovery Control Functions* (`pg_last_wal_replay_lsn`, `pg_wal_replay_pause`); *Failover*."),
        ("md", "## Your turn\n\nMove the replica slider, route the reads, pick a synchronous-commit level and a mix with writes (`chat`), press **Run**: TPS and p95 join the chart, and the replicas' lag during the run is drawn below. The replica count you choose stays (as `workbook up --replicas N` would); the commit level applies to the run only."),
        ("code", "lab.replica_panel()"),
        ("md", "## On your own\n\nWith one replica's replay paused (`pg_wal_replay_pause()`), 200 writes each read at once from that replica: how many of them are stale? Write your answer and run the cell: it pauses the replica, measures, and resumes it."),
        ("code", "from workbook.lessons.replicas import paused_stale_reads\n\nanswer = 0  # your answer: stale reads out of 200\nm = paused_stale_reads(lab, writes=200)\nprint(m)\nprint(\"right\" if answer == m[\"stale\"] else f\"not quite: {m['stale']} of 200 were stale\")"),
    ],
}
