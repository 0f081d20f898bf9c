"""Reports: one self-contained HTML file of measured comparisons, and the suite ``workbook report`` runs."""

from .html import comparisons_from_store, render, write_report
from .suite import SUITE, Experiment, main_job, run_suite

__all__ = ["SUITE", "Experiment", "comparisons_from_store", "main_job", "render", "run_suite", "write_report"]
