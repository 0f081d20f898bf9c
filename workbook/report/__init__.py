"""Reports: one self-contained HTML file, as a composition of lessons or of stored comparisons."""

from .html import comparisons_from_store, render, render_lessons, write_html, write_report

__all__ = ["comparisons_from_store", "render", "render_lessons", "write_html", "write_report"]
