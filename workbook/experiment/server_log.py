"""A PostgreSQL server's log, read from where it was when you started: and auto_explain's plans in it.

:func:`open_log` finds how to read one node's log, or says why it cannot be read:

* the local cluster's node writes to ``<home>/nodes/<node>/postgres.log`` (stderr, no logging
  collector: see :mod:`workbook.cluster._node`), found from ``data_directory``; :class:`FileLog` reads
  it directly from the offset it had when opened (a file replaced or truncated meanwhile is read
  from its start, and said);
* elsewhere, :class:`SqlLog` reads the file ``pg_current_logfile()`` names (jsonlog, csvlog or
  stderr; a logging collector is needed) with ``pg_read_binary_file`` from the remembered offset,
  and the files the collector rotated to meanwhile (``pg_ls_logdir()``) whole. That needs a
  superuser or ``pg_read_server_files``; managed services usually allow neither.

:func:`parse_log` finds auto_explain's entries in what was read: a line ending in
``duration: N ms  plan:`` with the JSON on the following tab-indented lines (stderr), or one
jsonlog/csvlog record; an entry cut off or not JSON is counted, never raised.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from ..cluster.target import Target

MAX_READ_BYTES = 256 * 1024 * 1024  # per node and capture: a runaway log is read in part, and says so
_CHUNK = 8 * 1024 * 1024
_HEADER = re.compile(r"(?:LOG|INFO|NOTICE|WARNING|DEBUG\d?):\s+duration: (?P<ms>\d+(?:\.\d+)?) ms\s+plan:\s*$")
_STAMP = re.compile(r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)(?: (?P<tz>[A-Za-z]{2,5}|[+-]\d\d(?::?\d\d)?))?")
_PID = re.compile(r"\[(?P<pid>\d+)\]")
_APP = re.compile(r"\[\d+\] (?P<app>\S+) *$")


# --------------------------------------------------------------------------- parsing the log
def parse_log(text: str, fmt: str = "stderr") -> tuple[list[dict[str, Any]], int]:
    """auto_explain's entries in a piece of server log: ([{"ms", "logged_at", "pid", "doc"}], unparsed).

    ``fmt`` is ``stderr`` (a prefix line ending in ``duration: N ms  plan:``, then the JSON on lines
    indented by a tab), ``jsonlog`` (one JSON object per line, the plan inside ``message``) or
    ``csvlog``. An entry cut off (the log read mid-write) or not JSON is counted, not raised.
    """
    if fmt == "jsonlog":
        return _parse_records(_jsonlog_records(text))
    if fmt == "csvlog":
        return _parse_records(_csvlog_records(text))
    out: list[dict[str, Any]] = []
    bad = 0
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = _HEADER.search(lines[i])
        if not m:
            i += 1
            continue
        prefix = lines[i][: m.start()]
        body = []
        i += 1
        while i < len(lines) and lines[i].startswith("\t"):
            body.append(lines[i][1:])
            i += 1
        entry = _entry(float(m["ms"]), prefix, "\n".join(body))
        if entry is None:
            bad += 1
        else:
            out.append(entry)
    return out, bad


def _entry(ms: float, prefix: str, body: str, stamp: str | None = None, pid: Any = None,
           app: Any = None) -> dict[str, Any] | None:  # fmt: skip
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or "Plan" not in doc:
        return None
    if pid is None:
        p = _PID.search(prefix)
        pid = p["pid"] if p else None
    if app is None and prefix:  # the cluster's prefix, '%m [%p] %q%a ': the application name follows the pid
        a = _APP.search(prefix)
        app = a["app"] if a else None
    return {"ms": ms, "logged_at": _timestamp(stamp or prefix), "pid": int(pid) if pid not in (None, "") else None,
            "app": str(app) if app not in (None, "") else None, "doc": doc}


def _timestamp(text: str) -> dt.datetime | None:
    m = _STAMP.search(text or "")
    if not m:
        return None
    try:
        t = dt.datetime.fromisoformat(m["ts"])
    except ValueError:
        return None
    tz = m["tz"]
    if tz in (None, "UTC", "GMT", "Z"):
        return t.replace(tzinfo=dt.UTC)
    if tz[0] in "+-":
        try:
            return dt.datetime.fromisoformat(m["ts"] + tz + (":00" if len(tz) == 3 else ""))
        except ValueError:
            return t
    return t  # a zone abbreviation (CET ...): kept as the server's local time


def _jsonlog_records(text: str) -> Iterator[tuple[str, str, Any, Any]]:
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("message"), str):
            yield rec["message"], str(rec.get("timestamp", "")), rec.get("pid"), rec.get("application_name")


def _csvlog_records(text: str) -> Iterator[tuple[str, str, Any, Any]]:
    for row in csv.reader(io.StringIO(text)):
        if len(row) > 13:
            yield row[13], row[0], row[3], row[22] if len(row) > 22 else None


def _parse_records(records: Iterator[tuple[str, str, Any, Any]]) -> tuple[list[dict[str, Any]], int]:
    out, bad = [], 0
    for message, stamp, pid, app in records:
        head, _, body = message.partition("\n")
        m = re.match(r"duration: (\d+(?:\.\d+)?) ms\s+plan:\s*$", head)
        if not m:
            continue
        entry = _entry(float(m[1]), "", body, stamp=stamp, pid=pid, app=app)
        if entry is None:
            bad += 1
        else:
            out.append(entry)
    return out, bad


# --------------------------------------------------------------------------- reading only the new part of a log
class FileLog:
    """The local node's ``postgres.log``, read directly from the offset it had at the start."""

    fmt = "stderr"

    def __init__(self, path: Path) -> None:
        self.path = path
        st = path.stat()
        self.inode, self.offset = st.st_ino, st.st_size

    def read_new(self) -> tuple[str, list[str]]:
        notes = []
        st = self.path.stat()
        start = self.offset
        if st.st_ino != self.inode or st.st_size < self.offset:
            start = 0  # replaced or truncated meanwhile: what the old file got after the offset is gone
            notes.append(f"{self.path.name} was replaced during the capture; read from its start")
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(MAX_READ_BYTES)
        if st.st_size - start > MAX_READ_BYTES:
            notes.append(f"read the first {MAX_READ_BYTES >> 20} MB of {st.st_size - start:,} new bytes")
        return data.decode("utf-8", errors="replace"), notes


class SqlLog:
    """The server's current log file read through SQL (``pg_read_binary_file``), plus files rotated to."""

    def __init__(self, target: Target, node: str, path: str, fmt: str, *, app: str = "workbook-log",
                 collector: bool = True) -> None:  # fmt: skip
        self.target, self.node, self.path, self.fmt, self.app = target, node, path, fmt, app
        self.collector = collector  # False: a file the server writes without a logging collector
        with target.connect(node, application_name=app) as conn:
            self.offset = int(conn.execute("SELECT size FROM pg_stat_file(%s)", (path,)).fetchone()[0])  # type: ignore[index]
            self.started = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]

    def read_new(self) -> tuple[str, list[str]]:
        import psycopg

        notes: list[str] = []
        with self.target.connect(self.node, application_name=self.app) as conn:
            self._settle(conn)
            size = int(conn.execute("SELECT size FROM pg_stat_file(%s, true)", (self.path,)).fetchone()[0] or 0)  # type: ignore[index]
            start = self.offset if size >= self.offset else 0
            parts = [self._read(conn, self.path, start, size)]
            suffix = os.path.splitext(self.path)[1]
            try:
                rotated = conn.execute(
                    "SELECT name, size FROM pg_ls_logdir() WHERE modification >= %s ORDER BY modification, name",
                    (self.started,)).fetchall()  # fmt: skip
            except psycopg.Error:
                rotated = []  # not allowed to list the log directory (or there is none): the current file only
            base = os.path.dirname(self.path)
            for name, nsize in rotated:
                full = os.path.join(base, name)
                if full != self.path and name.endswith(suffix):
                    parts.append(self._read(conn, full, 0, int(nsize)))
                    notes.append(f"the log rotated to {name} during the capture; read it too")
        return "".join(parts), notes

    def _settle(self, conn: psycopg.Connection[Any], timeout_s: float = 2.0) -> None:
        """Wait until the logging collector has written what the backends sent it (its pipe is
        asynchronous): the current log file's size the same twice, 100 ms apart."""
        import psycopg

        query = ("SELECT (pg_stat_file(f, true)).size FROM coalesce(pg_current_logfile(%s), %s) f")
        fmt = None if self.fmt == "stderr" and not self.collector else self.fmt
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                size = conn.execute(query, (fmt, self.path)).fetchone()[0]  # type: ignore[index]
            except psycopg.Error:
                return
            if size == last:
                return
            last = size
            time.sleep(0.1)

    @staticmethod
    def _read(conn: psycopg.Connection[Any], path: str, start: int, end: int) -> str:
        chunks = []
        pos = start
        end = min(end, start + MAX_READ_BYTES)
        while pos < end:
            n = min(_CHUNK, end - pos)
            data = conn.execute("SELECT pg_read_binary_file(%s, %s, %s, true)", (path, pos, n)).fetchone()[0]  # type: ignore[index]
            if not data:
                break
            chunks.append(bytes(data))
            pos += len(data)
        return b"".join(chunks).decode("utf-8", errors="replace")


def open_log(target: Target, node: str, access: str = "auto", *, app: str = "workbook-log") -> tuple[FileLog | SqlLog | None, str]:
    """How to read ``node``'s log (``access``: auto, file or sql), or None and why it cannot be read."""
    import psycopg

    with target.connect(node, application_name=app) as conn:
        local_path: Path | None = None
        if target.kind == "local":  # the node's log lives beside its data directory (cluster/_node.py)
            local_path = Path(str(conn.execute("SHOW data_directory").fetchone()[0])).parent / "postgres.log"  # type: ignore[index]
        if access in ("auto", "file") and local_path is not None and os.access(local_path, os.R_OK):
            return FileLog(local_path), ""
        if access == "file":
            return None, f"{node}'s log is not a file readable here (only the local cluster's is)"
        path, fmt = (str(local_path), "stderr") if local_path is not None else (None, "stderr")
        try:
            for f in ("jsonlog", "csvlog", "stderr"):
                if path is not None:
                    break
                try:
                    got = conn.execute("SELECT pg_current_logfile(%s)", (f,)).fetchone()[0]  # type: ignore[index]
                except psycopg.errors.InvalidParameterValue:
                    continue  # jsonlog before PostgreSQL 15
                if got:
                    path, fmt = str(got), f
            if path is None:
                return None, (f"{node} has no log file to read: its logging collector is off (logging_collector), "
                              "so the log goes to the server's stderr, out of reach of SQL")  # fmt: skip
            conn.execute("SELECT pg_read_binary_file(%s, 0, 1, true)", (path,))
            return SqlLog(target, node, path, fmt, app=app, collector=local_path is None), ""
        except psycopg.errors.InsufficientPrivilege:
            return None, (f"{node}'s server log is not readable by this role: pg_current_logfile/pg_read_binary_file "
                          "need a superuser or pg_read_server_files (managed services usually allow neither: "
                          "use the provider's log viewer)")  # fmt: skip
