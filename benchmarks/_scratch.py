"""Throw-away homes and clusters for the benchmark scripts (``python benchmarks/X.py`` imports this).

Homes go under /var/tmp, world-traversable: as root the servers run as an unprivileged user who
must reach the data directory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workbook.cluster import LocalCluster


def new_home_dir(prefix: str = "wb-bench-") -> Path:
    """A fresh, world-traversable directory under /var/tmp (the caller removes it)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    d.chmod(0o755)
    return d


@contextmanager
def scratch_dir(prefix: str = "wb-bench-") -> Iterator[Path]:
    d = new_home_dir(prefix)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def scratch_cluster(prefix: str = "wb-bench-") -> Iterator[LocalCluster]:
    """A primary without replicas in a fresh home, destroyed (processes and files) afterwards."""
    with scratch_dir(prefix) as d:
        cluster = LocalCluster(d / "home")
        try:
            cluster.up(replicas=0)
            yield cluster
        finally:
            cluster.destroy()
