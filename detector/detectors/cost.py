"""abnormal_cost: spend against the key's own robust baseline and the plan's budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from detector.detectors.base import Finding, at_or_after, escalations, findings_from_rows, from_period_start
from detector.detectors.cost_baseline import Columns, baseline_per_event
from detector.features import PreparedEvents
from detector.features.spend_bins import (
    MICRO,
    MINUTES_PER_DAY,
    clock_bin_peak,
    clock_bin_spend,
    day_of_bin,
    minute_of,
    rolling_spend,
    to_micro,
)

HOUR = 3600.0
HOUR_MINUTES = 60
# Consistency constant that turns a MAD into a standard deviation for normal data.
MAD_TO_SIGMA = 1.4826

_EVIDENCE = {
    "kind": "kind",
    "window_s": "window_s",
    "spend_window": "spend_window",
    "spend_short_window": "spend_short",
    "spend_1h": "spend_1h",
    "spend_24h": "spend_24h",
    "baseline_median": "median",
    "baseline_mad": "mad",
    "baseline_hours": "history_hours",
    "robust_z": "z",
    "ratio_to_baseline": "ratio",
    "baseline_busy_window": "busy",
    "ratio_to_busy_window": "peak_ratio",
    "hourly_budget": "hourly_budget",
    "daily_budget": "daily_budget",
}


class WindowSpend(NamedTuple):
    """Per row, the rolling spend in micro-credits of the short window, the hour and the day."""

    short: np.ndarray
    hour: np.ndarray
    day: np.ndarray


class Spend(NamedTuple):
    """Per event, sorted by subject then time: subject code, UTC minute and cost in micro-credits."""

    subject: np.ndarray
    minute: np.ndarray
    micro: np.ndarray


@dataclass(frozen=True, slots=True)
class AbnormalCostDetector:
    """Flag spend far above the key's own baseline, and spend over the plan's budget.

    Two windows are tested at every request. The *rolling hour* compares the
    spend of the trailing hour with the key's active hours (hours with any
    spend) in the seven UTC days before the request's day. Spend that grows a
    little every day therefore moves its own baseline along. The *short
    window* compares the spend of the trailing ``short_window`` seconds with
    the key's active bins of that length over the same days, where a bin
    counts the highest rolling spend inside it. A stolen key that spends a few
    times the hourly budget reaches the rolling hour's floors only after 5 to
    15 minutes, and the short window's within a few.

    A spike in either window needs all of: ``min_ratio`` times the baseline
    median, ``min_z`` robust standard deviations above it, and
    ``min_peak_ratio`` times the key's own busy window (the ``peak_quantile``
    of its active bins). Human use is bursty, so the median alone would call
    every busy afternoon a spike; the busy-window test keeps those out. The
    rolling hour also needs at least ``min_budget_share`` of the plan's
    hourly budget. The short window needs a spend rate of at least
    ``min_short_rate_share`` times the hourly budget's rate. Its impact is
    that rate as a share of the hourly budget, so a key spending at three
    times the budget's rate has impact 3 before the hour has passed. Policy
    selects findings of one window by their evidence ``kind``
    (``rolling_hour`` or ``short_window``).

    Keys with fewer than ``min_history_hours`` active hours have no baseline
    yet and are held to the plan's budgets only. The median never falls below
    ``median_floor_share`` of the budget for the window's length, and the
    scale never below ``scale_floor_share`` of the median or
    ``budget_floor_share`` of that budget, so a key whose MAD is 0 does not
    divide by zero or flag on a cent.

    Costs are read as integer micro-credits (``spend_bins.to_micro``), so
    every sum is exact and a subject's figures depend on its own requests
    alone. Windows run on whole UTC minutes: a window of ``W`` minutes at a
    request is the ``W - 1`` whole minutes before the request's minute plus
    that minute up to and including the request. Baseline bins are clock
    hours and clock bins of ``short_window``, which must be a whole number of
    minutes that divides a day. An incremental caller therefore needs, per
    subject, its spend per minute of the last 24 hours (the current minute's
    running sum included). For the baselines it needs the spend per clock
    hour and the highest rolling short-window spend per short-window clock
    bin, both for the current UTC day and the 7 before it (8 days). For the
    escalations it needs, per clock hour and window kind, the score and
    impact steps reached so far (``escalations``). The functions in
    ``detector.features.spend_bins`` take such bins in place of requests.
    """

    min_ratio: float = 8.0
    min_z: float = 6.0
    min_peak_ratio: float = 3.0
    peak_quantile: float = 0.95
    min_budget_share: float = 0.5
    min_history_hours: int = 4
    median_floor_share: float = 0.05
    scale_floor_share: float = 0.25
    budget_floor_share: float = 0.02
    short_window: float = 600.0
    min_short_rate_share: float = 1.5
    reason: str = "abnormal_cost"
    version: str = "3"

    def __post_init__(self) -> None:
        minutes = self.short_window / 60
        if minutes < 1 or minutes != int(minutes) or MINUTES_PER_DAY % int(minutes):
            raise ValueError(
                f"invalid short_window {self.short_window} s: use a whole number of minutes that divides a day, such as 600"
            )

    def short_window_minutes(self) -> int:
        return int(self.short_window // 60)

    def detect(self, prepared: PreparedEvents, since: float | None = None) -> list[Finding]:
        """Return the findings, or with ``since`` those detected from ``since`` on (see ``Detector``).

        Findings escalate per clock hour, so with ``since`` the requests from
        the start of the hour holding it are tested. Each test reads only the
        requests up to the one tested and the baseline of the days before, so
        the earlier requests are context.
        """
        events = prepared.events
        if events.empty:
            return []

        subject = events["subject"].to_numpy()
        spend = Spend(subject, minute_of(events["ts_ms"].to_numpy()), to_micro(events["cost"].to_numpy()))
        windows = self.window_spend(spend)
        ts = events["ts"].to_numpy()
        short_minutes = self.short_window_minutes()
        scored = self.score_windows(
            spend,
            windows,
            prepared.subjects["hourly_budget"].to_numpy()[subject],
            prepared.subjects["daily_budget"].to_numpy()[subject],
            testable=from_period_start(ts, since, HOUR),
            hour_bins=lambda positions: _involved_bins(spend, HOUR_MINUTES, positions),
            short_bins=lambda positions: _involved_bins(spend, short_minutes, positions, windows.short),
        )
        rows = at_or_after(escalations(with_times(scored, subject, ts), ["subject", "hour", "kind"]), since)
        return self.findings(prepared, rows)

    def window_spend(self, spend: Spend) -> WindowSpend:
        """Return the rolling spend of the short window, the hour and the day at each row of ``spend``."""
        return WindowSpend(
            short=rolling_spend(*spend, self.short_window_minutes()),
            hour=rolling_spend(*spend, HOUR_MINUTES),
            day=rolling_spend(*spend, MINUTES_PER_DAY),
        )

    def score_windows(
        self,
        spend: Spend,
        windows: WindowSpend,
        hourly_budget: np.ndarray,
        daily_budget: np.ndarray,
        *,
        testable: np.ndarray | None,
        hour_bins: Callable[[np.ndarray], Columns],
        short_bins: Callable[[np.ndarray], Columns],
    ) -> pd.DataFrame:
        """Score both windows at the rows of ``spend`` that ``testable`` marks (all without it); return the flagged rows.

        ``hour_bins`` and ``short_bins`` return, for the row positions they
        get, the active clock bins (``subject``, ``day``, ``cost`` in
        micro-credits) of at least those rows' subjects: the hour's spend, and
        the short window's highest rolling spend. The budgets are per row. The
        result has one row per flagged row and window, sorted by ``row`` (the
        position in ``spend``).
        """
        spend_short = windows.short / MICRO
        spend_1h = windows.hour / MICRO
        spend_24h = windows.day / MICRO
        hour_candidates, short_candidates = self._candidates(
            spend_short, spend_1h, spend_24h, hourly_budget, daily_budget, testable=testable
        )

        # The hour baseline also gives the short window its history size. Both candidate arrays are
        # sorted positions, so a mask joins them without np.union1d's sort of a million rows.
        marked = np.zeros(len(spend.subject), dtype=bool)
        marked[hour_candidates] = True
        marked[short_candidates] = True
        hour_positions = np.flatnonzero(marked)
        del marked
        hour_baseline = self._baseline_per_event(spend, hour_bins(hour_positions), hour_positions)
        history_hours = hour_baseline["history_hours"]
        at_hour_candidates = np.searchsorted(hour_positions, hour_candidates)
        rolling_hour = self._score_rolling_hour(
            spend_1h[hour_candidates],
            spend_24h[hour_candidates],
            {name: values[at_hour_candidates] for name, values in hour_baseline.items()},
            hourly_budget[hour_candidates],
            daily_budget[hour_candidates],
        )
        rolling_hour["row"] = hour_candidates[rolling_hour["row"]]
        del hour_baseline

        short_baseline = self._baseline_per_event(spend, short_bins(short_candidates), short_candidates)
        short_window = self._score_short_window(
            spend_short[short_candidates],
            spend_1h[short_candidates],
            spend_24h[short_candidates],
            short_baseline,
            history_hours[np.searchsorted(hour_positions, short_candidates)],
            hourly_budget[short_candidates],
            daily_budget[short_candidates],
        )
        short_window["row"] = short_candidates[short_window["row"]]
        del short_baseline

        # A row flagged by both windows lists the rolling hour first. The index is the position before sorting.
        scored = {name: np.concatenate((rolling_hour[name], short_window[name])) for name in rolling_hour}
        order = np.argsort(scored["row"], kind="stable")
        scored = {name: values[order] for name, values in scored.items()}
        flagged = scored["row"]
        scored["history_hours"] = history_hours[np.searchsorted(hour_positions, flagged)]
        for name, values in (
            ("spend_short", spend_short), ("spend_1h", spend_1h), ("spend_24h", spend_24h),
            ("hourly_budget", hourly_budget), ("daily_budget", daily_budget),
        ):
            scored[name] = values[flagged]
        return pd.DataFrame(scored, index=order)

    def _candidates(
        self,
        spend_short: np.ndarray,
        spend_1h: np.ndarray,
        spend_24h: np.ndarray,
        hourly_budget: np.ndarray,
        daily_budget: np.ndarray,
        *,
        testable: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the positions of the rows that the rolling hour and the short window can flag, among those ``testable`` marks.

        The spends are in credits. Baselines and measures are computed only at
        these rows: every test is per row, and most rows are far below both
        windows' budget floors.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            impact_1h = np.maximum(
                np.where(hourly_budget > 0, spend_1h / hourly_budget, 0.0),
                np.where(daily_budget > 0, spend_24h / daily_budget, 0.0),
            )
            window_budget = hourly_budget * (self.short_window / HOUR)
            rate_share = np.where(window_budget > 0, spend_short / window_budget, 0.0)
        del window_budget
        # A rolling-hour spike needs min_budget_share of the hourly budget; over budget needs impact 1.
        hour_flagged = (spend_1h >= self.min_budget_share * hourly_budget) | (impact_1h >= 1.0)
        short_flagged = rate_share >= self.min_short_rate_share
        if testable is not None:
            hour_flagged &= testable
            short_flagged &= testable
        return np.flatnonzero(hour_flagged), np.flatnonzero(short_flagged)

    def findings(self, prepared: PreparedEvents, rows: pd.DataFrame) -> list[Finding]:
        """Build the findings of the escalation rows ``rows`` (see ``with_times``), whose subjects are codes of ``prepared``."""
        return findings_from_rows(
            prepared,
            rows,
            reason=self.reason,
            origin=f"{self.reason}/{self.version}",
            evidence_columns=_EVIDENCE,
            window=(
                f"rolling 1h and {self.short_window / 60:g} min spend (window_s), each against the key's active "
                "windows of that length in the previous 7 days; rolling 24h spend"
            ),
            thresholds={
                "min_ratio": self.min_ratio,
                "min_z": self.min_z,
                "min_peak_ratio": self.min_peak_ratio,
                "min_budget_share": self.min_budget_share,
                "min_history_hours": self.min_history_hours,
                "short_window_s": self.short_window,
                "min_short_rate_share": self.min_short_rate_share,
            },
        )

    def _baseline_per_event(self, spend: Spend, binned: Columns, positions: np.ndarray) -> Columns:
        """Return median, MAD, busy bin (credits) and history size of the subject of each event at ``positions``, for its day.

        The statistics are over the subject's active clock bins in ``binned``
        (``subject``, ``day`` and ``cost`` in micro-credits) of the seven UTC
        days before the event's day.
        """
        return baseline_per_event(spend.subject[positions], spend.minute[positions], binned, self.peak_quantile)

    def _spike_measures(self, spend: np.ndarray, baseline: Columns, budget: np.ndarray) -> dict[str, np.ndarray]:
        """Return the robust measures of ``spend`` against ``baseline``, with floors from ``budget`` (the window's)."""
        median = np.maximum(np.nan_to_num(baseline["median"], nan=0.0), self.median_floor_share * budget)
        mad = np.nan_to_num(baseline["mad"], nan=0.0)
        scale = np.maximum.reduce(
            [MAD_TO_SIGMA * mad, self.scale_floor_share * median, self.budget_floor_share * budget]
        )
        busy = np.maximum(np.nan_to_num(baseline["peak"], nan=0.0), median)
        # A plan may set its budget to 0, and a key without history then has a median of 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = spend / median
            z = (spend - median) / scale
            peak_ratio = spend / busy
        return {
            "median": median,
            "mad": mad,
            "z": z,
            "ratio": ratio,
            "busy": busy,
            "peak_ratio": peak_ratio,
            # A spike scores by its ratio to the baseline (8x -> 50, 16x -> 75, 32x -> 100).
            "spike_score": np.clip(25 * np.log2(np.maximum(ratio, 1)) - 25, 0, 100),
        }

    def _is_spike(self, measures: dict[str, np.ndarray], history_hours: np.ndarray) -> np.ndarray:
        return (
            (history_hours >= self.min_history_hours)
            & (measures["ratio"] >= self.min_ratio)
            & (measures["z"] >= self.min_z)
            & (measures["peak_ratio"] >= self.min_peak_ratio)
        )

    def _score_rolling_hour(
        self,
        spend_1h: np.ndarray,
        spend_24h: np.ndarray,
        baseline: Columns,
        hourly_budget: np.ndarray,
        daily_budget: np.ndarray,
    ) -> Columns:
        """Score every event's rolling hour as a spike or as spend over budget; return the flagged events."""
        measures = self._spike_measures(spend_1h, baseline, hourly_budget)
        has_history = baseline["history_hours"] >= self.min_history_hours
        spike = self._is_spike(measures, baseline["history_hours"]) & (
            spend_1h >= self.min_budget_share * hourly_budget
        )

        with np.errstate(divide="ignore", invalid="ignore"):
            impact = np.maximum(
                np.where(hourly_budget > 0, spend_1h / hourly_budget, 0.0),
                np.where(daily_budget > 0, spend_24h / daily_budget, 0.0),
            )
        over_budget = impact >= 1.0

        # Spend over budget without a spike tops out at 70: heavy use, not a stolen key.
        # A key with no baseline yet has no spike test, so its budget score goes on
        # rising (10x the budget -> 75, 100x -> 100): a dormant key that suddenly
        # spends a hundred times its plan's budget looks exactly like a stolen one.
        budget_score = np.clip(50 + 20 * (impact - 1), 50, 70)
        with np.errstate(divide="ignore"):
            unknown_key_score = np.clip(50 + 25 * np.log10(np.maximum(impact, 1)), 50, 100)
        budget_score = np.where(has_history, budget_score, np.maximum(budget_score, unknown_key_score))
        score = np.maximum(np.where(spike, measures["spike_score"], 0), np.where(over_budget, budget_score, 0))
        return _flagged_rows(spike | over_budget, "rolling_hour", HOUR, spend_1h, score, impact, measures)

    def _score_short_window(
        self,
        spend_short: np.ndarray,
        spend_1h: np.ndarray,
        spend_24h: np.ndarray,
        baseline: Columns,
        history_hours: np.ndarray,
        hourly_budget: np.ndarray,
        daily_budget: np.ndarray,
    ) -> Columns:
        """Score every event's short window as a spike only; return the flagged events."""
        window_budget = hourly_budget * (self.short_window / HOUR)
        measures = self._spike_measures(spend_short, baseline, window_budget)
        with np.errstate(divide="ignore", invalid="ignore"):
            rate_share = np.where(window_budget > 0, spend_short / window_budget, 0.0)
            impact = np.maximum.reduce(
                [
                    rate_share,
                    np.where(hourly_budget > 0, spend_1h / hourly_budget, 0.0),
                    np.where(daily_budget > 0, spend_24h / daily_budget, 0.0),
                ]
            )
        spike = self._is_spike(measures, history_hours) & (rate_share >= self.min_short_rate_share)
        return _flagged_rows(
            spike, "short_window", self.short_window, spend_short, measures["spike_score"], impact, measures
        )


def with_times(scored: pd.DataFrame, subject: np.ndarray, ts: np.ndarray) -> pd.DataFrame:
    """Add subject, time, clock hour and window bounds to the rows of ``score_windows``; ``subject`` and ``ts`` are per input row.

    Findings escalate per subject, clock hour and window ``kind``. Each window
    escalates on its own, so the short window's early findings never hide a
    later rolling-hour finding that policy enforces.
    """
    flagged = scored["row"].to_numpy()
    rows = scored.copy()
    rows["subject"] = subject[flagged]
    rows["ts"] = ts[flagged]
    rows["hour"] = (rows["ts"] // HOUR).astype(np.int64)
    rows["detected_at"] = rows["ts"]
    rows["window_start"] = rows["ts"] - rows["window_s"]
    rows["window_end"] = rows["ts"]
    return rows


def _involved_bins(spend: Spend, bin_minutes: int, positions: np.ndarray, rolling: np.ndarray | None = None) -> Columns:
    """Return the active clock bins of the subjects of the events at ``positions`` (see ``active_bins``).

    A bin's value is its spend, or with ``rolling`` (a rolling spend in
    micro-credits per event) the highest rolling spend at an event inside it.
    Only these subjects get bins, because each subject's statistics depend on
    its own events alone.
    """
    # Events are sorted by subject, so keeping whole subjects keeps each (subject, bin) one run.
    involved = np.isin(spend.subject, np.unique(spend.subject[positions]))
    values = spend.micro if rolling is None else rolling
    return active_bins(
        spend.subject[involved], spend.minute[involved], values[involved], bin_minutes, peak=rolling is not None
    )


def active_bins(
    subject: np.ndarray, minute: np.ndarray, values: np.ndarray, bin_minutes: int, *, peak: bool
) -> Columns:
    """Return subject, day and value (``cost``, micro-credits) of each clock bin with spend: its sum, or with ``peak`` its highest value."""
    bin_values = clock_bin_peak if peak else clock_bin_spend
    bin_subject, time_bin, value = bin_values(subject, minute, values, bin_minutes)
    return bins_frame(bin_subject, time_bin, value, bin_minutes)


def bins_frame(bin_subject: np.ndarray, time_bin: np.ndarray, value: np.ndarray, bin_minutes: int) -> Columns:
    """Return the clock bins whose value is above 0 (the active ones) as ``subject``, ``day`` and ``cost``."""
    active = value > 0
    return {"subject": bin_subject[active], "day": day_of_bin(time_bin[active], bin_minutes), "cost": value[active]}


def _flagged_rows(
    flagged: np.ndarray,
    kind: str,
    window: float,
    spend: np.ndarray,
    score: np.ndarray,
    impact: np.ndarray,
    measures: dict[str, np.ndarray],
) -> Columns:
    """Return the columns of the flagged events only, because full-length columns would double peak memory."""
    rows = np.flatnonzero(flagged)
    columns = {
        "score": score,
        "impact": impact,
        "spend_window": spend,
        **{name: measures[name] for name in ("median", "mad", "z", "ratio", "busy", "peak_ratio")},
    }
    flagged_columns = {name: np.asarray(values)[rows] for name, values in columns.items()}
    flagged_columns["kind"] = np.full(len(rows), kind, dtype=object)
    flagged_columns["window_s"] = np.full(len(rows), window, dtype=np.float64)
    flagged_columns["row"] = rows
    return flagged_columns
