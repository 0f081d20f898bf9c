"""Where the content files live: the dataset (schema, vocabulary, query shapes, indexes) and the notebooks.

The repository keeps them at the top, ``datasets/`` and ``notebooks/``, next to ``workbook/``.
An installed wheel has no repository around it, so the build copies both into the package as
``workbook/_data/datasets`` and ``workbook/_data/notebooks`` (``setup.py``: a ``build_py`` step
that runs after the ordinary one; ``MANIFEST.in`` puts both folders into an sdist, so a wheel built
from an sdist has them too). Why a build step rather than packaging options:

- ``[tool.setuptools.data-files]`` is deprecated and installs outside the package, where no code
  can find it reliably;
- mapping the top-level folders onto a sub-package with ``package-dir`` makes them packages,
  which editable installs resolve only through an import finder: a ``Path`` next to
  ``workbook/__file__`` would not exist there.

An editable install (``pip install -e .``) skips the copy: the package is the repository's own
``workbook/``, and the folders are found next to it. So :func:`dataset_dir` and
:func:`notebooks_dir` look in this order: ``$WORKBOOK_DATASETS`` (datasets only), the packaged
copy (a wheel), the repository (a checkout, an editable install).
"""

from __future__ import annotations

from pathlib import Path

from .. import config
from ..errors import WorkbookError

_PACKAGE = Path(__file__).resolve().parents[1]  # .../workbook
#: the copies a wheel carries (see setup.py)
PACKAGED = _PACKAGE / "_data"
#: the repository around an editable install or a checkout
REPOSITORY = _PACKAGE.parent


def _roots(folder: str) -> list[Path]:
    return [PACKAGED / folder, REPOSITORY / folder]


def dataset_dir(name: str = "ai_app") -> Path:
    """``datasets/<name>``: from ``$WORKBOOK_DATASETS``, else the installed package, else the checkout."""
    env = config.datasets_dir()
    roots = [env] if env is not None else _roots("datasets")
    for root in roots:
        if (root / name / "schema.sql").is_file():
            return root / name
    where = " or ".join(repr(str(r / name)) for r in roots)
    raise WorkbookError(
        f"dataset files not found in {where}; reinstall the workbook (python -m pip install .) "
        "or set WORKBOOK_DATASETS to a checkout's datasets/ folder"
    )


def notebooks_dir() -> Path:
    """The lesson notebooks shipped with the workbook (the installed copy, else the checkout's)."""
    for root in _roots("notebooks"):
        if any(root.glob("*.ipynb")):
            return root
    raise WorkbookError(
        f"the workbook's notebooks are not found in {str(PACKAGED / 'notebooks')!r} or "
        f"{str(REPOSITORY / 'notebooks')!r}; reinstall the workbook (python -m pip install .)"
    )
