"""Honest timings: interleaved repetitions, medians, bootstrap intervals and a verdict.

Speed is measured by plain execution of prepared statements (what the application would see),
never by ``EXPLAIN ANALYZE``, whose per-node clock inflates short queries up to ~3x. Every arm
is warmed up first (past the five executions after which PostgreSQL may give a prepared
statement a generic plan: :data:`PLAN_CACHE_WARMUP`); then the arms take turns, in an order
shuffled each round (seeded), so drift on a shared machine (CPU frequency, a neighbour's job) hits every arm alike. The price:
each execution follows the other arm's, so a 0.1 ms index probe interleaved with a 60 ms
parallel scan pays for the scan's leftovers (workers exiting, cold caches) and the interleaved
ratio is the conservative one (see benchmarks/README.md, toggle). Drift that follows a process
rather than the clock (one CPU busier than the other) interleaving cannot cancel: the callers pin
the arms' server processes to one CPU (:mod:`workbook.experiment.pinning`).

The verdict compares medians. Its uncertainty is a percentile bootstrap of the ratio of medians
(each arm resampled independently). A difference is reported as faster/slower only when the 95 %
interval excludes 1 and the ratio passes a practical threshold (default 1.10x, pgcompare's fixed
rule); a real 3 % difference is called "negligible", and an interval that includes 1 is "no
measurable difference".

A comparison may stop before its ``repeats`` (:func:`decided_early`, a Haybittle–Peto rule):
at the interim looks (after 8 and 14 turns, when the maximum is larger) it stops only when the
difference is beyond doubt: an exact rank test (Mann–Whitney, ties counted against stopping)
gives p < 0.001 **and** the 99.9 % bootstrap interval of the ratio of medians excludes 1 and
passes the threshold. It never stops early for "no difference": those comparisons take every
repetition, so fewer repetitions can not turn a verdict into "no measurable difference". Under
two identical arms each look stops with probability < 0.001, so the whole rule's false-alarm
rate is at most 0.05 + 2 × 0.001. The verdict is then computed, as always, from every sample
taken (its 95 % interval is of those samples).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_THRESHOLD = 1.10
BOOTSTRAP_RESAMPLES = 4000
EARLY_LOOKS = (8, 14)  # turns after which a comparison may stop, when its maximum is larger
EARLY_ALPHA = 0.001  # each interim look's false-alarm rate
#: untimed warm-up calls at least, after a measurement's one untimed check: PostgreSQL plans a prepared
#: statement's first five executions for their values and from the sixth may run a generic plan instead
PLAN_CACHE_WARMUP = 4


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


def _rank_counts(n: int, m: int) -> np.ndarray:
    """How many of the C(n+m, n) orderings of two samples (no ties) give each Mann–Whitney U (0..n*m)."""
    # f[j] holds the counts for (i, j) samples; f(i, j) = f(i-1, j) shifted by j + f(i, j-1)
    f = [np.ones(1)] + [np.ones(1) for _ in range(m)]  # i = 0: U is 0 whatever j
    for i in range(1, n + 1):
        g = [np.ones(1)]  # j = 0: U is 0
        for j in range(1, m + 1):
            out = np.zeros(i * j + 1)
            out[j:j + len(f[j])] += f[j]  # the largest value is the first sample's: it beats all j
            out[:len(g[j - 1])] += g[j - 1]  # the largest is the second sample's
            g.append(out)
        f = g
    return f[m]


def rank_test_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided exact Mann–Whitney p-value that ``a`` and ``b`` come from one distribution.

    Ties count against a difference (each tie adds a whole pair to the smaller U), so with ties
    the p-value is conservative (too large), never too small.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    less = int((x[:, None] < y[None, :]).sum())
    greater = int((x[:, None] > y[None, :]).sum())
    ties = x.size * y.size - less - greater
    u = min(less, greater) + ties
    counts = _rank_counts(x.size, y.size)
    return float(min(1.0, 2 * counts[: u + 1].sum() / counts.sum()))


def decided_early(baseline: Sequence[float], treatment: Sequence[float], *,
                  threshold: float = DEFAULT_THRESHOLD) -> bool:  # fmt: skip
    """An interim look of a comparison: is the difference already beyond doubt (see the module)?"""
    if min(len(baseline), len(treatment)) < EARLY_LOOKS[0] or rank_test_p(baseline, treatment) >= EARLY_ALPHA:
        return False
    return verdict(baseline, treatment, threshold=threshold, confidence=1 - EARLY_ALPHA).significant


def time_interleaved(
    runners: Sequence[Callable[[], object]],
    *,
    repeats: int = 30,
    warmup: int = 3,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    decided: Callable[[list[list[float]]], bool] | None = None,
) -> list[list[float]]:
    """Milliseconds per call for each runner: ``warmup`` untimed calls each, then ``repeats`` turns.

    In each turn every runner runs once, in a freshly shuffled order. ``should_stop`` is polled
    between turns (a Cancel button) from the third turn on; the samples gathered so far are
    returned (at least two per runner, the least a median and an interval need). ``decided`` is
    asked after the turns in :data:`EARLY_LOOKS` below ``repeats`` (an interim look, e.g.
    :func:`decided_early`); when it says yes, timing stops there. Python's cyclic garbage
    collector is paused while timing, as :mod:`timeit` does, so a collection triggered by one
    arm's allocations does not land in the other arm's sample.
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
            if decided is not None and turn + 1 in EARLY_LOOKS and turn + 1 < repeats and decided(samples):
                break
    finally:
        if collecting:
            gc.enable()
    return samples
