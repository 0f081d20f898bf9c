"""Tables as people read them: units and sensible decimals, chosen from the column's name.

A lesson's frames keep their raw numbers (``df["median_ms"]`` is still a float you can compute
with); only their display changes. :func:`table` marks a DataFrame so a notebook shows it
formatted, and :func:`frame_html` is the same table as HTML for the report. The rules read the
column name: ``*_ms`` milliseconds, ``*_s``/``*seconds`` seconds, ``*bytes`` a size,
``speedup``/``write_cost``/``misestimate``/``vs_plain`` a factor (×), ``*share``/``*hit_ratio``
a percentage, row and call counts with thousands separators; anything else as it is.
"""

from __future__ import annotations

import html
import math
import numbers
import re
from typing import Any

import pandas as pd

_SHARE = re.compile(r"(^|_)share(_|$)")  # dead_share, lock_wait_share; not shared_hit
# ci_low/ci_high alone are a speed-up's interval (comparison figures); a unit named before them wins
_FACTOR = re.compile(r"(^|_)(speedup|write_cost|write_ratio|vs_plain|misestimate|ratio|factor|ci_low|ci_high)(_|$)")
_ID = re.compile(r"(^|_)(id|pid|queryid|oid|xid|version)$")  # identifiers and versions, not quantities
_COUNT = re.compile(r"(^|_)(rows|calls|count|loops|runs|hit|read|reads|writes|hits|tokens|token_count|clients|statements|"
                    r"transactions|connections|blocks|dead|pages)(_|$)")  # fmt: skip


def _num(x: float) -> str:
    """Three significant figures or so, never scientific notation: 1,234 / 12.3 / 1.23 / 0.123 / 0.0012."""
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.01 or a == 0:
        return f"{x:.3f}"
    return f"{x:.2g}"


def _size(n: float) -> str:
    """Bytes as PostgreSQL's pg_size_pretty writes them (1024 per step)."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if abs(n) < 10 * 1024:
            return f"{n:,.0f} {unit}"
        n /= 1024
    return f"{n:,.0f} TB"


def cell(column: str, value: Any) -> str:
    """One value of ``column`` as text, with its unit (see the module's rules)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "–"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    name = column.lower()
    if _ID.search(name):  # an identifier, not a quantity: no thousands separators
        return str(value)
    x = float(value)
    if name.endswith("_pct") or name.endswith("percent"):
        return f"{x:.1f}%"
    if _SHARE.search(name) or name.endswith("hit_ratio"):
        return f"{x:.1%}"
    if "bytes" in name:
        return _size(x)
    if "tps" in name or name.endswith("per_s"):  # a rate, not seconds
        return _num(x) if abs(x) < 100 else f"{x:,.0f}"
    if name.endswith("_ms") or name == "ms" or "_ms_" in name:
        return f"{_num(x)} ms"
    if name.endswith("_s") or "seconds" in name:
        return f"{_num(x)} s"
    if name.endswith("_mb"):
        return f"{_num(x)} MB"
    if _FACTOR.search(name):
        return f"{x:.1f}×" if abs(x) >= 10 else f"{x:.2f}×"
    if _COUNT.search(name) or isinstance(value, numbers.Integral) or x.is_integer():
        return f"{x:,.0f}"  # a whole number, also one a column with gaps made a float (pg_stat_io's 89.0)
    return _num(x)


def _numeric(df: pd.DataFrame, column: Any) -> bool:
    return bool(df[column].map(lambda v: v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool))).all())


def frame_html(df: pd.DataFrame, *, num: str = "class='num'", max_rows: int | None = None) -> str:
    """The frame as an HTML table (no index), every cell formatted; numeric cells carry ``num``
    (the report's right-aligned class, or an inline style where there is no stylesheet). Past
    ``max_rows`` rows only the first and last five are shown, with the frame's size below."""
    cols = list(df.columns)
    right = {c: _numeric(df, c) for c in cols}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)

    def rows(part: pd.DataFrame) -> str:
        return "".join(
            "<tr>" + "".join(f"<td{' ' + num if right[c] else ''}>{html.escape(cell(str(c), v))}</td>"
                             for c, v in zip(cols, row)) + "</tr>"
            for row in part.itertuples(index=False, name=None)
        )  # fmt: skip

    if max_rows is not None and len(df) > max_rows:
        gap = "<tr>" + "<td>…</td>" * len(cols) + "</tr>"
        body, size = rows(df.head(5)) + gap + rows(df.tail(5)), f"<p>{len(df):,} rows × {len(cols)} columns</p>"
    else:
        body, size = rows(df), ""
    return f"<table class='dataframe'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{size}"


class Table(pd.DataFrame):
    """A DataFrame a notebook shows with units and sensible decimals (:func:`frame_html`); its
    data, and everything computed from it, are a plain DataFrame's."""

    @property
    def _constructor(self) -> type:
        return Table

    def _repr_html_(self) -> str:  # as long as pandas' own: display.max_rows (60) before it folds
        return frame_html(self, num="style='text-align: right'", max_rows=pd.get_option("display.max_rows"))


def table(df: pd.DataFrame) -> Table:
    """``df`` as a :class:`Table`: the same data, shown formatted in a notebook."""
    return df if isinstance(df, Table) else Table(df)


def tables_in(value: Any) -> Any:
    """A step's output with every DataFrame in it (at the top, or a dict's value) made a :class:`Table`."""
    if isinstance(value, pd.DataFrame):
        return table(value)
    if isinstance(value, dict):
        return {k: tables_in(v) for k, v in value.items()}
    return value
