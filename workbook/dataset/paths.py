"""Where the dataset's content files (schema, vocabulary, query shapes, indexes) live."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import WorkbookError

_REPO_DATASETS = Path(__file__).resolve().parents[2] / "datasets"


def dataset_dir(name: str = "ai_app") -> Path:
    """``datasets/<name>`` of the checkout (or of ``$WORKBOOK_DATASETS``)."""
    root = Path(os.environ.get("WORKBOOK_DATASETS") or _REPO_DATASETS)
    path = root / name
    if not (path / "schema.sql").is_file():
        raise WorkbookError(
            f"dataset files not found in {str(path)!r}; install the workbook from its checkout "
            "(python -m pip install -e .) or set WORKBOOK_DATASETS to the checkout's datasets/ folder"
        )
    return path
