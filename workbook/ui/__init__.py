"""What the user sees: Altair charts of runs and comparisons (and, later, the widget panels)."""

from .charts import before_after, index_tradeoff, latency_distribution, plan_frame, plan_view, tradeoff_frame

__all__ = ["before_after", "index_tradeoff", "latency_distribution", "plan_frame", "plan_view", "tradeoff_frame"]
