"""Run detectors in forked child processes, so a large batch uses more than one core.

A forked child shares the parent's prepared events copy-on-write, runs its
share of the detectors and sends back only the findings, which are small
next to the events. The parent runs one share itself meanwhile. This is the
``--processes`` option. By default detectors run in threads instead (see
``pipeline.run_detectors``): most of their work is now numpy sorting and
scanning, which releases the GIL, and threads need no fork.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from detector.detectors.base import Detector, Finding, detect_since
from detector.features import PreparedEvents

logger = logging.getLogger(__name__)

# CPU seconds each detector took on 1,015,041 simulated events (scripts/bench_score.py's
# file, one process, a 2-core VM). Only the proportions matter, and unknown reasons count 1.0.
# NOTE: measured before the array rewrite of key sharing, which now takes about 0.5 s, so
# the split gives the parent less work than these figures suggest.
DETECTOR_COST = {
    "key_sharing": 1.2,
    "abnormal_cost": 0.65,
    "automation": 0.78,
    "anomaly": 0.33,
    "image_quota": 0.02,
}


class DetectorProcessError(RuntimeError):
    """Raised in the parent when a detector failed or died in a child process."""


@dataclass(slots=True)
class _Child:
    pid: int
    read_fd: int
    positions: list[int]


def can_fork() -> bool:
    """Return True when this process can fork safely: ``os.fork`` exists and no other Python thread runs.

    A thread alive at fork time may hold a lock that the child then waits on forever.

    NOTE: threads started outside Python, such as Arrow's and OpenBLAS's pools,
    are not counted. Forking after Arrow has read the events worked in the
    tests and benchmarks, but no lock of those pools was checked.
    """
    return hasattr(os, "fork") and threading.active_count() == 1


def split_by_cost(detectors: Sequence[Detector], processes: int) -> list[list[int]]:
    """Split detector positions into at most ``processes`` groups of about equal ``DETECTOR_COST``.

    Greedy: the costliest detector goes to the cheapest group so far. Groups
    keep the detectors in their given order, and empty groups are dropped.
    """
    groups: list[list[int]] = [[] for _ in range(max(processes, 1))]
    loads = [0.0] * len(groups)
    by_cost = sorted(range(len(detectors)), key=lambda position: -DETECTOR_COST.get(detectors[position].reason, 1.0))
    for position in by_cost:
        cheapest = loads.index(min(loads))
        groups[cheapest].append(position)
        loads[cheapest] += DETECTOR_COST.get(detectors[position].reason, 1.0)
    return [sorted(group) for group in groups if group]


def detect_in_processes(
    detectors: Sequence[Detector], prepared: PreparedEvents, processes: int = 2, since: float | None = None
) -> list[list[Finding]]:
    """Return each detector's findings, in detector order, computed over ``processes`` processes.

    The parent runs the first group of ``split_by_cost`` and forks one child
    per other group. A detector that raises in a child, or a child that dies,
    raises ``DetectorProcessError`` here with the child's traceback or exit
    status. The caller checks ``can_fork`` first. ``since`` goes to every
    detector (see ``detect_since``).
    """
    groups = split_by_cost(detectors, processes)
    children: list[_Child] = []
    results: dict[int, list[Finding]] = {}
    try:
        for group in groups[1:]:
            children.append(_fork_child(detectors, prepared, group, since))
        for position in groups[0]:
            results[position] = detect_since(detectors[position], prepared, since)
        for child in children:
            results.update(_collect(child, detectors))
    finally:
        for child in children:
            _reap(child)
    return [results[position] for position in range(len(detectors))]


def _fork_child(
    detectors: Sequence[Detector], prepared: PreparedEvents, positions: list[int], since: float | None
) -> _Child:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns from here
        os.close(read_fd)
        _run_child(detectors, prepared, positions, since, write_fd)
    os.close(write_fd)
    return _Child(pid, read_fd, positions)


def _run_child(
    detectors: Sequence[Detector], prepared: PreparedEvents, positions: list[int], since: float | None, write_fd: int
) -> None:
    """Run the detectors at ``positions`` and write ``(findings by position, error text)`` to ``write_fd``.

    The child ends with ``os._exit``, so it never runs the parent's exit
    handlers or closes the parent's database connections.
    """
    status = 0
    try:
        try:
            findings = {position: detect_since(detectors[position], prepared, since) for position in positions}
            # Pickled before writing, so a finding that cannot be pickled is reported like a failed detector.
            payload = pickle.dumps((findings, None), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:  # noqa: BLE001 - every failure is sent to the parent
            payload = pickle.dumps((None, traceback.format_exc()), protocol=pickle.HIGHEST_PROTOCOL)
            status = 1
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
    except BaseException:  # noqa: BLE001 - the parent sees the exit status
        status = 2
    finally:
        os._exit(status)


def _collect(child: _Child, detectors: Sequence[Detector]) -> dict[int, list[Finding]]:
    """Read one child's findings. Raise ``DetectorProcessError`` when it failed or sent no complete result."""
    names = ", ".join(detectors[position].reason for position in child.positions)
    with os.fdopen(child.read_fd, "rb") as pipe:
        child.read_fd = -1
        data = pipe.read()
    pid = child.pid
    _, status = os.waitpid(pid, 0)
    child.pid = 0
    # Exit status 0 or 1 follows a complete write. A child killed while writing leaves
    # truncated data, which is reported like no data.
    if not data or not _wrote_result(status):
        raise DetectorProcessError(
            f"the child process running {names} ended without a result ({_describe_status(status)}). "
            "It may have run out of memory: score in one process with `fairuse score --processes 1`"
        )
    findings, error = pickle.loads(data)
    if error is not None:
        raise DetectorProcessError(f"detector {names} failed in a child process:\n{error}")
    for position in findings:
        logger.debug("detector %s ran in child process %d", detectors[position].reason, pid)
    return findings


def _reap(child: _Child) -> None:
    """Close the pipe and end a child that is still running, after an error in the parent."""
    if child.read_fd >= 0:
        os.close(child.read_fd)
        child.read_fd = -1
    if child.pid:
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(child.pid, 0)
        child.pid = 0


def _wrote_result(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 1)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
