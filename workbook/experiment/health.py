"""Database health from the server's own statistics: what a DBA checks after a workload.

:func:`health` returns one JSON-ready dict:

* ``unused_indexes``: indexes of user schemas never scanned since the statistics were reset
  (``pg_stat_user_indexes.idx_scan = 0``), leaving out primary keys, unique indexes and
  constraints (they enforce something even when never read), with their sizes;
* ``overlapping_indexes``: pairs on the same table and access method, neither partial, where one's
  key columns are a leading prefix of the other's (equal keys: a duplicate);
* ``cache_hit_ratio``: ``blks_hit / (blks_hit + blks_read)`` of the current database
  (``pg_stat_database``; reads the OS cache served count as reads);
* ``io`` (PostgreSQL 16+): ``pg_stat_io`` reads, writes, hits and evictions per backend type,
  object and context, non-zero rows only;
* ``tables``: dead tuples, the share they are of the table, and **autovacuum lag**: how many
  more dead tuples autovacuum waits for (``autovacuum_vacuum_threshold +
  autovacuum_vacuum_scale_factor × reltuples − n_dead_tup``, per-table settings honoured) and
  the time since the last (auto)vacuum;
* ``settings``: the ones this lesson's checks depend on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cluster.target import Target

SETTINGS = (
    "shared_buffers", "work_mem", "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
    "transaction_timeout", "autovacuum", "autovacuum_vacuum_scale_factor", "autovacuum_vacuum_threshold",
    "track_io_timing", "max_connections",
)  # fmt: skip

_USER_SCHEMAS = "NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"


def unused_indexes(conn: Any, schemas: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT s.schemaname, s.relname, s.indexrelname, pg_relation_size(s.indexrelid), s.idx_scan"
        " FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid"
        f" WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary AND s.schemaname {_USER_SCHEMAS}"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid)"
        " ORDER BY pg_relation_size(s.indexrelid) DESC, 3"
    ).fetchall()
    return [{"schema": r[0], "table": r[1], "index": r[2], "size_bytes": int(r[3])} for r in rows
            if schemas is None or r[0] in schemas]  # fmt: skip


def overlapping_indexes(conn: Any) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT n.nspname, t.relname, ic.relname, am.amname, array_to_string(i.indkey::int2[], ','), array_to_string(i.indclass::oid[], ','),"
        " pg_relation_size(i.indexrelid), i.indisunique"
        " FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_am am ON am.oid = ic.relam"
        f" WHERE n.nspname {_USER_SCHEMAS} AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indisvalid"
    ).fetchall()
    out = []
    by_table: dict[tuple[str, str, str], list[tuple[str, list[str], list[str], int, bool]]] = {}
    for schema, table, index, am, keys, classes, size, unique in rows:
        k, c = keys.split(","), classes.split(",")
        by_table.setdefault((schema, table, am), []).append((index, k, c, int(size), bool(unique)))
    for (schema, table, am), idx in sorted(by_table.items()):
        for a in idx:
            for b in idx:
                if a[0] == b[0] or a[4]:  # a unique index enforces something: never the redundant one
                    continue
                n = len(a[1])
                if n <= len(b[1]) and b[1][:n] == a[1] and b[2][:n] == a[2] and (n < len(b[1]) or a[0] > b[0]):
                    out.append({"schema": schema, "table": table, "method": am, "redundant": a[0], "covered_by": b[0],
                                "duplicate": n == len(b[1]), "size_bytes": a[3]})  # fmt: skip
    return out


def cache_hit_ratio(conn: Any) -> float | None:
    row = conn.execute("SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()").fetchone()
    if row is None or not (row[0] + row[1]):
        return None
    return round(row[0] / (row[0] + row[1]), 4)


def io_stats(conn: Any) -> list[dict[str, Any]]:
    if conn.info.server_version < 160000:
        return []
    cur = conn.execute(
        "SELECT * FROM pg_stat_io WHERE coalesce(reads, 0) + coalesce(writes, 0) + coalesce(hits, 0)"
        " + coalesce(evictions, 0) + coalesce(extends, 0) > 0 ORDER BY coalesce(reads, 0) + coalesce(hits, 0) DESC"
    )
    names = [d.name for d in cur.description]
    keep = ("backend_type", "object", "context", "reads", "writes", "extends", "hits", "evictions", "fsyncs")
    return [{k: v for k, v in zip(names, r) if k in keep} for r in cur.fetchall()]


def table_health(conn: Any) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT s.schemaname, s.relname, s.n_live_tup, s.n_dead_tup, c.reltuples,"
        " coalesce((SELECT split_part(o, '=', 2) FROM unnest(c.reloptions) o WHERE o LIKE 'autovacuum_vacuum_threshold=%%'),"
        "          current_setting('autovacuum_vacuum_threshold'))::float8,"
        " coalesce((SELECT split_part(o, '=', 2) FROM unnest(c.reloptions) o WHERE o LIKE 'autovacuum_vacuum_scale_factor=%%'),"
        "          current_setting('autovacuum_vacuum_scale_factor'))::float8,"
        " extract(epoch FROM now() - greatest(s.last_autovacuum, s.last_vacuum)), s.autovacuum_count, s.n_mod_since_analyze"
        f" FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.schemaname {_USER_SCHEMAS}"
        " ORDER BY s.n_dead_tup DESC, 1, 2"
    ).fetchall()  # fmt: skip
    out = []
    for schema, table, live, dead, reltuples, threshold, scale, since, avc, mods in rows:
        trigger = threshold + scale * max(float(reltuples), 0.0)
        out.append({
            "schema": schema, "table": table, "live": int(live), "dead": int(dead),
            "dead_share": round(dead / (live + dead), 4) if live + dead else 0.0,
            "autovacuum_at": int(trigger), "autovacuum_lag": int(max(trigger - dead, 0)),
            "seconds_since_vacuum": None if since is None else round(float(since), 1),
            "autovacuum_count": int(avc), "mods_since_analyze": int(mods),
        })  # fmt: skip
    return out


def health(target: Target, *, schemas: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The health checks of the module doc, on the target's primary (read-only queries)."""
    with target.connect(application_name="workbook-observe") as conn:
        settings = dict(conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY 1", (list(SETTINGS),)
        ).fetchall())  # fmt: skip
        reset = conn.execute("SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()").fetchone()
        return {
            "server_version": conn.info.server_version,
            "stats_since": None if reset is None or reset[0] is None else reset[0].isoformat(),
            "unused_indexes": unused_indexes(conn, schemas),
            "overlapping_indexes": overlapping_indexes(conn),
            "cache_hit_ratio": cache_hit_ratio(conn),
            "io": io_stats(conn),
            "tables": table_health(conn),
            "settings": settings,
        }
