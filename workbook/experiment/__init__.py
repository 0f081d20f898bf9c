"""Experiments: plans, findings, honest timings, reversible knobs, index costs and advice."""

from ..leftovers import Leftover, find_leftovers, sweep_leftovers
from .advise import Advice, Candidate, advise
from .costs import index_costs
from .distortion import clock_distortion
from .findings import Finding, findings
from .knobs import Index, IndexCost, Knob, Setting, Statistics, StatisticsTarget, Variant, WhatIfIndex
from .plan import Plan, PlanNode, QueryFailed, explain, parse_plan, plan_diff
from .runs import Arm, Comparison, Run, compare, explain_shape, measure, measurement_context, run_shape
from .timing import Verdict, bootstrap_ratio, time_interleaved, verdict

__all__ = [
    "Advice", "Arm", "Candidate", "Comparison", "Finding", "Index", "IndexCost", "Knob", "Leftover", "Plan", "PlanNode",
    "QueryFailed", "Run", "Setting", "Statistics", "StatisticsTarget", "Variant", "Verdict", "WhatIfIndex",
    "advise", "bootstrap_ratio", "clock_distortion", "compare", "explain", "explain_shape", "find_leftovers",
    "findings", "index_costs", "measure", "measurement_context", "parse_plan", "plan_diff", "run_shape", "sweep_leftovers",
    "time_interleaved", "verdict",
]  # fmt: skip
