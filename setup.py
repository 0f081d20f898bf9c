"""Build step: ship the top-level ``datasets/`` and ``notebooks/`` inside the package.

Everything else about the package is in ``pyproject.toml``. The repository keeps both folders at
the top; a wheel carries them as ``workbook/_data/datasets`` and ``workbook/_data/notebooks`` (see
``workbook/dataset/paths.py`` for how they are found, and why this is a build step).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA = ("datasets", "notebooks")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "_build.py")


class BuildPyWithData(build_py):
    """The ordinary build_py, then a copy of the data folders into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's folders in place
        for name in DATA:
            src = HERE / name
            if not src.is_dir():
                raise SystemExit(f"error: {src} is missing; build the workbook from its repository or sdist")
            dst = Path(self.build_lib) / "workbook" / "_data" / name
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=SKIP)


setup(cmdclass={"build_py": BuildPyWithData})
