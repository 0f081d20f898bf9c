"""A CPU budget per node, so that replicas behave like separate machines.

On one laptop every node shares the same cores: adding replicas cannot raise read throughput,
and a lesson that tried would teach the wrong thing. With ``cpus_per_node`` each node gets its
own share of the CPU, in the first way this machine permits:

``cgroup``
    a cgroup v1 CPU quota (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) in a group of its own,
    ``<CGROUP_ROOT>/workbook/<12 hex digits of sha256(home)>/<node>/``. The postmaster and its
    children are written into ``cgroup.procs``; backends forked later inherit the group. Needs
    a writable cgroup v1 ``cpu`` controller (root, or a delegated hierarchy).
``affinity``
    whole cores, one set per node (``sched_setaffinity`` on the postmaster and its children,
    inherited by later backends), when the budget is a whole number of cores and the machine has
    enough of them for every node.
``shared``
    neither is possible: the nodes share the machine's CPUs, and ``up`` says so in one line.

Only a node's own processes (its postmaster and the postmaster's children) are ever moved: the
Python process and a load generator it starts (pgbench) stay outside every node's budget.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from ..errors import ClusterError

#: where the cgroup v1 ``cpu`` controller is mounted (tests point it elsewhere to simulate a
#: machine without writable cgroups); read at call time
CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
#: the folder under CGROUP_ROOT that holds every workbook cluster's groups
GROUP = "workbook"
#: the CFS period written for every node (the kernel's default, 100 ms)
PERIOD_US = 100_000
#: the smallest budget (the kernel refuses a quota below 1 ms)
MIN_CPUS = 0.01

How = Literal["cgroup", "affinity", "shared"]


@dataclass(frozen=True)
class CpuBudget:
    """A node's CPU budget as the processes really have it: ``cpus`` cores, enforced ``how``."""

    cpus: float
    how: How

    def as_dict(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "how": self.how}

    def describe(self) -> str:
        return f"{self.cpus:g} {self.how}"


@dataclass(frozen=True)
class Plan:
    """How ``cpus`` per node will be enforced on this machine for the nodes ``cores`` lists."""

    cpus: float | None  # None: no budget
    how: How | None
    cores: dict[str, frozenset[int]] = field(default_factory=dict)  # affinity only
    why: str | None = None  # shared only: why neither cgroups nor affinity


def available_cores() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))


def check_cpus(value: object) -> float | None:
    """``value`` as a budget in CPUs: None (not given), 0.0 (no budget) or MIN_CPUS..cores; else a ClusterError."""
    if value is None:
        return None
    cores = len(available_cores())
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0 or 0 < value < MIN_CPUS or value > cores):  # fmt: skip
        raise ClusterError(
            f"cpus per node must be a number of CPUs from {MIN_CPUS} to {cores} (the CPUs here), or 0 for no "
            f"budget, not {value!r}"
        )
    return float(value)


def home_group(home: Path) -> Path:
    """The cgroup folder of one cluster: ``<CGROUP_ROOT>/workbook/<sha256(home)[:12]>``."""
    digest = hashlib.sha256(os.path.realpath(home).encode()).hexdigest()[:12]
    return CGROUP_ROOT / GROUP / digest


def node_group(home: Path, name: str) -> Path:
    return home_group(home) / name


def throttle_counts(home: Path, name: str) -> tuple[int, int] | None:
    """A node's cgroup ``(nr_periods, nr_throttled)`` from ``cpu.stat``: how many quota periods it
    was runnable in and in how many it used up its quota and waited; None without a group."""
    try:
        stat = dict(line.split() for line in (node_group(home, name) / "cpu.stat").read_text().splitlines() if line.strip())
        return int(stat["nr_periods"]), int(stat["nr_throttled"])
    except (OSError, KeyError, ValueError):
        return None


def cgroup_unusable() -> str | None:
    """Why per-node CPU quotas cannot be made here (None: they can).

    Tries for real: creates ``<CGROUP_ROOT>/workbook`` (kept while a cluster has groups in it)
    and checks that the kernel filled it with the quota files.
    """
    root = CGROUP_ROOT
    if not root.is_dir():
        return f"there is no cgroup v1 cpu controller at {root}"
    top = root / GROUP
    try:
        top.mkdir(exist_ok=True)
    except OSError as exc:
        return f"the cgroup v1 cpu controller at {root} is not writable by this user ({exc.strerror})"
    if not (top / "cpu.cfs_quota_us").is_file():
        with contextlib.suppress(OSError):
            top.rmdir()
        return f"{root} is not a cgroup v1 cpu controller (a new group there has no cpu.cfs_quota_us)"
    return None


def plan(cpus: float | None, names: list[str]) -> Plan:
    """How a budget of ``cpus`` per node can be enforced for the nodes ``names`` (in cluster order)."""
    if not cpus:
        return Plan(None, None)
    why = cgroup_unusable()
    if why is None:
        return Plan(cpus, "cgroup")
    cores = available_cores()
    if float(cpus).is_integer() and len(names) * int(cpus) <= len(cores):
        k = int(cpus)
        # from the last core down: when cores are left over, the first ones stay free for the caller
        return Plan(cpus, "affinity", {
            name: frozenset(cores[len(cores) - (i + 1) * k: len(cores) - i * k]) for i, name in enumerate(names)
        })  # fmt: skip
    if float(cpus).is_integer():
        short = (f"{len(cores)} core(s) are too few to pin {len(names)} node(s) to {cpus:g} whole core(s) each "
                 "with CPU affinity")  # fmt: skip
    else:
        short = f"CPU affinity can only give whole cores, not {cpus:g}"
    return Plan(cpus, "shared", {}, f"{why}, and {short}")


def _node_pids(postmaster: int) -> list[int]:
    """The postmaster and its children (never this process or one of its ancestors)."""
    own = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        own |= {p.pid for p in psutil.Process().parents()}
    pids = [postmaster]
    with contextlib.suppress(psutil.Error):
        pids += [c.pid for c in psutil.Process(postmaster).children()]
    return [p for p in pids if p not in own]


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _move(group: Path, pids: list[int]) -> None:
    """Write each pid into ``group``'s cgroup.procs (a process that exited meanwhile is skipped)."""
    for pid in pids:
        try:
            _write(group / "cgroup.procs", str(pid))
        except ProcessLookupError:
            continue


def _set_affinity(pids: list[int], cores: set[int] | frozenset[int]) -> None:
    for pid in pids:
        try:
            if os.sched_getaffinity(pid) != cores:
                os.sched_setaffinity(pid, cores)
        except ProcessLookupError:
            continue


def enforce(p: Plan, home: Path, name: str, postmaster: int | None) -> tuple[How | None, str | None]:
    """Give a running node the budget ``p`` plans for it (and take away any other it had).

    The postmaster moves first, then its children: a backend forked meanwhile inherits the new
    group or affinity from the postmaster. Returns what was achieved and, for "shared", why.
    """
    group = node_group(home, name)
    if postmaster is None:
        return None, None
    how: How | None = p.how
    why = p.why
    if p.how == "cgroup" and p.cpus:
        try:
            _set_affinity(_node_pids(postmaster), set(available_cores()))
            group.mkdir(parents=True, exist_ok=True)
            _write(group / "cpu.cfs_period_us", str(PERIOD_US))
            _write(group / "cpu.cfs_quota_us", str(max(1000, round(p.cpus * PERIOD_US))))
            _move(group, [postmaster])
            _move(group, _node_pids(postmaster))
            return how, why
        except OSError as exc:
            how, why = "shared", f"node {name!r} could not be put in {group} ({exc.strerror})"
    _leave_group(group)
    cores = p.cores.get(name) if how == "affinity" else None
    try:
        _set_affinity(_node_pids(postmaster), set(cores or available_cores()))
    except OSError as exc:
        if cores:
            how, why = "shared", f"node {name!r} could not be pinned to cores {sorted(cores)} ({exc.strerror})"
    return how, why


def _leave_group(group: Path) -> None:
    """Move every process out of ``group`` (to the controller's root) and remove it."""
    if not group.is_dir():
        return
    with contextlib.suppress(OSError):
        _move(CGROUP_ROOT, [int(x) for x in (group / "cgroup.procs").read_text().split()])
    _rmdir(group)


def _rmdir(group: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup; retried while the kernel still counts processes that have just exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return
        time.sleep(0.02)


def release(home: Path, name: str) -> None:
    """Remove a node's cgroup (its processes have exited; any still there move out first)."""
    _leave_group(node_group(home, name))


def release_all(home: Path) -> None:
    """Remove every cgroup of the cluster at ``home``, and the ``workbook`` folder when it is empty."""
    group = home_group(home)
    if group.is_dir():
        for child in group.iterdir():
            if child.is_dir():
                _leave_group(child)
        _rmdir(group)
    with contextlib.suppress(OSError):
        (CGROUP_ROOT / GROUP).rmdir()  # other clusters' groups keep it (ENOTEMPTY/EBUSY)


def read_budget(home: Path, name: str, postmaster: int | None, configured: float | None) -> CpuBudget | None:
    """The budget a running node really has, read from its cgroup files and its postmaster's affinity.

    A cgroup quota when the postmaster is in the node's group; else its CPU affinity when that is
    narrower than this process's; else "shared" when a budget is configured; else None.
    """
    if postmaster is None:
        return None
    group = node_group(home, name)
    try:
        if str(postmaster) in (group / "cgroup.procs").read_text().split():
            quota = int((group / "cpu.cfs_quota_us").read_text())
            period = int((group / "cpu.cfs_period_us").read_text())
            if quota > 0 and period > 0:
                return CpuBudget(round(quota / period, 3), "cgroup")
    except (OSError, ValueError):
        pass
    try:
        cores = os.sched_getaffinity(postmaster)
        if len(cores) < len(available_cores()):
            return CpuBudget(float(len(cores)), "affinity")
    except OSError:
        pass
    return CpuBudget(configured, "shared") if configured else None
