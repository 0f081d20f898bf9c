"""A panel's Run on a thread: one run at a time, Cancel sets a flag the measurement polls, ``wait()``
joins. Shared by the panels whose measurements take seconds (ExperimentPanel, ReplicaPanel)."""

from __future__ import annotations

import threading
from typing import Any


class Background:
    """Mixed into a panel that has a ``status`` widget and a ``_run()`` doing one measurement."""

    _thread: threading.Thread | None = None
    _stop: bool = False
    #: what the status says once Cancel is pressed
    cancel_text = "cancelling..."
    status: Any

    def _run(self) -> Any:
        raise NotImplementedError

    def cancel(self) -> None:
        self._stop = True
        self.status.value = self.cancel_text

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _start(self, *, background: bool, name: str) -> Any:
        """``_run()`` now, or on a thread named ``name`` (returning None); None while one still runs."""
        if self._thread is not None and self._thread.is_alive():
            return None
        self._stop = False
        if background:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()
            return None
        return self._run()
