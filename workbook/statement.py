"""SQL that comes from a user: exactly one statement, checked before it reaches the server.

Every API that takes SQL text (``explain``, ``advise``, ``parse_shape``, the panel's SQL editor,
``clock_distortion`` ...) passes it through :func:`check_statement` first, and sends it with
:func:`fetch_rows` (or the libpq-level timing path), both of which use the **extended query
protocol**, where the server itself refuses more than one statement. The check and the protocol
are two independent walls; the workbook's own transaction (always rolled back, ``READ ONLY`` for
reads) and the session's ``default_transaction_read_only`` on read-only targets are the third.

What :func:`check_statement` does, without a round trip:

* A lexer that knows PostgreSQL's quoting: ``'...'`` (with ``''``), ``E'...'`` (with
  backslashes), ``$tag$...$tag$``, ``"identifiers"``, ``--`` and nested ``/* */`` comments. A
  ``;`` inside any of them is text; a ``;`` outside ends a statement, and a second statement is
  refused (a trailing ``;`` alone is fine). Unterminated quotes or comments, a NUL byte, and a
  non-string are refused.
* An allow-list of commands: ``SELECT``, ``VALUES``, ``TABLE``, ``WITH``, ``INSERT``, ``UPDATE``,
  ``DELETE``, ``MERGE``. Everything else is refused in one line that says what it is:
  transaction control (``BEGIN``, ``COMMIT``, ``ROLLBACK``, ``SAVEPOINT``, ``PREPARE
  TRANSACTION``, ``SET TRANSACTION`` ...), ``COPY``, procedural code (``DO``, ``CALL``),
  maintenance (``VACUUM``, ``ANALYZE`` ...), server-wide changes (``ALTER SYSTEM``, ``CREATE
  DATABASE`` ...), session state (``SET``, ``PREPARE``, ``LISTEN`` ...) and DDL.
* Functions whose effect is not undone by a rollback, or that reach outside the database, are
  refused by name wherever they are called (``pg_terminate_backend``, ``pg_reload_conf``,
  ``lo_export``, ``dblink``, ``setval``, session advisory locks, ``query_to_xml`` which runs SQL
  from a string ...): a read-only, rolled-back transaction does not stop them.
* The statement's kind: ``read``, or ``write`` for ``INSERT``/``UPDATE``/``DELETE``/``MERGE``, a
  data-modifying CTE (``WITH d AS (DELETE ...) SELECT ...``) and row locks (``FOR UPDATE``).
  ``SELECT ... INTO`` (which creates a table) is refused.

The lexer does not need to understand the grammar beyond that: it never decides that text is
harmless because it looks harmless, only that it is one statement of an allowed command.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import WorkbookError

if TYPE_CHECKING:
    import psycopg


class StatementRefused(WorkbookError):
    """User SQL that the workbook will not send: more than one statement, or a command it refuses."""


READ_COMMANDS = ("SELECT", "VALUES", "TABLE", "WITH")
WRITE_COMMANDS = ("INSERT", "UPDATE", "DELETE", "MERGE")

# first keyword -> what it is, for the refusal message
_REFUSED_COMMANDS: dict[str, str] = {
    **dict.fromkeys(
        ("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"),
        "transaction control",
    ),
    "COPY": "COPY (it reads or writes files, programs or the client stream)",
    "DO": "procedural code (DO)",
    "CALL": "a procedure call (CALL); a procedure may commit",
    **dict.fromkeys(("VACUUM", "ANALYZE", "ANALYSE", "CLUSTER", "REINDEX", "CHECKPOINT", "REFRESH"), "maintenance"),
    **dict.fromkeys(("SET", "RESET", "DISCARD", "LOAD", "LISTEN", "UNLISTEN", "NOTIFY", "LOCK",
                     "DECLARE", "FETCH", "MOVE", "CLOSE", "EXECUTE", "DEALLOCATE", "SHOW"),
                    "a session command"),  # fmt: skip
    "PREPARE": "a prepared statement or transaction (PREPARE)",
    **dict.fromkeys(("CREATE", "ALTER", "DROP", "TRUNCATE", "COMMENT", "GRANT", "REVOKE", "SECURITY",
                     "REASSIGN", "IMPORT"),
                    "DDL"),  # fmt: skip
    "EXPLAIN": "EXPLAIN (give the statement itself: the workbook runs EXPLAIN for you)",
}

# Functions a rolled-back, read-only transaction does not contain: they act on other sessions,
# the server, files or other databases, or change state that a rollback does not undo.
UNSAFE_FUNCTIONS = frozenset(
    {
        # other sessions and the server
        "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
        "pg_log_backend_memory_contexts", "pg_promote", "pg_switch_wal", "pg_create_restore_point",
        "pg_backup_start", "pg_backup_stop", "pg_start_backup", "pg_stop_backup",
        "pg_wal_replay_pause", "pg_wal_replay_resume", "pg_logical_emit_message",
        "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
        "pg_drop_replication_slot", "pg_replication_slot_advance", "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot", "pg_replication_origin_create", "pg_replication_origin_drop",
        "pg_replication_origin_advance", "pg_replication_origin_session_setup",
        "pg_stat_reset", "pg_stat_reset_shared", "pg_stat_reset_single_table_counters",
        "pg_stat_reset_single_function_counters", "pg_stat_reset_slru", "pg_stat_reset_replication_slot",
        "pg_stat_reset_subscription_stats", "pg_stat_reset_backend_stats", "pg_stat_statements_reset",
        "pg_import_system_collations", "pg_sync_replication_slots",
        # files on the server
        "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_ls_logdir",
        "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir", "pg_ls_replslotdir", "pg_ls_summariesdir", "pg_file_write",
        "pg_file_rename", "pg_file_unlink", "pg_file_sync", "lo_import", "lo_export",
        # other databases, SQL from strings
        "dblink", "dblink_exec", "dblink_connect", "dblink_connect_u", "dblink_send_query",
        "dblink_open", "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
        "cursor_to_xml", "cursor_to_xmlschema", "ts_stat",
        # not undone by a rollback
        "setval", "nextval", "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Token:
    kind: str  # word, ident (quoted), string, number, param, op, lparen, rparen, semicolon
    text: str
    start: int
    end: int
    depth: int

    @property
    def upper(self) -> str:
        return self.text.upper()

    @property
    def name(self) -> str | None:
        """The identifier this token names (folded as the server folds it), or None."""
        if self.kind == "word":
            return self.text.lower()
        if self.kind == "ident":
            return self.text[1:-1].replace('""', '"')
        return None


@dataclass(frozen=True)
class Statement:
    """One checked statement: its text (without a trailing ``;``), command and kind."""

    text: str
    command: str  # SELECT, WITH, INSERT ...
    kind: str  # "read" or "write"
    why_write: str = ""  # for writes: what writes (a data-modifying CTE, FOR UPDATE ...)

    @property
    def is_read(self) -> bool:
        return self.kind == "read"


_WORD = re.compile(r"[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*")
_NUMBER = re.compile(r"(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
_PARAM = re.compile(r"\$\d+|%\([^)]*\)[sbt]|%[sbt%]")
_OPS = "+-*/<>=~!@#%^&|`?:,.[]"


def tokenize(sql: str) -> list[Token]:
    """PostgreSQL's lexical structure, enough to find statement boundaries and command words.

    Comments and whitespace are dropped. Raises :class:`StatementRefused` for an unterminated
    quote or comment.
    """
    out: list[Token] = []
    i, n, depth = 0, len(sql), 0
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            level, j = 1, i + 2
            while level and j < n:
                if sql.startswith("/*", j):
                    level, j = level + 1, j + 2
                elif sql.startswith("*/", j):
                    level, j = level - 1, j + 2
                else:
                    j += 1
            if level:
                raise StatementRefused("unterminated /* comment in the SQL; close it with */")
            i = j
        elif c == "'" or (c in "eE" and sql.startswith("'", i + 1)) or (c in "bBxXnN" and sql.startswith("'", i + 1)) \
                or (c in "uU" and sql.startswith("&'", i + 1)):  # fmt: skip
            quote = sql.index("'", i)
            j = _end_of_string(sql, quote, backslashes=c in "eE")
            out.append(Token("string", sql[i:j], i, j, depth))
            i = j
        elif c == '"' or (c in "uU" and sql.startswith('&"', i + 1)):
            quote = sql.index('"', i)
            j = quote + 1
            while True:
                k = sql.find('"', j)
                if k < 0:
                    raise StatementRefused('unterminated quoted identifier (") in the SQL; close it')
                if sql.startswith('""', k):
                    j = k + 2
                    continue
                j = k + 1
                break
            out.append(Token("ident", sql[quote:j], i, j, depth))
            i = j
        elif c == "$" and (m := _DOLLAR_TAG.match(sql, i)) and not (out and out[-1].end == i and out[-1].kind == "word"):
            tag = m.group(0)
            k = sql.find(tag, m.end())
            if k < 0:
                raise StatementRefused(f"unterminated dollar-quoted string ({tag}) in the SQL; close it with {tag}")
            out.append(Token("string", sql[i : k + len(tag)], i, k + len(tag), depth))
            i = k + len(tag)
        elif (m := _PARAM.match(sql, i)) is not None:
            out.append(Token("param", m.group(0), i, m.end(), depth))
            i = m.end()
        elif (m := _WORD.match(sql, i)) is not None:
            out.append(Token("word", m.group(0), i, m.end(), depth))
            i = m.end()
        elif c.isdigit() or (c == "." and i + 1 < n and sql[i + 1].isdigit()):
            m = _NUMBER.match(sql, i)
            j = m.end() if m else i + 1
            out.append(Token("number", sql[i:j], i, j, depth))
            i = j
        elif c == "(":
            out.append(Token("lparen", c, i, i + 1, depth))
            depth += 1
            i += 1
        elif c == ")":
            depth = max(depth - 1, 0)
            out.append(Token("rparen", c, i, i + 1, depth))
            i += 1
        elif c == ";":
            out.append(Token("semicolon", c, i, i + 1, depth))
            i += 1
        else:
            out.append(Token("op", c, i, i + 1, depth))
            i += 1
    return out


def _end_of_string(sql: str, quote: int, *, backslashes: bool) -> int:
    j = quote + 1
    n = len(sql)
    while j < n:
        ch = sql[j]
        if backslashes and ch == "\\":
            j += 2
            continue
        if ch == "'":
            if sql.startswith("''", j):
                j += 2
                continue
            return j + 1
        j += 1
    raise StatementRefused("unterminated quoted string (') in the SQL; close it")


def _preview(sql: str, limit: int = 60) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def check_statement(sql: object, *, what: str = "the SQL") -> Statement:
    """Check that ``sql`` is exactly one statement of an allowed command; return it classified.

    Raises :class:`StatementRefused` (a :class:`WorkbookError`: one line, nothing sent) for a
    non-string, a NUL byte, an empty text, several statements, an unterminated quote or comment,
    a refused command or a refused function.
    """
    source = _require_text(sql, what)
    tokens = tokenize(source)
    cut = next((k for k, t in enumerate(tokens) if t.kind == "semicolon"), None)
    body = tokens if cut is None else tokens[:cut]
    rest = [] if cut is None else [t for t in tokens[cut:] if t.kind != "semicolon"]
    if not body:
        raise StatementRefused(f"{what} is empty: give one SELECT, INSERT, UPDATE, DELETE or MERGE statement")
    if rest:
        raise StatementRefused(
            f"{what} holds more than one statement (a second one starts at {_preview(source[rest[0].start:], 40)!r}); "
            "give exactly one: the workbook runs it alone, in its own rolled-back transaction"
        )
    text = source[body[0].start : body[-1].end]  # without comments around it, nor the ';'
    first = next((t for t in body if t.kind not in ("lparen",)), None)
    if first is None or first.kind != "word":
        raise StatementRefused(f"{what} does not start with a command: {_preview(text)!r}")
    command = first.upper
    if command not in READ_COMMANDS + WRITE_COMMANDS:
        if command not in _REFUSED_COMMANDS:
            import difflib

            near = difflib.get_close_matches(command, READ_COMMANDS + WRITE_COMMANDS, n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise StatementRefused(
                f"{what} starts with {first.text!r}, which is not a query (nothing was sent); {hint}"
                "give one SELECT, INSERT, UPDATE, DELETE or MERGE statement"
            )
        kind = _REFUSED_COMMANDS[command]
        if command == "ALTER" and _next_word(body, first) == "SYSTEM":
            kind = "a server-wide setting (ALTER SYSTEM)"
        elif command in ("CREATE", "DROP") and _next_word(body, first) in ("DATABASE", "TABLESPACE"):
            kind = f"a server-wide {command} {_next_word(body, first)}"
        elif command == "SET" and _next_word(body, first) in ("TRANSACTION", "SESSION"):
            kind = "transaction control (SET TRANSACTION)"
        elif command == "PREPARE" and _next_word(body, first) == "TRANSACTION":
            kind = "transaction control (PREPARE TRANSACTION)"
        shown = kind if command in kind else f"{kind} ({command})"
        raise StatementRefused(
            f"{what} is {shown}: the workbook does not run that; "
            "give one SELECT, INSERT, UPDATE, DELETE or MERGE statement"
        )
    _refuse_functions(body, what)
    kind, why = _kind(body, command)
    if kind == "refused":
        raise StatementRefused(f"{what}: {why}")
    return Statement(text=text, command=command, kind=kind, why_write=why)


def _require_text(sql: object, what: str) -> str:
    if not isinstance(sql, str):
        raise StatementRefused(f"{what} must be a str of SQL, got {type(sql).__name__}")
    if "\x00" in sql:
        raise StatementRefused(f"{what} contains a NUL byte (\\x00), which PostgreSQL cannot take; remove it")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StatementRefused(
            f"{what} is not valid text: character {exc.start} is {sql[exc.start]!r}, which UTF-8 cannot encode "
            "(a lone surrogate, often from invalid bytes); fix the input's encoding"
        ) from None
    return sql


def _next_word(tokens: Sequence[Token], after: Token) -> str | None:
    seen = False
    for t in tokens:
        if seen:
            return t.upper if t.kind == "word" else None
        seen = t is after
    return None


def _refuse_functions(tokens: Sequence[Token], what: str) -> None:
    for k, t in enumerate(tokens[:-1]):
        name = t.name
        if name is None or tokens[k + 1].kind != "lparen":
            continue
        if name in UNSAFE_FUNCTIONS or name.startswith("dblink"):
            raise StatementRefused(
                f"{what} calls {name}(), which acts outside the transaction (on the server, its files, "
                "other sessions or state a rollback does not undo); the workbook does not run it"
            )


def _kind(tokens: Sequence[Token], command: str) -> tuple[str, str]:
    if command in WRITE_COMMANDS:
        return "write", command
    words = [(k, t) for k, t in enumerate(tokens) if t.kind == "word"]
    for k, t in words:
        u = t.upper
        prev = tokens[k - 1] if k else None
        prev_u = prev.upper if prev is not None and prev.kind == "word" else ""
        if u in ("INSERT", "DELETE", "MERGE") or (u == "UPDATE" and prev_u not in ("FOR", "KEY", "DO")):
            # in a CTE ("AS (DELETE ...") or the main statement after the CTEs ("...) UPDATE t")
            if prev is not None and (prev.kind == "lparen" or (t.depth == 0 and prev.kind == "rparen")):
                return "write", f"a data-modifying {u} inside the statement"
        if u in ("UPDATE", "SHARE") and prev_u in ("FOR", "KEY", "NO"):
            return "write", f"it locks rows (FOR {u})"
        if u == "INTO" and t.depth == 0 and command in ("SELECT", "WITH"):
            return "refused", "SELECT ... INTO creates a table; the workbook does not run it (use a plain SELECT)"
    return "read", ""


# --------------------------------------------------------------------------- running one statement
def fetch_rows(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement through the extended query protocol; its rows (none for a command).

    ``cursor.execute`` without parameters uses the simple protocol, which runs whatever follows a
    ``;``. Asking for binary results makes psycopg send Parse/Bind/Execute even then, and there
    the server refuses a second statement ("cannot insert multiple commands into a prepared
    statement"). psycopg loads binary results into the same Python values as text ones.
    """
    with conn.cursor(binary=True) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def as_read(statement: Statement) -> Statement:
    """The read an UPDATE/DELETE does to find its rows: ``SELECT 1 FROM <target, FROM/USING> WHERE ...``.

    This is what an index can speed up (as Dexter advises writes). A statement with ``WHERE
    CURRENT OF`` or without a WHERE clause has nothing to index and is refused.
    """
    if statement.command not in ("UPDATE", "DELETE"):
        if statement.kind == "read":
            return statement
        raise StatementRefused(
            f"advice for {statement.command} is not supported: it reads no rows an index could find; "
            "advise the SELECT inside it instead"
        )
    tokens = tokenize(statement.text)
    top = [t for t in tokens if t.depth == 0]
    head = next(k for k, t in enumerate(top) if t.kind == "word" and t.upper == statement.command)
    prefix = statement.text[: top[head].start]  # a WITH clause, if any
    if prefix.strip() and not prefix.strip().upper().startswith("WITH"):
        raise StatementRefused(f"cannot read the {statement.command} statement's target; give the SELECT to advise")

    def find(words: tuple[str, ...], start: int) -> int | None:
        return next((k for k in range(start, len(top)) if top[k].kind == "word" and top[k].upper in words), None)

    where = find(("WHERE",), head)
    end = find(("RETURNING",), head)
    end_pos = top[end].start if end is not None else len(statement.text)
    if where is None:
        raise StatementRefused(
            f"the {statement.command} has no WHERE clause: it touches every row, and no index makes that cheaper"
        )
    if where + 2 < len(top) and top[where + 1].upper == "CURRENT" and top[where + 2].upper == "OF":
        raise StatementRefused(f"the {statement.command} uses WHERE CURRENT OF a cursor; give the cursor's SELECT")
    cond = statement.text[top[where].end : end_pos].strip()
    if statement.command == "UPDATE":
        set_at = find(("SET",), head)
        if set_at is None or set_at > where:
            raise StatementRefused("the UPDATE has no SET clause before WHERE")
        target = statement.text[top[head].end : top[set_at].start].strip()
        from_at = find(("FROM",), set_at)
        extra = statement.text[top[from_at].end : top[where].start].strip() if from_at is not None and from_at < where else ""
    else:
        from_at = find(("FROM",), head)
        using = find(("USING",), head)
        if from_at is None:
            raise StatementRefused("the DELETE has no FROM")
        stop = using if using is not None and using < where else where
        target = statement.text[top[from_at].end : top[stop].start].strip()
        extra = statement.text[top[using].end : top[where].start].strip() if using is not None and using < where else ""
    target = re.sub(r"^ONLY\s+", "", target, flags=re.IGNORECASE)
    from_list = target + (f", {extra}" if extra else "")
    text = f"{prefix}SELECT 1 FROM {from_list} WHERE {cond}"
    return check_statement(text, what=f"the read of the {statement.command}")


def session_read_only(conn: psycopg.Connection[Any]) -> bool:
    """Whether new transactions of this session are read-only (``default_transaction_read_only``),
    or the one it is in is: then a write would be refused by the server anyway."""
    if conn.info.transaction_status != 0:  # in a transaction: what that transaction is
        row = fetch_rows(conn, "SELECT current_setting('transaction_read_only')")
        return bool(row and row[0][0] == "on")
    reported = conn.info.parameter_status("default_transaction_read_only")  # reported by PostgreSQL 14+
    if reported is not None:
        return reported == "on"
    row = fetch_rows(conn, "SELECT current_setting('default_transaction_read_only')")
    return bool(row and row[0][0] == "on")


@contextmanager
def reads_only(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Everything this connection runs inside the block is read-only, as the server enforces it.

    In a transaction (a what-if index's): ``transaction_read_only`` for the rest of it (undone by
    its rollback). Outside one: ``default_transaction_read_only`` for the session, restored after.
    """
    if conn.info.transaction_status != 0:
        fetch_rows(conn, "SELECT set_config('transaction_read_only', 'on', true)")
        yield
        return
    before = fetch_rows(conn, "SELECT current_setting('default_transaction_read_only')")[0][0]
    fetch_rows(conn, "SELECT set_config('default_transaction_read_only', 'on', false)")
    try:
        yield
    finally:
        if conn.info.transaction_status == 0 and not conn.closed:
            fetch_rows(conn, "SELECT set_config('default_transaction_read_only', %s, false)", (before,))


def check_fragment(text: object, *, what: str) -> str:
    """A piece of SQL that the workbook splices into its own statement (an index key expression,
    a partial index's WHERE): no ``;``, parentheses balanced, no refused function. Returns it."""
    source = _require_text(text, what)
    tokens = tokenize(source)
    if not tokens:
        raise StatementRefused(f"{what} is empty")
    level = 0
    for t in tokens:
        if t.kind == "semicolon":
            raise StatementRefused(f"{what} contains a ';' ({_preview(source)!r}): it must be one expression")
        level += {"lparen": 1, "rparen": -1}.get(t.kind, 0)
        if level < 0:
            raise StatementRefused(f"{what} closes a parenthesis it did not open ({_preview(source)!r})")
    if level:
        raise StatementRefused(f"{what} leaves a parenthesis open ({_preview(source)!r})")
    _refuse_functions(tokens, what)
    return source
