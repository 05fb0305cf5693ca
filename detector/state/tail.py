"""A partition's newest events, held back for a bounded lateness so that late ones among them are applied in time order.

The states (``StateScorer``) are exact only when each subject's events reach
them in time order. A gateway appends an event when its response ends, but
stamps it with the request's start, so about one event in seven reaches the
stream after a later-started event of its subject. ``EventTail`` holds every
event newer than the watermark, the partition's newest event time minus
``lateness`` seconds, and releases the older ones sorted by time. An event
that arrives at or after the watermark therefore finds its place among
the held events, and the states see every subject's events in order.

The price is latency. A finding is made when the event behind it is
released, ``lateness`` seconds of event time after the newest event, so
about that much wall-clock time later on a busy stream. Each event is still
applied once.

An event that arrives older than the watermark missed its place: it is
released at once, counted in ``Released.beyond_lateness``, and a state
reports its subject inexact when it is older than the subject's last
applied event, as without a tail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Seconds of event time an event may arrive after the partition's newest one and still be applied in order.
# Findings wait this long, so it bounds how fast a decision can follow the request that crossed a threshold.
# At one second a decision followed its request by 1.7 s at p95 at 10,000 events/s (docs/benchmarks.md).
# A larger lateness orders more of the late events and delays every decision by as much.
DEFAULT_LATENESS = 1.0


@dataclass(slots=True)
class Released:
    """The events to apply now, sorted by time (None if none), and how many of the added ones came later than ``lateness``."""

    frame: pd.DataFrame | None
    beyond_lateness: int


class EventTail:
    """The events of one partition that are newer than its watermark and not yet applied to its state.

    ``lateness`` is in seconds of event time. At 0 the tail holds nothing:
    ``add`` releases each frame as given, so every event is applied at once
    and a late one makes its subject inexact.
    """

    def __init__(self, lateness: float = DEFAULT_LATENESS) -> None:
        if not lateness >= 0:
            raise ValueError(f"lateness must be 0 or more seconds, got {lateness!r}")
        self.lateness = float(lateness)
        # The partition's newest event time seen, epoch seconds; None before the first event.
        self.newest: float | None = None
        # Frames of held events, each sorted by time, in the order they were added.
        self._held: list[pd.DataFrame] = []
        # The newest event time when ``release_all`` last ran: the watermark does not move back before it.
        self._released_until = -np.inf

    def __len__(self) -> int:
        return sum(len(part) for part in self._held)

    @property
    def watermark(self) -> float | None:
        """The time before which all added events have been released (epoch seconds), or None before the first event."""
        if self.newest is None:
            return None
        return max(self.newest - self.lateness, self._released_until)

    def add(self, frame: pd.DataFrame) -> Released:
        """Hold ``frame``'s events and release those older than the new watermark, with older held ones, sorted by time."""
        if frame.empty:
            return Released(None, 0)
        ts = frame["ts"].to_numpy()
        watermark = self.watermark
        beyond = 0 if watermark is None else int(np.count_nonzero(ts < watermark))
        newest = float(ts.max())
        self.newest = newest if self.newest is None else max(self.newest, newest)
        if self.lateness == 0 and not self._held:
            return Released(frame, beyond)

        self._held.append(frame.iloc[np.argsort(ts, kind="stable")])
        # At lateness 0 events held under an earlier lateness (from a checkpoint) all go, with the new ones.
        return Released(self._release(self.watermark if self.lateness else np.inf), beyond)

    def release_all(self) -> pd.DataFrame | None:
        """Release every held event, sorted by time, for a partition that has gone quiet.

        The watermark moves to the newest event, so an event older than
        that which arrives later counts as beyond the lateness.
        """
        if self.newest is not None:
            self._released_until = self.newest
        return self._release(np.inf)

    def _release(self, before: float) -> pd.DataFrame | None:
        released, kept = [], []
        for part in self._held:
            cut = int(np.searchsorted(part["ts"].to_numpy(), before, side="left"))
            if cut:
                released.append(part.iloc[:cut])
            if cut < len(part):
                kept.append(part.iloc[cut:])
        self._held = kept
        if not released:
            return None
        merged = pd.concat(released, ignore_index=True) if len(released) > 1 else released[0].reset_index(drop=True)
        # Each part is sorted, and a stable sort keeps events of equal time in the order they were added.
        return merged.iloc[np.argsort(merged["ts"].to_numpy(), kind="stable")].reset_index(drop=True)
