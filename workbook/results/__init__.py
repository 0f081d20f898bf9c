"""Where measurements live: a DuckDB file of every run and comparison, read back as DataFrames."""

from .store import ResultsStore

__all__ = ["ResultsStore"]
