"""A load run's result, whichever driver produced it: one row per transaction, and what follows.

:class:`LoadRun` holds the per-transaction frame (``start`` seconds from the run's start,
``latency_ms``, ``shape``, ``node``, ``error_class``: None when it succeeded), the server-side
samples of the monitor, and the run's context (mix, driver, route, clients, whether it wrote and
whether the dataset was pristine). Everything a lesson, a chart or ``workbook bench --json``
shows is computed from those rows, so both drivers are summarised by the same code.

Percentile intervals are an exact bootstrap: the r-th order statistic of a resample of n values
is the value at rank ``ceil(n * U)`` where U ~ Beta(r, n − r + 1), the r-th order statistic of
n uniforms; drawing those ranks gives the bootstrap distribution of a percentile without
resampling (and sorting) 50,000 latencies thousands of times.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .classify import ERROR_CLASSES

if TYPE_CHECKING:
    import pandas as pd

TX_COLUMNS = ("start", "latency_ms", "shape", "node", "error_class")
PERCENTILES = (50, 95, 99)
BOOTSTRAP_DRAWS = 2000


def percentile(sorted_ms: np.ndarray, p: float) -> float:
    """The p-th percentile as an order statistic: the value at rank ceil(p/100 · n)."""
    n = len(sorted_ms)
    if n == 0:
        return math.nan
    r = max(1, math.ceil(p / 100 * n))
    return float(sorted_ms[r - 1])


def percentile_ci(sorted_ms: np.ndarray, p: float, *, conf: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Exact percentile-bootstrap interval of the p-th percentile (see the module docstring)."""
    n = len(sorted_ms)
    if n < 2:
        return (math.nan, math.nan)
    r = max(1, math.ceil(p / 100 * n))
    rng = np.random.default_rng(seed)
    ranks = np.ceil(n * rng.beta(r, n - r + 1, BOOTSTRAP_DRAWS)).astype(int).clip(1, n)
    lo, hi = np.percentile(sorted_ms[ranks - 1], [(1 - conf) / 2 * 100, (1 + conf) / 2 * 100])
    return float(lo), float(hi)


def empty_transactions() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({"start": pd.Series(dtype=float), "latency_ms": pd.Series(dtype=float),
                         "shape": pd.Series(dtype=object), "node": pd.Series(dtype=object),
                         "error_class": pd.Series(dtype=object)})  # fmt: skip


@dataclass
class LoadRun:
    """One load run: per-transaction rows, server samples, and the run's context."""

    mix: str
    driver: str
    route: str
    clients: int
    duration_s: float  # asked for
    elapsed_s: float  # the measured window (first start to last end, or the driver's own clock)
    transactions: pd.DataFrame
    samples: pd.DataFrame | None = None  # the monitor's: t, node, metric, key, value
    rate: float | None = None
    started_at: float = 0.0  # epoch seconds of t=0
    wrote: bool = False
    dataset_pristine: bool | None = None  # whether the dataset was untouched before this run, if the caller knows
    dataset_changes: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> {ins, upd, del}
    cancelled: bool = False
    events: list[tuple[float, str]] = field(default_factory=list)  # (t, label): timeouts hit, replica added ...
    settings: dict[str, Any] = field(default_factory=dict)  # driver options, pgbench argv (no secrets)
    notes: list[str] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    # ---- the summary ----------------------------------------------------------------------
    @property
    def ok(self) -> pd.DataFrame:
        return self.transactions[self.transactions["error_class"].isna()]

    @property
    def tps(self) -> float:
        return len(self.ok) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency(self) -> dict[str, float]:
        """p50/p95/p99/max/mean of successful transactions, in ms."""
        lat = np.sort(self.ok["latency_ms"].to_numpy(dtype=float))
        out = {f"p{p}_ms": percentile(lat, p) for p in PERCENTILES}
        out["max_ms"] = float(lat[-1]) if len(lat) else math.nan
        out["mean_ms"] = float(lat.mean()) if len(lat) else math.nan
        return out

    def latency_ci(self, conf: float = 0.95) -> dict[str, tuple[float, float]]:
        """Bootstrap intervals of p50/p95/p99 (the max has none: it is one observation)."""
        lat = np.sort(self.ok["latency_ms"].to_numpy(dtype=float))
        return {f"p{p}_ms": percentile_ci(lat, p, conf=conf, seed=p) for p in PERCENTILES}

    def errors(self) -> dict[str, int]:
        """Failed transactions by error class (only the classes that occurred)."""
        counts = self.transactions["error_class"].dropna().value_counts()
        return {c: int(counts[c]) for c in ERROR_CLASSES if c in counts.index}

    def by_node(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        ok = self.ok
        for node, g in ok.groupby("node", sort=True):
            lat = np.sort(g["latency_ms"].to_numpy(dtype=float))
            out[str(node)] = {"tps": len(g) / self.elapsed_s if self.elapsed_s > 0 else 0.0,
                              "p95_ms": percentile(lat, 95), "transactions": len(g)}  # fmt: skip
        return out

    def by_shape(self) -> pd.DataFrame:
        """Per request: transactions, errors, p50/p95 ms."""
        import pandas as pd

        rows = []
        for shape, g in self.transactions.groupby("shape", sort=True):
            good = np.sort(g.loc[g["error_class"].isna(), "latency_ms"].to_numpy(dtype=float))
            rows.append({"shape": shape, "transactions": len(good), "errors": int(g["error_class"].notna().sum()),
                         "p50_ms": percentile(good, 50), "p95_ms": percentile(good, 95)})  # fmt: skip
        return pd.DataFrame(rows)

    def timeline(self, interval_s: float = 1.0) -> pd.DataFrame:
        """Per ``interval_s`` (by completion time): TPS, p50/p95 ms, errors. The last interval counts
        over the part of it the run covered, and is left out when that is under half of it."""
        import pandas as pd

        df = self.transactions
        if df.empty:
            return pd.DataFrame(columns=["t", "tps", "p50_ms", "p95_ms", "errors"])
        end = df["start"] + df["latency_ms"].fillna(0) / 1000
        bucket = (end // interval_s).astype(int)
        last = float(end.max())
        rows = []
        for b in range(max(0, int(bucket.min())), int(bucket.max()) + 1):
            covered = min(interval_s, last - b * interval_s)  # the run's last interval is partial
            if covered < interval_s / 2:
                continue
            g = df[bucket == b]
            good = np.sort(g.loc[g["error_class"].isna(), "latency_ms"].to_numpy(dtype=float))
            rows.append({"t": b * interval_s, "tps": len(good) / covered, "p50_ms": percentile(good, 50),
                         "p95_ms": percentile(good, 95), "errors": int(g["error_class"].notna().sum())})  # fmt: skip
        return pd.DataFrame(rows)

    def errors_timeline(self, interval_s: float = 1.0) -> pd.DataFrame:
        """Per interval and error class: how many (long form, for a stacked chart)."""
        import pandas as pd

        bad = self.transactions[self.transactions["error_class"].notna()]
        if bad.empty:
            return pd.DataFrame(columns=["t", "error_class", "count"])
        t = ((bad["start"] + bad["latency_ms"] / 1000) // interval_s) * interval_s
        return (bad.assign(t=t).groupby(["t", "error_class"]).size().rename("count").reset_index())

    def as_dict(self) -> dict[str, Any]:
        """What ``workbook bench --json`` prints: tps, p50/p95/p99, transactions, errors, by_node."""
        lat = self.latency()
        return {
            "tps": round(self.tps, 1),
            "p50_ms": _r(lat["p50_ms"]),
            "p95_ms": _r(lat["p95_ms"]),
            "p99_ms": _r(lat["p99_ms"]),
            "transactions": len(self.ok),
            "errors": self.errors(),
            "by_node": {n: {"tps": round(v["tps"], 1), "p95_ms": _r(v["p95_ms"])} for n, v in self.by_node().items()},
        }

    def record(self) -> dict[str, Any]:
        """The run as plain data for the results store (the transactions stay out: see ``summary``)."""
        import datetime as dt

        lat = self.latency()
        ci = self.latency_ci()
        return {
            "load_run_id": self.run_id,
            "created_at": dt.datetime.fromtimestamp(self.started_at or 0, dt.UTC),
            "mix": self.mix, "driver": self.driver, "route": self.route, "clients": self.clients,
            "rate": self.rate, "duration_s": self.duration_s, "elapsed_s": self.elapsed_s,
            "tps": self.tps, "transactions": len(self.ok), **{k: _r(v) for k, v in lat.items()},
            "latency_ci": {k: [_r(a), _r(b)] for k, (a, b) in ci.items()},
            "errors": self.errors(), "by_node": self.by_node(),
            "timeline": self.timeline().to_dict("records"),
            "wrote": self.wrote, "dataset_pristine": self.dataset_pristine, "dataset_changes": self.dataset_changes,
            "cancelled": self.cancelled, "events": [list(e) for e in self.events], "settings": self.settings,
            "notes": self.notes,
        }  # fmt: skip

    def save(self, store: Any, *, sweep_id: str | None = None, usl: dict[str, Any] | None = None) -> str:
        """Store the run in a :class:`~workbook.results.ResultsStore`; returns its id."""
        store.append_load_run({**self.record(), "sweep_id": sweep_id, "usl": usl})
        return self.run_id

    def summary(self) -> str:
        d = self.as_dict()
        errs = ", ".join(f"{n} {c}" for c, n in d["errors"].items()) or "no errors"
        return (f"{self.mix} via {self.driver}, {self.clients} clients, route {self.route}: {d['tps']:,} TPS, "
                f"p50 {d['p50_ms']} ms, p95 {d['p95_ms']} ms, p99 {d['p99_ms']} ms, {errs}")  # fmt: skip

    def __repr__(self) -> str:
        return f"LoadRun({self.summary()})"


def _r(x: float | None, digits: int = 3) -> float | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return round(float(x), digits)
