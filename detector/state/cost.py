"""abnormal_cost from per-subject state: minute spend of the last 24 hours, clock-bin baselines of 8 days, escalation per hour and window."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd

from detector.detectors.base import Finding
from detector.detectors.cost import HOUR_MINUTES, AbnormalCostDetector, Spend, WindowSpend, bins_frame, with_times
from detector.features.spend_bins import (
    MINUTES_PER_DAY,
    clock_bin_peak,
    clock_bin_spend,
    day_of_bin,
    minute_of,
    minute_spend,
    to_micro,
)
from detector.state.carried import SUBJECT_VALUES
from detector.state.chunk import Chunk, ChunkFindings, inexact_subjects
from detector.state.escalation import ESCALATION_VALUES, escalations_after
from detector.state.table import Columns, SubjectStates

# Row kinds of the carried state: a minute's spend, a clock hour's spend, a short-window clock bin's highest rolling spend.
MINUTE, HOUR_BIN, SHORT_BIN = 0, 1, 2
WINDOW_KINDS = ("rolling_hour", "short_window")
# Per-subject arrays (subject code, bin number, micro-credits), as the spend_bins functions return them.
Bins = tuple[np.ndarray, np.ndarray, np.ndarray]
# Clock-bin baselines read the 7 UTC days before an event's day, so the current day and 7 before are kept.
BASELINE_DAYS = 7


class AbnormalCostState:
    """Run ``AbnormalCostDetector`` chunk by chunk from carried spend bins.

    Per subject the state keeps, in micro-credits, the spend of each minute
    with requests in the last 24 hours. For the current UTC day and the 7
    before it, it keeps the spend per clock hour and the highest rolling
    short-window spend per short-window clock bin. The escalation steps of
    the current clock hour are kept per window kind. Over chunks of a time-sorted input,
    the findings equal those of the batch detector over the whole input,
    except for the subjects reported in ``ChunkFindings.inexact``.
    """

    def __init__(self, detector: AbnormalCostDetector) -> None:
        """``detector`` is the batch detector whose findings this state reproduces."""
        self.detector = detector
        escalation = {f"{kind}_{name}": spec for kind in WINDOW_KINDS for name, spec in ESCALATION_VALUES.items()}
        self._escalation_names = list(escalation)
        self.states = SubjectStates(
            values={**SUBJECT_VALUES, **escalation}, rows={"kind": "int8", "bin": "int64", "micro": "int64"}
        )

    def update(self, chunk: Chunk) -> ChunkFindings:
        """Return the findings of ``chunk``'s events and carry its spend bins on."""
        taken = self.states.take(chunk.keys)
        inexact = inexact_subjects(chunk, taken)
        carried = taken.rows
        stream = _minute_stream(chunk, carried)
        windows = self.detector.window_spend(stream.spend)

        new = stream.is_new
        short_minutes = self.detector.short_window_minutes()
        hour_bins = _merged_bins(
            carried, HOUR_BIN, clock_bin_spend(*_at(stream.spend, new), HOUR_MINUTES), clock_bin_spend
        )
        short_bins = _merged_bins(
            carried,
            SHORT_BIN,
            clock_bin_peak(stream.spend.subject[new], stream.spend.minute[new], windows.short[new], short_minutes),
            clock_bin_peak,
        )

        found, escalation = self._findings(chunk, stream, windows, hour_bins, short_bins, taken.values)
        last_ms = np.maximum(chunk.last_ms, taken.values["last_ms"])
        values = {**escalation, "last_ms": last_ms, "plan": chunk.plan_hash}
        rows = _kept_rows(minute_spend(*stream.spend), hour_bins, short_bins, short_minutes, last_ms)
        self.states.put(chunk.keys, values, rows)
        return ChunkFindings(findings=found, inexact=inexact)

    def _findings(
        self,
        chunk: Chunk,
        stream: _MinuteStream,
        windows: WindowSpend,
        hour_bins: Bins,
        short_bins: Bins,
        carried: Columns,
    ) -> tuple[list[Finding], Columns]:
        """Score the chunk's requests in ``stream`` and keep the escalations, per window kind, after the carried steps."""
        subjects = chunk.prepared.subjects
        subject = stream.spend.subject
        short_minutes = self.detector.short_window_minutes()
        scored = self.detector.score_windows(
            stream.spend,
            windows,
            subjects["hourly_budget"].to_numpy()[subject],
            subjects["daily_budget"].to_numpy()[subject],
            testable=stream.is_new,
            hour_bins=lambda positions: _bins_of(hour_bins, subject[positions], HOUR_MINUTES),
            short_bins=lambda positions: _bins_of(short_bins, subject[positions], short_minutes),
        )
        if scored.empty:
            # Most chunks flag no request, so they escalate nothing and build no further frames.
            return [], {name: carried[name].copy() for name in self._escalation_names}
        rows = with_times(scored, subject, stream.ts)

        kept, escalation = [], {}
        for kind in WINDOW_KINDS:
            steps = {name: carried[f"{kind}_{name}"] for name in ESCALATION_VALUES}
            of_kind = rows[(rows["kind"] == kind).to_numpy()]
            first, carry_on = escalations_after(of_kind, "hour", steps)
            kept.append(first)
            escalation.update({f"{kind}_{name}": values for name, values in carry_on.items()})
        rows = pd.concat(kept).sort_values("row", kind="stable")
        return self.detector.findings(chunk.prepared, rows), escalation


class _MinuteStream(NamedTuple):
    """Carried minute bins and the chunk's requests, sorted by subject then minute, a minute's bin before its requests.

    ``ts`` is NaN at carried bins, and ``is_new`` marks the requests.
    """

    spend: Spend
    ts: np.ndarray
    is_new: np.ndarray


def _minute_stream(chunk: Chunk, carried: Columns) -> _MinuteStream:
    minutes = carried["kind"] == MINUTE
    owner = carried["owner"][minutes]
    events = chunk.prepared.events
    subject = np.concatenate((owner, chunk.subject)).astype(np.int64)
    minute = np.concatenate((carried["bin"][minutes], minute_of(chunk.ts_ms)))
    micro = np.concatenate((carried["micro"][minutes], to_micro(events["cost"].to_numpy())))
    is_new = np.arange(len(subject)) >= len(owner)
    # A carried bin arrived before the chunk's requests of its minute; the requests keep their chunk order.
    order = np.lexsort((np.arange(len(subject)), is_new, minute, subject))
    ts = np.concatenate((np.full(len(owner), np.nan), chunk.ts))
    return _MinuteStream(Spend(subject[order], minute[order], micro[order]), ts[order], is_new[order])


def _at(spend: Spend, chosen: np.ndarray) -> Spend:
    return Spend(spend.subject[chosen], spend.minute[chosen], spend.micro[chosen])


def _merged_bins(carried: Columns, kind: int, new: Bins, reduce_per_bin: Callable[..., Bins]) -> Bins:
    """Return (subject, bin, value) of the carried bins of ``kind`` combined with ``new`` ones.

    ``reduce_per_bin`` is ``clock_bin_spend`` for sums or ``clock_bin_peak`` for maxima.
    """
    of_kind = carried["kind"] == kind
    subject = np.concatenate((carried["owner"][of_kind], new[0])).astype(np.int64)
    time_bin = np.concatenate((carried["bin"][of_kind], new[1]))
    value = np.concatenate((carried["micro"][of_kind], new[2]))
    order = np.lexsort((time_bin, subject))
    # Read as minutes with bins of 1 minute, the bin numbers reduce per (subject, bin).
    return reduce_per_bin(subject[order], time_bin[order], value[order], 1)


def _bins_of(bins: Bins, subjects: np.ndarray, bin_minutes: int) -> pd.DataFrame:
    """Return the active bins of ``subjects`` as ``score_windows`` reads them; its baseline lookup holds only those subjects."""
    chosen = np.isin(bins[0], subjects)
    return bins_frame(bins[0][chosen], bins[1][chosen], bins[2][chosen], bin_minutes)


def _kept_rows(minutes: Bins, hour_bins: Bins, short_bins: Bins, short_minutes: int, last_ms: np.ndarray) -> Columns:
    """Return the rows a later request can still read, sorted by owner: minutes of its last 24 hours, bins of 8 days."""
    last_minute = minute_of(last_ms)
    last_day = last_minute // MINUTES_PER_DAY
    parts = []
    for kind, (subject, time_bin, value), keep in (
        (MINUTE, minutes, lambda s, b: b > last_minute[s] - MINUTES_PER_DAY),
        (HOUR_BIN, hour_bins, lambda s, b: day_of_bin(b, HOUR_MINUTES) >= last_day[s] - BASELINE_DAYS),
        (SHORT_BIN, short_bins, lambda s, b: day_of_bin(b, short_minutes) >= last_day[s] - BASELINE_DAYS),
    ):
        chosen = keep(subject, time_bin)
        parts.append((np.full(int(chosen.sum()), kind, np.int8), subject[chosen], time_bin[chosen], value[chosen]))
    kinds, owner, time_bin, value = (np.concatenate(column) for column in zip(*parts))
    order = np.argsort(owner, kind="stable")
    return {"owner": owner[order], "kind": kinds[order], "bin": time_bin[order], "micro": value[order]}
