"""The lessons: one module each, shared by its notebook, the report and ``workbook report --json``.

``LESSONS`` maps a lesson's name to its :class:`Lesson`; ``DEFAULT`` is the set ``workbook report``
runs when none is named (about a minute at the default scale on 2 cores).
"""

from __future__ import annotations

from ..errors import WorkbookError
from . import indexes, jsonb, observability, planner, pooling, replicas, transactions, vectors
from ._lesson import Lesson, LessonResult, LessonRun, Step, comparison_figures, walk

LESSONS: dict[str, Lesson] = {m.LESSON.name: m.LESSON for m in (indexes, jsonb, planner, transactions, replicas, pooling, observability, vectors)}
DEFAULT: tuple[str, ...] = ("indexes", "jsonb", "planner")


def lesson(name: str) -> Lesson:
    """The lesson called ``name``."""
    try:
        return LESSONS[name]
    except KeyError:
        raise WorkbookError(f"no lesson {name!r}; the lessons are: {', '.join(LESSONS)}") from None


def chosen(names: str | list[str] | tuple[str, ...] | None) -> list[Lesson]:
    """``None`` → the default set; ``"all"`` → every lesson; else the named ones (comma-separated or a list)."""
    if names is None:
        return [LESSONS[n] for n in DEFAULT]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise WorkbookError(f"no lesson named; the lessons are: {', '.join(LESSONS)} (or 'all')")
    if list(names) == ["all"]:
        return list(LESSONS.values())
    return [lesson(n) for n in dict.fromkeys(names)]


__all__ = [
    "DEFAULT", "LESSONS", "Lesson", "LessonResult", "LessonRun", "Step", "chosen", "comparison_figures", "lesson", "walk",
]  # fmt: skip
