"""The Universal Scalability Law: how throughput grows, flattens and falls with concurrency.

X(N) = λN / (1 + σ(N−1) + κN(N−1)): λ is one client's throughput, σ the serialized share
(contention: queueing on a lock, a hot row, one CPU), κ the cost of keeping N clients coherent
(crosstalk: every client waiting on every other). With κ > 0 throughput peaks at
N* = sqrt((1 − σ)/κ) and falls beyond it.

**Fit.** N/X(N) = (1/λ)·(1 + σ(N−1) + κN(N−1)) is linear in (1, N−1, N(N−1)), so the three
coefficients (a, b, c) = (1/λ, σ/λ, κ/λ) come from one linear least-squares solve
(``numpy.linalg.lstsq``). Each row is weighted by X/N, which makes a residual the *relative*
error of the throughput, so the 1-client point does not count less than the 64-client one. σ and
κ cannot be negative: a coefficient the solve makes negative is set to 0 and the others refitted
(an active-set step, at most twice). No starting values, no iterations that can fail to converge.

**Check.** :func:`fit_with_holdout` leaves out the largest N, fits the rest and reports the
relative error of the projection at the left-out point: the honest test of a law used to
extrapolate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import WorkbookError


@dataclass(frozen=True)
class USL:
    lam: float  # λ: throughput of one client (transactions/s)
    sigma: float
    kappa: float
    points: int

    def throughput(self, n: float | np.ndarray) -> float | np.ndarray:
        n = np.asarray(n, dtype=float)
        x = self.lam * n / (1 + self.sigma * (n - 1) + self.kappa * n * (n - 1))
        return float(x) if x.ndim == 0 else x

    @property
    def peak_clients(self) -> float:
        """N* = sqrt((1 − σ)/κ); infinite when κ = 0 (throughput only flattens, at λ/σ)."""
        if self.kappa <= 0 or self.sigma >= 1:
            return math.inf if self.sigma < 1 else 1.0
        return math.sqrt((1 - self.sigma) / self.kappa)

    @property
    def peak_tps(self) -> float:
        n = self.peak_clients
        if math.isinf(n):
            return self.lam / self.sigma if self.sigma > 0 else math.inf
        return float(self.throughput(n))

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "peak_clients": self.peak_clients, "peak_tps": self.peak_tps}


def fit(clients: Sequence[float], tps: Sequence[float]) -> USL:
    """Fit λ, σ, κ to measured (N, X) points (see the module docstring)."""
    n = np.asarray(clients, dtype=float)
    x = np.asarray(tps, dtype=float)
    keep = (n > 0) & (x > 0) & np.isfinite(x)
    n, x = n[keep], x[keep]
    if len(n) < 3 or len(np.unique(n)) < 3:
        raise WorkbookError(f"the USL needs throughput at 3 or more distinct client counts, got {len(np.unique(n))}")
    y = n / x
    design = np.column_stack([np.ones_like(n), n - 1, n * (n - 1)])
    w = x / n  # = 1/y: residuals become relative errors
    active = [0, 1, 2]
    coef = np.zeros(3)
    for _ in range(3):
        sol, *_ = np.linalg.lstsq(design[:, active] * w[:, None], y * w, rcond=None)
        coef = np.zeros(3)
        coef[active] = sol
        negative = [j for j in active[1:] if coef[j] < 0]
        if not negative:
            break
        active = [j for j in active if j not in negative]
    a, b, c = coef
    if a <= 0:
        raise WorkbookError("the USL fit failed (throughput does not behave like a closed system); measure more points")
    sigma, kappa = float(b / a), float(c / a)
    # round-off of an exactly linear (or contention-free) system is no contention: call it 0
    return USL(lam=float(1 / a), sigma=sigma if sigma > 1e-12 else 0.0, kappa=kappa if kappa > 1e-12 else 0.0, points=len(n))


def fit_with_holdout(clients: Sequence[float], tps: Sequence[float]) -> tuple[USL, float | None]:
    """The fit on every point, and the relative error at the largest N when it is left out of the fit.

    With fewer than 4 distinct client counts there is nothing to hold out: the error is None.
    """
    model = fit(clients, tps)
    n = np.asarray(clients, dtype=float)
    x = np.asarray(tps, dtype=float)
    if len(np.unique(n)) < 4:
        return model, None
    last = n == n.max()
    partial = fit(n[~last], x[~last])
    observed = float(x[last].mean())
    predicted = float(partial.throughput(float(n.max())))
    return model, (predicted - observed) / observed
