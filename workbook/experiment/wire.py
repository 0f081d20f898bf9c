"""Timed executions at the protocol level: prepared statements sent through libpq, as pgbench does.

A timed sample should be what the database and the wire cost, not what the client language
adds. Through psycopg's cursor every call also adapts the parameters and builds Python rows —
15–20 µs per call here, a quarter of a 0.08 ms point query (benchmarks/README.md, timing
overhead). So the timed loop talks to libpq directly (psycopg's own ``pgconn`` binding, the C
implementation when installed):

* before timing, each parameter set is turned into wire values **once**, by psycopg's own
  :class:`~psycopg.adapt.Transformer` with psycopg's placeholder rules (``%(name)s`` auto,
  ``%(name)b`` binary, ``%(name)t`` text, ``%%``), so the server sees the same types and bytes
  as from ``cursor.execute(..., prepare=True)``; each distinct type signature is prepared once
  (``PQprepare``), like psycopg's statement cache;
* a timed call is ``PQexecPrepared``: send, wait, and receive the **whole result** into libpq
  (every row crosses the wire and is parsed), as ``pgbench -M prepared`` does; it does not turn
  rows into Python objects;
* a per-row step (the N+1 pattern, ``-- for each row:``) takes the previous result's values as
  they came off the wire (text, with the column's type), so the loop costs what the round trips
  cost.

Errors are psycopg's own exceptions (``error_from_result``), so a statement timeout is a
``QueryCanceled`` as anywhere else. ``client="psycopg"`` in :func:`workbook.experiment.measure`
times the full driver path instead, when the Python cost is the question.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import errors
from psycopg import sql as pgsql
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq import ConnStatus, ExecStatus, Format, TransactionStatus

from ..errors import WorkbookError
from ..statement import check_statement

if TYPE_CHECKING:
    import psycopg

    from ..dataset.shapes import QueryShape

_PLACEHOLDER = re.compile(r"%(?:\(([^)]+)\)(.)|(.))", re.DOTALL)
_FORMATS = {"s": PyFormat.AUTO, "b": PyFormat.BINARY, "t": PyFormat.TEXT}
_OK = (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK)
_TUPLES_OK = int(ExecStatus.TUPLES_OK)
_names = itertools.count(1)


def to_positional(sql: str) -> tuple[bytes, list[str | int], list[PyFormat]]:
    """psycopg placeholders to ``$n``: (query, parameter keys in order, their formats).

    Named placeholders (``%(name)s``) give names; the same name twice is one parameter, as in
    psycopg. Positional ones (``%s``) give 0, 1, ... A ``%`` that is neither ``%%`` nor a
    placeholder, or named and positional mixed, is an error, as it is in psycopg.
    """
    keys: list[str | int] = []
    formats: list[PyFormat] = []
    out: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(sql):
        out.append(sql[pos : m.start()])
        pos = m.end()
        if m.group(3) == "%":
            out.append("%")
            continue
        fmt_char = m.group(2) if m.group(1) is not None else m.group(3)
        if fmt_char not in _FORMATS:
            raise WorkbookError(
                f"unsupported placeholder {m.group(0)!r} in {sql[:60]!r}: use %(name)s or %s (b/t for binary/text), %% for %"
            )
        key: str | int = m.group(1) if m.group(1) is not None else len(keys)
        if keys and isinstance(key, str) != isinstance(keys[0], str):
            raise WorkbookError(f"{sql[:60]!r} mixes named and positional placeholders")
        if key not in keys:
            keys.append(key)
            formats.append(_FORMATS[fmt_char])
        out.append(f"${keys.index(key) + 1}")
    out.append(sql[pos:])
    return "".join(out).encode(), keys, formats


class _Step:
    """One statement of a variant, prepared per type signature on one connection."""

    def __init__(self, conn: psycopg.Connection[Any], sql: str, *, raw: bool = False) -> None:
        check_statement(sql)  # one allowed statement; PQprepare would refuse a second one anyway
        self.conn = conn
        self.pgconn = conn.pgconn
        self.names: list[str | int] = []
        self.formats: list[PyFormat] = []
        if raw:  # no parameters: psycopg sends the text as it is, % signs and all
            self.query = sql.encode()
        else:
            self.query, self.names, self.formats = to_positional(sql)
        self.prepared: dict[tuple[int, ...], bytes] = {}

    def bind(self, params: Any) -> list[Any]:
        """The values of ``params`` (a mapping or a sequence) in placeholder order."""
        try:
            return [params[n] for n in self.names]
        except (KeyError, IndexError, TypeError):
            raise WorkbookError(
                f"the parameters {params!r} do not fill the placeholders {self.names!r} of {self.query[:60]!r}"
            ) from None

    def dump(self, values: Sequence[Any]) -> tuple[tuple[int, ...], list[bytes | None], list[int]]:
        """(types, wire values, formats) of a parameter set, for :meth:`execute`, in the plainest
        Python types (bytes, int) so the timed call converts nothing."""
        tx = Transformer(self.conn)
        wire = [None if v is None else bytes(v) for v in tx.dump_sequence(values, self.formats)]
        return tuple(tx.types or ()), wire, [int(f) for f in tx.formats or ()]

    def dump_named(self, params: dict[str, Any]) -> dict[str, tuple[bytes | None, int, int]]:
        """name -> (wire value, format, type) for this step's placeholders that ``params`` fills."""
        names = [(n, f) for n, f in zip(self.names, self.formats) if n in params]
        tx = Transformer(self.conn)
        wire = tx.dump_sequence([params[n] for n, _ in names], [f for _, f in names])
        return {n: (None if v is None else bytes(v), int(f), t)
                for (n, _), v, f, t in zip(names, wire, tx.formats or (), tx.types or ())}  # fmt: skip

    def statement(self, types: tuple[int, ...]) -> bytes:
        name = self.prepared.get(types)
        if name is None:
            name = f"_wb_{next(_names)}".encode()
            check(self.conn, self.pgconn.prepare(name, self.query, types))
            self.prepared[types] = name
        return name

    def execute(self, types: tuple[int, ...], wire: Sequence[Any], formats: Sequence[int]) -> Any:
        return check(self.conn, self.pgconn.exec_prepared(self.statement(types), wire, formats))


@dataclass(frozen=True)
class PlanSource:
    """The prepared statement a runner times, with its first parameter set: what ``EXPLAIN ANALYZE
    EXECUTE`` needs to show the plan the timed executions ran (:func:`workbook.experiment.plan.explain`
    with ``prepared=``)."""

    step: _Step
    types: tuple[int, ...]
    values: list[Any]

    def execute_args(self) -> tuple[str, list[pgsql.Composable]] | None:
        """(prepared statement name, its arguments as SQL literals), or None when the server no longer
        holds the statement as the runner prepared it (after a ``DEALLOCATE``, or through a pooler
        that renames prepared statements). ``EXECUTE``'s arguments cannot be bound parameters (a
        utility statement has none), so each value is written as psycopg's text form cast to the
        type the statement has for it (the server's inference where the runner left the type open;
        ``format_type(t, -1)``, so ``char(n)`` is ``bpchar``, not ``character(1)``)."""
        prepared = self.step.prepared.get(self.types)
        if prepared is None:
            return None
        name, conn = prepared.decode(), self.step.conn
        row = conn.execute(
            "SELECT array(SELECT format_type(t, -1) FROM unnest(parameter_types::oid[]) WITH ORDINALITY AS u(t, o) ORDER BY o)"
            " FROM pg_prepared_statements WHERE name = %s", (name,)).fetchone()  # fmt: skip
        if row is None or len(row[0]) != len(self.values):
            return None
        tx = Transformer(conn)
        texts = tx.dump_sequence(self.values, [PyFormat.TEXT] * len(self.values)) if self.values else []
        encoding = conn.info.encoding
        args: list[pgsql.Composable] = [
            pgsql.SQL("CAST({} AS {})").format(pgsql.NULL if v is None else pgsql.Literal(bytes(v).decode(encoding)),
                                               pgsql.SQL(t))  # a type name the server itself wrote
            for v, t in zip(texts, row[0], strict=True)
        ]  # fmt: skip
        return name, args


def plan_source(run: Callable[[], object]) -> PlanSource | None:
    """The prepared statement a :func:`wire_runner` or :func:`statement_runner` times (None for others)."""
    return getattr(run, "plan_source", None)


def _with_source(run: Callable[[], int], step: _Step, types: tuple[int, ...], values: list[Any]) -> Callable[[], int]:
    run.plan_source = PlanSource(step, types, values)  # type: ignore[attr-defined]
    return run


def check(conn: psycopg.Connection[Any], result: Any) -> Any:
    """The result, or psycopg's exception for it (with the server's diagnostics); a lost
    connection is an ``OperationalError``, as psycopg raises it."""
    if result.status not in _OK:
        if conn.pgconn.status == ConnStatus.BAD:
            raise errors.OperationalError(f"the connection to the server was lost: {conn.pgconn.get_error_message()}")
        raise errors.error_from_result(result, encoding=conn.info.encoding)
    return result


def statement_runner(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Callable[[], int]:
    """One timed execution of any statement (psycopg placeholders; ``params`` None, a mapping or a
    sequence) through libpq, prepared; returns the row count."""
    step = _Step(conn, sql, raw=params is None)
    values = step.bind(params) if params is not None else []
    bound = step.dump(values)
    return _with_source(_reprepared(lambda: _rowcount(step.execute(*bound)), [step]), step, bound[0], values)


def wire_runner(
    conn: psycopg.Connection[Any],
    qs: QueryShape,
    variant: str,
    params: list[dict[str, Any]],
    *,
    rollback_writes: bool = True,
) -> Callable[[], int]:
    """One timed execution of a shape's variant through libpq, cycling ``params``; returns the row count.

    The parameters are dumped here; each statement is prepared at its first call (make that an
    untimed warm-up call, as :func:`~workbook.experiment.time_interleaved` does). A write runs inside a
    transaction that is rolled back (a savepoint when the connection is already in one), sent as
    plain commands so psycopg's transaction bookkeeping stays out of the timed call;
    ``rollback_writes=False`` leaves that to the caller (many writes, one rollback).
    """
    steps = [_Step(conn, sql) for sql in qs.variant(variant).statements]
    first = steps[0]
    bound = [first.dump(first.bind(p)) for p in params]
    fixed = [[step.dump_named(p) for p in params] for step in steps[1:]]  # the shape's own values, per param set
    counter = itertools.count()
    write = (qs.kind == "write" or qs.variant(variant).kind == "write") and rollback_writes

    def each_row(i: int, k: int, results: list[Any]) -> list[Any]:
        """Step ``i`` once per row of the previous step's results, fed the values as they came off the wire."""
        step, shape_values = steps[i], fixed[i - 1][k]
        out = []
        for res in results:
            cols = {res.fname(c).decode(): c for c in range(res.nfields)}
            for r in range(res.ntuples):
                wire, fmts, oids = [], [], []
                for name in step.names:
                    if name in cols:  # a column of the row wins over a shape parameter, as in QueryShape.run
                        c = cols[name]
                        value, fmt, oid = res.get_value(r, c), int(Format.TEXT), res.ftype(c)
                    elif name in shape_values:
                        value, fmt, oid = shape_values[name]
                    else:
                        raise WorkbookError(
                            f"no value for parameter {name!r} of a per-row step: neither a shape parameter nor a column of the previous step"
                        )
                    wire.append(value)
                    fmts.append(fmt)
                    oids.append(oid)
                out.append(step.execute(tuple(oids), wire, fmts))
        return out

    def body() -> int:
        k = next(counter) % len(bound)
        results = [first.execute(*bound[k])]
        for i in range(1, len(steps)):
            results = each_row(i, k, results)
        return sum(_rowcount(res) for res in results)

    if len(steps) == 1 and not write:  # the common case, kept to the fewest Python operations
        exec_prepared, prepared, n = first.pgconn.exec_prepared, first.prepared, len(bound)

        def point() -> int:
            types, wire, fmts = bound[next(counter) % n]
            result = exec_prepared(prepared.get(types) or first.statement(types), wire, fmts)  # type: ignore[arg-type]
            if result.status != _TUPLES_OK:
                return _rowcount(check(conn, result))
            return result.ntuples

        return _with_source(_reprepared(point, steps), first, bound[0][0], first.bind(params[0]))

    def once() -> int:
        if not write:
            return body()
        with rolled_back(conn):
            return body()

    return _with_source(_reprepared(once, steps), first, bound[0][0], first.bind(params[0]))


@contextmanager
def rolled_back(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction (a savepoint inside one) that is always rolled back, sent as plain commands:
    through psycopg, a ROLLBACK also makes it deallocate every statement it prepared."""
    pgconn = conn.pgconn
    nested = pgconn.transaction_status == TransactionStatus.INTRANS
    begin, rollback = (b"SAVEPOINT _wb_write", b"ROLLBACK TO SAVEPOINT _wb_write") if nested else (b"BEGIN", b"ROLLBACK")
    check(conn, pgconn.exec_(begin))
    try:
        yield
    finally:
        check(conn, pgconn.exec_(rollback))


def _reprepared(call: Callable[[], int], steps: Sequence[_Step]) -> Callable[[], int]:
    """``call``, prepared again once if the server forgot the statements: psycopg sends DEALLOCATE
    ALL when one of its own transactions on the connection rolls back."""
    pgconn = steps[0].pgconn

    def run() -> int:
        try:
            return call()
        except errors.InvalidSqlStatementName:
            if pgconn.transaction_status != TransactionStatus.IDLE:
                raise  # the failure aborted an enclosing transaction: nothing to retry in
            for step in steps:
                step.prepared.clear()
            return call()

    return run


def _rowcount(result: Any) -> int:
    """Rows returned, or rows changed by a write without RETURNING."""
    if result.status == ExecStatus.COMMAND_OK:
        return int(result.command_tuples or 0)
    return int(result.ntuples)
