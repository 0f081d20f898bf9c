"""What a lesson is: a claim, steps that measure it, and the figures the claim rests on.

A lesson's notebook, its report section and ``workbook report --lessons NAME --json`` all run the
same :class:`Step` functions through a :class:`LessonRun`, so they cannot disagree:

* the notebook runs one step per cell (``lesson.step("composite_order")``) and shows what it
  returns; its last cell, ``lesson.result()``, builds the figures and stores them;
* the report and the CLI call :meth:`Lesson.run`, which runs every step in order and does the
  same.

A step is a plain function of the :class:`~workbook.lab.Lab` returning measured objects (a
:class:`~workbook.experiment.Comparison`, a :class:`~workbook.experiment.Plan`, a DataFrame, or
a dict of them) and printing nothing. ``figures`` turns the steps' outputs into a JSON-ready dict
of the numbers the lesson's claims rest on, named as its issue names them.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError

if TYPE_CHECKING:
    from ..experiment import Comparison
    from ..lab import Lab


@dataclass(frozen=True)
class Step:
    """One measured step: its name (the notebook's handle), a title, what to look at, the function."""

    name: str
    title: str
    text: str
    run: Callable[[Lab], Any]


@dataclass(frozen=True)
class Lesson:
    """A claim, the steps that measure it, and how their outputs become figures."""

    name: str
    title: str
    claim: str
    notebook: str
    steps: tuple[Step, ...]
    figures: Callable[[dict[str, Any]], dict[str, Any]]
    references: tuple[tuple[str, str], ...] = ()  # (title, PostgreSQL documentation page)
    charts: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # outputs -> {title: Vega-Lite spec or Altair chart}

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise WorkbookError(f"lesson {self.name!r} has no step {name!r}; its steps: {', '.join(s.name for s in self.steps)}")

    def start(self, lab: Lab, *, source: str = "notebook") -> LessonRun:
        """A run of this lesson on ``lab`` whose steps you call one at a time (a notebook does)."""
        return LessonRun(self, lab, source=source)

    def run(self, lab: Lab, *, progress: Callable[[str], None] | None = None) -> LessonResult:
        """Every step in order, then the figures; stored in the lab's results."""
        run = self.start(lab, source="run")
        for s in self.steps:
            if progress:
                progress(f"{self.name}: {s.title}")
            run.step(s.name)
        return run.result()


class LessonRun:
    """The steps of one lesson run so far, and their outputs."""

    def __init__(self, lesson: Lesson, lab: Lab, *, source: str = "notebook") -> None:
        self.lesson, self.lab, self.source = lesson, lab, source
        self.outputs: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}

    def step(self, name: str) -> Any:
        """Run the step ``name`` (again, if it ran before) and return what it measured."""
        from ..ui.tables import tables_in

        s = self.lesson.step(name)
        t0 = time.perf_counter()
        out = s.run(self.lab)
        self.seconds[name] = time.perf_counter() - t0
        out = tables_in(out)  # its frames show with units and sensible decimals in a notebook
        self.outputs[name] = out
        return out

    def result(self) -> LessonResult:
        """The figures of the steps run so far (every step must have run), stored in the lab's results."""
        missing = [s.name for s in self.lesson.steps if s.name not in self.outputs]
        if missing:
            raise WorkbookError(f"lesson {self.lesson.name!r}: run the steps {missing} first (lesson.step(NAME))")
        result = LessonResult(
            lesson=self.lesson, outputs=dict(self.outputs), figures=self.lesson.figures(self.outputs),
            seconds=round(sum(self.seconds.values()), 3), step_seconds=dict(self.seconds), source=self.source,
        )  # fmt: skip
        self.lab.store.append_lesson(result.record())
        return result


@dataclass
class LessonResult:
    """What a lesson measured: the steps' outputs, its figures, how long it took."""

    lesson: Lesson
    outputs: dict[str, Any]
    figures: dict[str, Any]
    seconds: float
    step_seconds: dict[str, float] = field(default_factory=dict)
    source: str = "run"
    lesson_run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def name(self) -> str:
        return self.lesson.name

    def charts(self) -> dict[str, Any]:
        """The lesson's summary charts, drawn from what its steps measured ({} when it has none)."""
        return self.lesson.charts(self.outputs) if self.lesson.charts else {}

    @property
    def comparisons(self) -> list[Comparison]:
        """Every comparison the steps measured, in step order."""
        from ..experiment import Comparison

        return [x for _, x in walk(self.outputs) if isinstance(x, Comparison)]

    def as_dict(self) -> dict[str, Any]:
        """What ``workbook report --json`` prints for the lesson."""
        return {"figures": self.figures, "seconds": self.seconds}

    def record(self) -> dict[str, Any]:
        return {
            "lesson_run_id": self.lesson_run_id, "created_at": self.created_at, "lesson": self.name,
            "source": self.source, "seconds": self.seconds, "figures": self.figures,
            "comparison_ids": [c.comparison_id for c in self.comparisons],
        }  # fmt: skip

    def __repr__(self) -> str:
        return f"LessonResult({self.name!r}, {len(self.comparisons)} comparisons, {self.seconds:.1f} s)"


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(label, leaf) for every measured object in a step output (dicts are walked, in order)."""
    if isinstance(value, dict) and not _is_figure_dict(value):
        for k, v in value.items():
            yield from walk(v, f"{path} / {k}" if path else str(k))
    else:
        yield path, value


def _is_figure_dict(value: dict[str, Any]) -> bool:
    return all(isinstance(v, (int, float, str, bool)) or v is None for v in value.values())


def comparison_figures(c: Comparison) -> dict[str, Any]:
    """A comparison's verdict as figures: speedup (baseline median / treatment median) and its 95% CI."""
    v = c.verdict
    return {
        "speedup": round(v.ratio, 3), "ci_low": round(v.ci_low, 3), "ci_high": round(v.ci_high, 3),
        "verdict": v.kind, "baseline_ms": _ms(c.baseline.median_ms), "treatment_ms": _ms(c.treatment.median_ms),
    }  # fmt: skip


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
