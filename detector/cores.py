"""How many cores this process may use: its CPU affinity, lowered by a cgroup CPU quota.

A container limited to one CPU on a 16-core host still has 16 cores in its
affinity mask. Busy threads beyond the quota share its CPU time and are
paused together once each period's share is spent. Go's automaxprocs sets
GOMAXPROCS from the quota for this reason: its README reports a load
balancer under a 2-CPU quota serving 44,715 requests a second with 2
threads and 22,191 with the default of 24.

cgroup v2 keeps the quota in ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD"
for none), cgroup v1 in ``cpu.cfs_quota_us`` (-1 for none) and
``cpu.cfs_period_us``. A quota on any ancestor of the process's cgroup
limits it as well, so the smallest one on the way to the mount's root
holds. Where the files cannot be read, only the affinity counts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """A mounted cgroup hierarchy: where it is mounted, and which cgroup its mount point shows."""

    version: int
    mount_point: Path
    root: PurePosixPath


def available_cores(proc_cgroup: Path = PROC_CGROUP, mountinfo: Path = PROC_MOUNTINFO) -> int:
    """Return the cores this process may keep busy: affinity, capped by a cgroup quota rounded up."""
    visible = _affinity_cores()
    quota = cgroup_cpu_quota(proc_cgroup, mountinfo)
    if quota is None:
        return visible
    return max(1, min(visible, math.ceil(quota)))


def cgroup_cpu_quota(proc_cgroup: Path = PROC_CGROUP, mountinfo: Path = PROC_MOUNTINFO) -> float | None:
    """Return the smallest CPU quota, in CPUs, on this process's cgroup and its ancestors; None if none is set."""
    try:
        memberships = _memberships(proc_cgroup.read_text())
        mounts = _cpu_mounts(mountinfo.read_text())
    except OSError:
        return None

    quotas = []
    for mount in mounts:
        path = memberships.get(mount.version)
        if path is None:
            continue
        quotas.extend(_quotas_on_the_way_up(mount, path))
    return min(quotas, default=None)


def _affinity_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _memberships(text: str) -> dict[int, PurePosixPath]:
    """Return this process's cgroup path in the v2 hierarchy and in the v1 hierarchy holding ``cpu``.

    Each line of /proc/self/cgroup reads ``ID:CONTROLLERS:PATH``; the v2 line is ``0::PATH``.
    """
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        number, controllers, path = parts
        if number == "0" and controllers == "":
            paths[2] = PurePosixPath(path)
        elif "cpu" in controllers.split(","):
            paths[1] = PurePosixPath(path)
    return paths


def _cpu_mounts(text: str) -> list[CgroupMount]:
    """Return the cgroup2 mounts and the cgroup v1 mounts of the ``cpu`` controller from mountinfo.

    A mountinfo line reads ``ID PARENT DEVICE ROOT MOUNT_POINT OPTIONS [TAGS] - TYPE SOURCE SUPER_OPTIONS``.
    """
    mounts = []
    for line in text.splitlines():
        fields, _, tail = line.partition(" - ")
        before, after = fields.split(), tail.split()
        if len(before) < 5 or len(after) < 3:
            continue
        root, mount_point = _unescape(before[3]), _unescape(before[4])
        if after[0] == "cgroup2":
            mounts.append(CgroupMount(2, Path(mount_point), PurePosixPath(root)))
        elif after[0] == "cgroup" and "cpu" in after[2].split(","):
            mounts.append(CgroupMount(1, Path(mount_point), PurePosixPath(root)))
    return mounts


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes of space, tab, newline and backslash."""
    for code, character in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, character)
    return field


def _quotas_on_the_way_up(mount: CgroupMount, path: PurePosixPath) -> Iterator[float]:
    """Yield the quota of every cgroup from ``path`` up to the mount's root that sets one."""
    try:
        relative = path.relative_to(mount.root)
    except ValueError:
        relative = PurePosixPath("..")
    if ".." in relative.parts:
        # Inside a cgroup namespace the path may lie outside the mount's root: the mount point is then the cgroup.
        relative = PurePosixPath()
    directory = mount.mount_point / relative
    while True:
        quota = _read_quota(directory, mount.version)
        if quota is not None:
            yield quota
        if directory == mount.mount_point or directory.parent == directory:
            return
        directory = directory.parent


def _read_quota(directory: Path, version: int) -> float | None:
    """Return the quota set in ``directory`` in CPUs, or None when none is set or it cannot be read."""
    try:
        if version == 2:
            quota, period = (directory / "cpu.max").read_text().split()[:2]
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1"):
        return None
    try:
        cpus = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return cpus if cpus > 0 else None
