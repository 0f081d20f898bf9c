"""Waiting with a deadline (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import ClusterError

T = TypeVar("T")


class GiveUp(Exception):
    """Raised by a probe when waiting longer is pointless (e.g. the process died)."""


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.01,
    max_interval: float = 0.2,
) -> T:
    """Call ``probe`` until it returns something truthy; back off gently; raise on the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            got = probe()
            if got:
                return got
        except GiveUp:
            raise
        except Exception as exc:  # probes may fail while a server is coming up
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {' '.join(str(last_exc).split())})" if last_exc else ""
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)
