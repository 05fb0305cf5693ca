"""A worker's progress line (workers/progress.py)."""

from __future__ import annotations

import logging

from workers.consumer import BatchOutcome
from workers.progress import ProgressLog

logger = logging.getLogger("workers.test_progress")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def outcome(entries: int, events: int, dead: int = 0, decisions: int = 0) -> BatchOutcome:
    result = BatchOutcome()
    result.entries, result.events, result.dead, result.decisions = entries, events, dead, decisions
    return result


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger.name]


def test_progress_sums_batches_into_one_line(caplog):
    clock = Clock()
    progress = ProgressLog(logger, "state worker w0", interval=60, clock=clock)

    with caplog.at_level(logging.INFO, logger=logger.name):
        progress.add(outcome(10, 9, dead=1))
        progress.add(outcome(1990, 1990))
        clock.now = 30
        progress.add(outcome(5, 5, decisions=2))
        assert messages(caplog) == []
        clock.now = 61
        progress.add(outcome(1, 1))

    assert messages(caplog) == ["state worker w0: last 61 s: 2,006 entries, 2,005 events, 1 dead-lettered, 2 new decisions"]


def test_progress_restarts_counts_after_a_line(caplog):
    clock = Clock()
    progress = ProgressLog(logger, "consumer c1", interval=60, clock=clock)

    with caplog.at_level(logging.INFO, logger=logger.name):
        clock.now = 60
        progress.add(outcome(4, 4))
        clock.now = 125
        progress.add(outcome(2, 3))

    assert messages(caplog) == [
        "consumer c1: last 60 s: 4 entries, 4 events, 0 dead-lettered, 0 new decisions",
        "consumer c1: last 65 s: 2 entries, 3 events, 0 dead-lettered, 0 new decisions",
    ]


def test_progress_silent_while_idle(caplog):
    clock = Clock()
    progress = ProgressLog(logger, "consumer c1", interval=60, clock=clock)

    with caplog.at_level(logging.INFO, logger=logger.name):
        for second in range(0, 600, 5):
            clock.now = second
            progress.add(outcome(0, 0))

    assert messages(caplog) == []
