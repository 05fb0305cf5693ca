"""The cores the detectors may use: affinity capped by a cgroup CPU quota (detector/cores.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from detector import cores
from detector.cores import available_cores, cgroup_cpu_quota

V1_MOUNTINFO = (
    "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
    "31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
)
V2_MOUNTINFO = "35 25 0:30 / {mount} rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2_tree(tmp_path: Path, own: str, limits: dict[str, str]) -> tuple[Path, Path]:
    """Make a cgroup2 mount under tmp_path with the ``cpu.max`` line of each cgroup path in ``limits``."""
    mount = tmp_path / "cgroup"
    for path, line in limits.items():
        write(mount / path.lstrip("/") / "cpu.max", line)
    (mount / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    proc_cgroup, mountinfo = tmp_path / "cgroup.txt", tmp_path / "mountinfo.txt"
    write(proc_cgroup, f"0::{own}\n")
    write(mountinfo, V2_MOUNTINFO.format(mount=mount))
    return proc_cgroup, mountinfo


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(cores, "_affinity_cores", lambda: 8)


def test_v2_quota_rounds_up(tmp_path, eight_cores):
    proc_cgroup, mountinfo = v2_tree(tmp_path, "/app", {"/app": "150000 100000\n"})

    assert cgroup_cpu_quota(proc_cgroup, mountinfo) == 1.5
    assert available_cores(proc_cgroup, mountinfo) == 2


def test_v2_max_is_no_quota(tmp_path, eight_cores):
    proc_cgroup, mountinfo = v2_tree(tmp_path, "/app", {"/app": "max 100000\n"})

    assert cgroup_cpu_quota(proc_cgroup, mountinfo) is None
    assert available_cores(proc_cgroup, mountinfo) == 8


def test_quota_smallest_ancestor_wins(tmp_path, eight_cores):
    limits = {"/": "max 100000\n", "/pods": "100000 100000\n", "/pods/app": "400000 100000\n"}
    proc_cgroup, mountinfo = v2_tree(tmp_path, "/pods/app/worker", limits)

    assert cgroup_cpu_quota(proc_cgroup, mountinfo) == 1.0
    assert available_cores(proc_cgroup, mountinfo) == 1


def test_quota_below_one_cpu_gives_one(tmp_path, eight_cores):
    proc_cgroup, mountinfo = v2_tree(tmp_path, "/app", {"/app": "20000 100000\n"})

    assert available_cores(proc_cgroup, mountinfo) == 1


def test_quota_above_affinity_is_ignored(tmp_path, eight_cores):
    proc_cgroup, mountinfo = v2_tree(tmp_path, "/app", {"/app": "3200000 100000\n"})

    assert available_cores(proc_cgroup, mountinfo) == 8


def test_path_outside_mount_reads_mount_point(tmp_path, eight_cores):
    # In a cgroup namespace /proc/self/cgroup may show "/../.." while the mount point is the container's cgroup.
    proc_cgroup, mountinfo = v2_tree(tmp_path, "/", {"/": "200000 100000\n"})
    write(proc_cgroup, "0::/../../elsewhere\n")

    assert cgroup_cpu_quota(proc_cgroup, mountinfo) == 2.0


def test_v1_quota_from_cpu_controller(tmp_path, eight_cores):
    mount = tmp_path / "cpu,cpuacct"
    write(mount / "docker" / "abc" / "cpu.cfs_quota_us", "300000\n")
    write(mount / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    write(mount / "cpu.cfs_quota_us", "-1\n")
    write(mount / "cpu.cfs_period_us", "100000\n")
    proc_cgroup, mountinfo = tmp_path / "cgroup.txt", tmp_path / "mountinfo.txt"
    write(proc_cgroup, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    write(mountinfo, V1_MOUNTINFO.replace("/sys/fs/cgroup/cpu,cpuacct", str(mount)))

    assert cgroup_cpu_quota(proc_cgroup, mountinfo) == 3.0
    assert available_cores(proc_cgroup, mountinfo) == 3


def test_mount_point_escapes_are_undone(tmp_path, eight_cores):
    mount = tmp_path / "cgroup root"
    write(mount / "cpu.max", "100000 100000\n")
    proc_cgroup, mountinfo = tmp_path / "cgroup.txt", tmp_path / "mountinfo.txt"
    write(proc_cgroup, "0::/\n")
    write(mountinfo, V2_MOUNTINFO.format(mount=str(mount).replace(" ", "\\040")))

    assert available_cores(proc_cgroup, mountinfo) == 1


@pytest.mark.parametrize("line", ["", "garbage\n", "100000 0\n", "-5 100000\n", "abc 100000\n"])
def test_invalid_cpu_max_is_no_quota(tmp_path, eight_cores, line):
    proc_cgroup, mountinfo = v2_tree(tmp_path, "/app", {"/app": line})

    assert cgroup_cpu_quota(proc_cgroup, mountinfo) is None
    assert available_cores(proc_cgroup, mountinfo) == 8


def test_missing_proc_files_give_affinity(tmp_path, eight_cores):
    assert available_cores(tmp_path / "no-cgroup", tmp_path / "no-mountinfo") == 8


def test_available_cores_within_affinity():
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


def writable_cpu_cgroup() -> Path | None:
    """Return a writable cgroup directory whose children can take a CPU quota on this machine, if any."""
    for mount in cores._cpu_mounts(Path("/proc/self/mountinfo").read_text()):
        if mount.version == 2:
            controllers = (mount.mount_point / "cgroup.subtree_control")
            if controllers.exists() and "cpu" in controllers.read_text().split() and os.access(mount.mount_point, os.W_OK):
                return mount.mount_point
        elif os.access(mount.mount_point, os.W_OK):
            return mount.mount_point
    return None


def test_real_cgroup_quota_gives_one_core():
    parent = writable_cpu_cgroup()
    if parent is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs root, a cgroup CPU controller and two cores; this machine kind has all three")
    group = parent / f"fairuse-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if (group / "cpu.max").exists():
            (group / "cpu.max").write_text("100000 100000")
        else:
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text("100000")
        # The child moves itself into the cgroup, then reads its cores.
        code = (
            f"import sys; open({str(group / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid())); "
            "from detector.cores import available_cores, cgroup_cpu_quota; "
            "print(available_cores(), cgroup_cpu_quota())"
        )
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

        assert output.split() == ["1", "1.0"]
    finally:
        group.rmdir()
