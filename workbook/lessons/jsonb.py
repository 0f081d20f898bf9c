"""JSONB and GIN: an index serves an operator, not a column — GIN serves ``@>`` and ``?``, only an
expression B-tree serves ``->> =``, ``jsonb_path_ops`` is smaller but serves ``@>`` alone, and
for a value on most rows no index helps.

Seed problem: message metadata (model, tool calls, feedback) lives in one JSONB column, queried
the way each developer happened to write it.

Figures: ``comparisons`` — per arm (``gin_path_ops_cold``, ``expression_cold``,
``expression_hot``, ``gin_path_ops_key_exists``, ``gin_ops_key_exists``) the speed-up with its
95% CI; ``index_bytes`` — the size of each GIN operator class's index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lesson import Lesson, Step, comparison_figures

if TYPE_CHECKING:
    from ..experiment import Comparison, Plan
    from ..lab import Lab

BY_MODEL, WITH_FEEDBACK = "messages_by_model", "messages_with_feedback"


def two_ways(lab: Lab) -> dict[str, Plan]:
    """The same question as ``metadata @> '{"model": ...}'`` and as ``metadata ->> 'model' = ...``."""
    return {v: lab.explain(BY_MODEL, v, tier="cold") for v in ("containment", "key_equality")}


def _with_index(lab: Lab, shape: str, variant: str, index: str, tier: str) -> Comparison:
    from ..experiment import Arm

    return lab.compare(shape, Arm(index, variant, (lab.what_if(index),)), Arm("no index", variant), tier=tier)


def rare_value(lab: Lab) -> dict[str, Comparison]:
    """A rare model (the cold tier): GIN for ``@>``, an expression B-tree for ``->>``."""
    return {
        "gin_path_ops_cold": _with_index(lab, BY_MODEL, "containment", "messages_metadata_gin_path", "cold"),
        "expression_cold": _with_index(lab, BY_MODEL, "key_equality", "messages_model_expr", "cold"),
    }


def common_value(lab: Lab) -> Comparison:
    """The model on most rows (the hot tier): walking the primary key finds fifty matches at once."""
    return _with_index(lab, BY_MODEL, "key_equality", "messages_model_expr", "hot")


def operator_classes(lab: Lab) -> dict[str, Comparison]:
    """``?`` (key exists) with each GIN operator class: ``jsonb_ops`` serves it, ``jsonb_path_ops`` cannot."""
    return {
        "gin_path_ops_key_exists": _with_index(lab, WITH_FEEDBACK, "key_exists", "messages_metadata_gin_path", "hot"),
        "gin_ops_key_exists": _with_index(lab, WITH_FEEDBACK, "key_exists", "messages_metadata_gin", "hot"),
    }


def figures(outputs: dict[str, Any]) -> dict[str, Any]:
    arms = {**outputs["rare_value"], "expression_hot": outputs["common_value"], **outputs["operator_classes"]}
    comparisons = {name: comparison_figures(c) for name, c in arms.items()}
    sizes = {}
    for name, c in outputs["operator_classes"].items():
        cost = (c.extra.get("index_costs") or [{}])[0]
        sizes[cost.get("name", name)] = cost.get("size_bytes")
    plans = {v: p.summary() for v, p in outputs["two_ways"].items()}
    return {"comparisons": comparisons, "index_bytes": sizes, "plans_without_index": plans}


LESSON = Lesson(
    name="jsonb",
    title="JSONB and GIN: @> vs ->>, jsonb_path_ops vs jsonb_ops, expression indexes",
    claim="An index serves an operator, not a column: an expression B-tree serves ->> =, GIN with the default "
          "jsonb_ops serves ? where jsonb_path_ops cannot; and the planner decides: with ORDER BY id DESC LIMIT it "
          "may keep walking the primary key instead of using GIN for @>, and for a value on most rows an index "
          "makes the query slower.",
    notebook="02_jsonb_and_gin",
    steps=(
        Step("two_ways", "Containment @> vs key equality ->>",
             "The same question asked two ways; without an index both scan every message.", two_ways),
        Step("rare_value", "A rare value: where an index pays, and where the planner declines one",
             "Only an expression index serves ->> =, and for a rare model it pays. For @> a GIN index could serve, "
             "but with ORDER BY id DESC LIMIT the planner may walk the primary key backwards instead: compare the "
             "plans before believing an index helps.", rare_value),
        Step("common_value", "A common value: where it does not",
             "For the model on most rows, the plan without the index finds its rows at once.", common_value),
        Step("operator_classes", "jsonb_path_ops vs jsonb_ops",
             "The default operator class also indexes keys alone, so it serves ? (key exists); jsonb_path_ops is "
             "smaller and serves only @>.", operator_classes),
    ),
    figures=figures,
    references=(
        ("JSON types: jsonb indexing", "https://www.postgresql.org/docs/current/datatype-json.html#JSON-INDEXING"),
        ("GIN indexes", "https://www.postgresql.org/docs/current/gin.html"),
        ("Indexes on expressions", "https://www.postgresql.org/docs/current/indexes-expressional.html"),
    ),
)  # fmt: skip
