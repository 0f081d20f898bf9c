"""Query shapes: the named queries an AI app really runs, with parameter samplers and variants.

Each shape is one file in ``datasets/ai_app/queries/``: a header of ``-- key: value`` lines, then
one or more ``-- variant: NAME`` sections of SQL. Parameters are psycopg named placeholders
(``%(org_id)s``) filled by the samplers the header names (``-- params: org day_range``, see
:mod:`workbook.dataset.samplers`), for a **hot** tenant (one of the largest) or a **cold** one,
so a lesson can show the same plan winning for one and losing for the other.

A variant may be several statements: a line ``-- for each row:`` runs the next statement once
per row of the previous one, with that row's columns as extra parameters. That is how the N+1
pattern is written down, so it can be measured against its one-query rewrite.

Header keys: ``shape`` (must match the file name), ``title``, ``lesson`` (may repeat), ``kind``
(``read`` or ``write``), ``params`` (sampler names), ``defaults`` (``name=value`` pairs),
``compare`` (how variants must agree: ``rows`` in order, ``rowset`` ignoring order, ``ids`` the
first column only, ``estimate`` within a factor, ``rowcount`` for writes), ``tables``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError
from ..statement import check_statement
from .paths import dataset_dir
from .samplers import SAMPLERS, sample

if TYPE_CHECKING:
    import psycopg

COMPARE_MODES = ("rows", "rowset", "ids", "estimate", "rowcount")
_HEADER = re.compile(r"^--\s*([a-z_]+):\s*(.*)$")
_FOR_EACH = re.compile(r"^--\s*for each row:\s*$", re.MULTILINE)


@dataclass(frozen=True)
class ShapeVariant:
    """One way of writing a shape: its statements (more than one for a per-row loop)."""

    name: str
    statements: tuple[str, ...]

    def __post_init__(self) -> None:
        """Each statement is exactly one allowed statement (see :mod:`workbook.statement`)."""
        if isinstance(self.statements, str) or not self.statements:
            raise WorkbookError(f"variant {self.name!r} needs a tuple of one or more SQL statements")
        for k, text in enumerate(self.statements):
            check_statement(text, what=f"variant {self.name!r}" + (f" step {k + 1}" if len(self.statements) > 1 else ""))

    @property
    def kind(self) -> str:
        """``write`` when any statement writes, else ``read``."""
        return "write" if any(not check_statement(t).is_read for t in self.statements) else "read"

    @property
    def sql(self) -> str:
        """The variant's SQL as written (per-row steps joined with their marker)."""
        return "\n-- for each row:\n".join(self.statements)


@dataclass(frozen=True)
class QueryShape:
    name: str
    title: str
    lesson: str
    kind: str
    params: tuple[str, ...]
    compare: str
    variants: dict[str, ShapeVariant]
    tables: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        # a write in a shape declared 'read' would be timed outside a rolled-back transaction
        if self.kind == "read":
            writing = [v.name for v in self.variants.values() if v.kind == "write"]
            if writing:
                raise WorkbookError(
                    f"{self.path or self.name}: kind is 'read' but variant {writing[0]!r} writes; declare "
                    "'-- kind: write' (writes are timed in rolled-back transactions and need a writable target)"
                )

    @property
    def default_variant(self) -> str:
        return next(iter(self.variants))

    def variant(self, name: str | None = None) -> ShapeVariant:
        name = name or self.default_variant
        try:
            return self.variants[name]
        except KeyError:
            raise WorkbookError(
                f"shape {self.name!r} has no variant {name!r}; it has: {', '.join(self.variants)}"
            ) from None

    def sample(self, conn: psycopg.Connection[Any], tier: str = "hot", k: int = 0) -> dict[str, Any]:
        """Parameters for one execution: the named samplers' values merged over the defaults."""
        values = dict(self.defaults)
        for sampler in self.params:
            values.update(sample(sampler, conn, tier, k))
        return values

    def run(
        self,
        conn: psycopg.Connection[Any],
        params: dict[str, Any],
        variant: str | None = None,
        *,
        prepare: bool | None = None,
        cursor: psycopg.Cursor[Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Execute a variant and return its rows (for writes: RETURNING rows, or one (rowcount,)).

        ``prepare=True`` uses server-side prepared statements from the first call (as an
        application with a driver-level statement cache would); None is psycopg's default
        (prepared after five executions). A ``cursor`` of ``conn`` is reused instead of a new
        one per statement (the timing harness does, to keep its own cost out of the figures).
        """
        steps = self.variant(variant).statements
        cur = cursor if cursor is not None else conn.cursor()
        # with parameters psycopg uses the extended protocol; without, only when preparing
        cur.execute(steps[0], params, prepare=prepare if params else True)
        rows = cur.fetchall() if cur.description else [(cur.rowcount,)]
        for step in steps[1:]:
            names = [d.name for d in cur.description or ()]
            out: list[tuple[Any, ...]] = []
            for row in rows:
                cur.execute(step, {**params, **dict(zip(names, row))}, prepare=prepare)
                out.extend(cur.fetchall())
            rows = out
        return rows

    def agree(self, a: list[tuple[Any, ...]], b: list[tuple[Any, ...]], *, factor: float = 1.5) -> bool:
        """Whether two variants' results agree under this shape's ``compare`` mode."""
        if self.compare == "rows":
            return a == b
        if self.compare == "rowset":
            return sorted(map(repr, a)) == sorted(map(repr, b))
        if self.compare == "ids":
            return [r[0] for r in a] == [r[0] for r in b]
        if self.compare == "estimate":
            x, y = float(a[0][0]), float(b[0][0])
            return x > 0 and y > 0 and max(x, y) / min(x, y) <= factor
        return [r[0] for r in a] == [r[0] for r in b]  # rowcount


def parse_shape(text: str, path: Path | None = None) -> QueryShape:
    header: dict[str, list[str]] = {}
    variants: dict[str, ShapeVariant] = {}
    current: str | None = None
    body: list[str] = []

    def close() -> None:
        if current is None:
            return
        sql_text = "\n".join(body).strip()
        steps = tuple(s.strip().rstrip(";").strip() for s in _FOR_EACH.split(sql_text))
        if not all(steps):
            raise WorkbookError(f"{path or 'shape'}: variant {current!r} has an empty statement")
        variants[current] = ShapeVariant(current, steps)

    for line in text.splitlines():
        m = _HEADER.match(line.strip())
        if m and m.group(1) == "variant":
            close()
            current, body = m.group(2).strip(), []
        elif current is None:
            if m:
                header.setdefault(m.group(1), []).append(m.group(2).strip())
        else:
            body.append(line)
    close()

    def one(key: str, default: str | None = None) -> str:
        values = header.get(key)
        if not values:
            if default is None:
                raise WorkbookError(f"{path or 'shape'}: missing header line '-- {key}: ...'")
            return default
        return values[0]

    name = one("shape")
    if path is not None and path.stem != name:
        raise WorkbookError(f"{path}: shape name {name!r} must match the file name")
    compare = one("compare", "rows")
    if compare not in COMPARE_MODES:
        raise WorkbookError(f"{path or name}: compare must be one of {COMPARE_MODES}, got {compare!r}")
    kind = one("kind", "read")
    if kind not in ("read", "write"):
        raise WorkbookError(f"{path or name}: kind must be 'read' or 'write', got {kind!r}")
    params = tuple(one("params", "").split())
    unknown = [p for p in params if p not in SAMPLERS]
    if unknown:
        raise WorkbookError(f"{path or name}: unknown samplers {unknown!r}; known: {sorted(SAMPLERS)}")
    defaults: dict[str, Any] = {}
    for pair in one("defaults", "").split():
        key, _, value = pair.partition("=")
        defaults[key] = int(value) if value.lstrip("-").isdigit() else value
    if not variants:
        raise WorkbookError(f"{path or name}: no '-- variant: NAME' section")

    return QueryShape(
        name=name,
        title=one("title"),
        lesson=" ".join(header.get("lesson", [])),
        kind=kind,
        params=params,
        compare=compare,
        variants=variants,
        tables=tuple(one("tables", "").split()),
        defaults=defaults,
        path=path,
    )


def load_shapes(directory: Path | None = None) -> dict[str, QueryShape]:
    """Every shape in the catalog, by name (file-name order)."""
    directory = directory or dataset_dir() / "queries"
    shapes = {}
    for path in sorted(directory.glob("*.sql")):
        shape = _parsed(path.read_text(), path)
        shapes[shape.name] = shape
    return shapes


@functools.lru_cache(maxsize=512)
def _parsed(text: str, path: Path) -> QueryShape:
    """:func:`parse_shape` remembered by the file's text (a pure function of it): the catalog is
    read for every comparison, and parsing and checking its ~25 files costs ~40 ms each time."""
    return parse_shape(text, path)


def shape(name: str) -> QueryShape:
    shapes = load_shapes()
    try:
        return shapes[name]
    except KeyError:
        raise WorkbookError(f"no query shape {name!r}; known shapes: {', '.join(shapes)}") from None
