"""The standard suite ``workbook report`` runs: indexes, JSONB, query shapes — one comparison each.

Every experiment is a what-if or a variant, so the suite changes nothing in the database; each
result is stored in the lab's results file, and the report is rendered from there. Each baseline
is at worst one sequential scan, so the suite's time grows linearly with the scale (shapes whose
baseline is quadratic without an index, like the LATERAL conversation list, stay in the notebooks).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import WorkbookError

if TYPE_CHECKING:
    from ..lab import Lab


@dataclass(frozen=True)
class Experiment:
    topic: str
    shape: str
    index: str | None = None  # a candidate index, built as a what-if index
    variant: str | None = None  # the treatment's variant (the baseline runs `baseline_variant`)
    baseline_variant: str | None = None
    tier: str = "hot"


SUITE = (
    Experiment("indexes", "conversation_latest_messages", index="messages_conversation_created"),
    Experiment("indexes", "conversation_latest_messages", index="messages_created_conversation"),
    Experiment("indexes", "usage_per_org_per_day", index="usage_events_org_time"),
    Experiment("indexes", "audit_by_actor", index="audit_actor_time"),
    Experiment("indexes", "unresolved_negative_feedback", index="messages_feedback_unresolved"),
    Experiment("jsonb", "messages_by_model", index="messages_metadata_gin_path", variant="containment",
               baseline_variant="containment", tier="cold"),  # fmt: skip
    Experiment("jsonb", "messages_with_feedback", index="messages_metadata_gin", variant="key_exists", baseline_variant="key_exists"),
    Experiment("query shapes", "messages_feed_pagination", variant="keyset", baseline_variant="offset"),
    Experiment("query shapes", "recent_messages_star_vs_narrow", variant="narrow", baseline_variant="star"),
    Experiment("query shapes", "count_messages", variant="estimate", baseline_variant="exact"),
)


def run_suite(lab: Lab, *, shapes: list[str] | None = None, repeats: int = 20,
              progress: Callable[[str], None] | None = None) -> list[str]:  # fmt: skip
    """Run the suite (or the experiments on ``shapes``); return the stored comparison ids."""
    from ..experiment import Arm, Variant

    chosen = [e for e in SUITE if shapes is None or e.shape in shapes]
    if not chosen:
        known = sorted({e.shape for e in SUITE})
        raise WorkbookError(f"no experiment in the suite for shapes {shapes!r}; the suite covers: {', '.join(known)}")
    ids = []
    for e in chosen:
        knobs: list[Any] = []
        if e.index:
            knobs.append(lab.what_if(e.index))
        if e.variant and e.variant != e.baseline_variant:
            knobs.append(Variant(e.variant))
        label = " + ".join(k.label for k in knobs)
        if progress:
            progress(f"{e.topic}: {e.shape}: {label}")
        c = lab.compare(e.shape, Arm(label, e.variant, tuple(knobs)), Arm("baseline", e.baseline_variant),
                        tier=e.tier, repeats=repeats)  # fmt: skip
        ids.append(c.comparison_id)
    return ids


def main_job(out: str | Path, *, home: str | Path | None = None, scale: float | None = None,
             shapes: list[str] | None = None, repeats: int = 20,
             progress: Callable[[str], None] | None = None) -> tuple[Path, dict[str, float]]:  # fmt: skip
    """``workbook report``: cluster, dataset if missing, the suite, the HTML. Returns the path and phase seconds."""
    from ..lab import attach_lab
    from .html import write_report

    say = progress or (lambda _: None)
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    say("cluster: starting or attaching")
    lab = attach_lab(home=home)  # or your own server with WORKBOOK_DSN, as it is
    phases["cluster"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    say("dataset: loading if missing")
    lab.ensure_dataset(scale, progress=False)
    phases["load"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    ids = run_suite(lab, shapes=shapes, repeats=repeats, progress=say)
    phases["experiments"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    path = write_report(lab.store, out, ids=ids, dsns=[e.dsn for e in lab.target.endpoints], timings=phases)
    phases["render"] = time.perf_counter() - t3
    say(f"report: {path}")
    return path, phases
