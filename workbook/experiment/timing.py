"""Honest timings: interleaved repetitions, medians, bootstrap intervals and a verdict.

Speed is measured by plain execution of prepared statements (what the application would see),
never by ``EXPLAIN ANALYZE``, whose per-node clock inflates short queries up to ~3x. Every arm
is warmed up first; then the arms take turns, in an order shuffled each round (seeded), so
drift on a shared machine (CPU frequency, a neighbour's job) hits every arm alike. The price:
each execution follows the other arm's, so a 0.1 ms index probe interleaved with a 60 ms
parallel scan pays for the scan's leftovers (workers exiting, cold caches) and the interleaved
ratio is the conservative one (see benchmarks/README.md, toggle).

The verdict compares medians. Its uncertainty is a percentile bootstrap of the ratio of medians
(each arm resampled independently). A difference is reported as faster/slower only when the 95 %
interval excludes 1 and the ratio passes a practical threshold (default 1.10x, pgcompare's fixed
rule); a real 3 % difference is called "negligible", and an interval that includes 1 is "no
measurable difference".
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_THRESHOLD = 1.10
BOOTSTRAP_RESAMPLES = 4000


@dataclass(frozen=True)
class Verdict:
    ratio: float  # baseline median / treatment median: > 1 means the treatment is faster
    ci_low: float
    ci_high: float
    kind: str  # "faster", "slower", "no measurable difference", "negligible"
    text: str
    threshold: float = DEFAULT_THRESHOLD

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)

    @property
    def significant(self) -> bool:
        return self.kind in ("faster", "slower")


def median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=float)))


def p95(xs: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), 95))


def bootstrap_median_ci(xs: Sequence[float], *, conf: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of one arm's median."""
    a = np.asarray(xs, dtype=float)
    rng = np.random.default_rng(seed)
    meds = np.median(a[rng.integers(0, len(a), (BOOTSTRAP_RESAMPLES, len(a)))], axis=1)
    lo, hi = np.percentile(meds, [(1 - conf) / 2 * 100, (1 + conf) / 2 * 100])
    return float(lo), float(hi)


def bootstrap_ratio(
    baseline: Sequence[float], treatment: Sequence[float], *, conf: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(ratio of medians baseline/treatment, CI low, CI high) by percentile bootstrap."""
    a = np.asarray(baseline, dtype=float)
    b = np.asarray(treatment, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two samples per arm")
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, len(a), (BOOTSTRAP_RESAMPLES, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (BOOTSTRAP_RESAMPLES, len(b)))], axis=1)
    ratios = ma / np.maximum(mb, 1e-12)
    lo, hi = np.percentile(ratios, [(1 - conf) / 2 * 100, (1 + conf) / 2 * 100])
    return float(np.median(a) / max(np.median(b), 1e-12)), float(lo), float(hi)


def _x(r: float) -> str:
    return f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def verdict(
    baseline: Sequence[float],
    treatment: Sequence[float],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    confidence: float = 0.95,
    seed: int = 0,
) -> Verdict:
    """"4.2x faster, 95% CI 3.9-4.6x", "1.3x slower ...", "no measurable difference", or "negligible".

    * faster/slower: the interval excludes 1 and the ratio is beyond ``threshold``;
    * no measurable difference: the interval includes 1;
    * negligible: the difference is real (the interval excludes 1) but smaller than ``threshold``.

    At ``confidence`` 0.95 one comparison in twenty of two identical arms has an interval that
    misses 1 (measured here: 1 to 3 in 30 A/A runs); ask for 0.99 where a false alarm costs more.
    """
    ratio, lo, hi = bootstrap_ratio(baseline, treatment, conf=confidence, seed=seed)
    pct = f"{confidence * 100:g}%"
    ci = f"{pct} CI {_x(lo)}-{_x(hi)}"
    if lo <= 1 <= hi:
        return Verdict(ratio, lo, hi, "no measurable difference",
                       f"no measurable difference ({_x(ratio)}, {ci}: the interval includes 1)", threshold)  # fmt: skip
    if ratio >= threshold:
        return Verdict(ratio, lo, hi, "faster", f"{_x(ratio)} faster, {ci}", threshold)
    if ratio <= 1 / threshold:
        return Verdict(ratio, lo, hi, "slower", f"{_x(1 / ratio)} slower, {pct} CI {_x(1 / hi)}-{_x(1 / lo)}", threshold)
    if ratio > 1:
        way = f"{_x(ratio)} faster, {ci}"
    else:  # said the way a slowdown is said: both bounds inverted
        way = f"{_x(1 / ratio)} slower, {pct} CI {_x(1 / hi)}-{_x(1 / lo)}"
    return Verdict(ratio, lo, hi, "negligible",
                   f"negligible: {way}, real but under the {threshold:.2f}x that matters", threshold)  # fmt: skip


def time_interleaved(
    runners: Sequence[Callable[[], object]],
    *,
    repeats: int = 30,
    warmup: int = 3,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[list[float]]:
    """Milliseconds per call for each runner: ``warmup`` untimed calls each, then ``repeats`` turns.

    In each turn every runner runs once, in a freshly shuffled order. ``should_stop`` is polled
    between turns (a Cancel button) from the third turn on; the samples gathered so far are
    returned (at least two per runner, the least a median and an interval need). Python's cyclic
    garbage collector is paused while timing, as :mod:`timeit` does, so a collection triggered by
    one arm's allocations does not land in the other arm's sample.
    """
    for run in runners:
        for _ in range(warmup):
            run()
    rng = np.random.default_rng(seed)
    orders = [[int(i) for i in rng.permutation(len(runners))] for _ in range(repeats)]
    samples: list[list[float]] = [[] for _ in runners]
    clock = time.perf_counter_ns
    collecting = gc.isenabled()
    gc.disable()
    try:
        for turn, order in enumerate(orders):
            if turn >= 2 and should_stop is not None and should_stop():
                break
            for i in order:
                t0 = clock()
                runners[i]()
                samples[i].append((clock() - t0) / 1e6)
            if progress is not None:
                progress(turn + 1, repeats)
    finally:
        if collecting:
            gc.enable()
    return samples
