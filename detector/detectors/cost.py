"""abnormal_cost: spend against the key's own robust baseline and the plan's budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detector.detectors.base import Finding, escalations, findings_from_rows
from detector.features import PreparedEvents

HOUR = 3600.0
DAY = 86400.0
# Consistency constant that turns a MAD into a standard deviation for normal data.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class AbnormalCostDetector:
    """Flag rolling-hour spend far above the key's baseline, and spend over the plan's budget.

    The baseline of a day is the median and MAD of the key's active hours
    (hours with any spend) in the seven days before it, so spend that grows a
    little every day moves its own baseline along. A spike needs all of:
    ``min_ratio`` times the baseline median, ``min_z`` robust standard deviations
    above it, ``min_peak_ratio`` times the key's own busy-hour spend (the 95th
    percentile of its active hours), and at least ``min_budget_share`` of the
    plan's hourly budget. Human use is bursty, so the median alone would call
    every busy afternoon a spike; the busy-hour test keeps those out.
    Keys with fewer than ``min_history_hours`` active hours have no baseline yet
    and are held to the plan's budgets only. The scale never falls below
    ``scale_floor_share`` of the median or ``budget_floor_share`` of the hourly
    budget, so a key whose MAD is 0 does not divide by zero or flag on a cent.
    """

    min_ratio: float = 8.0
    min_z: float = 6.0
    min_peak_ratio: float = 3.0
    peak_quantile: float = 0.95
    min_budget_share: float = 0.5
    min_history_hours: int = 6
    median_floor_share: float = 0.05
    scale_floor_share: float = 0.25
    budget_floor_share: float = 0.02
    reason: str = "abnormal_cost"
    version: str = "1"

    def detect(self, prepared: PreparedEvents) -> list[Finding]:
        events = prepared.events
        if events.empty:
            return []

        everything = np.ones(len(events), dtype=bool)
        cost = events["cost"].to_numpy()
        spend_1h = prepared.sum_in_window(cost, HOUR, everything)
        spend_24h = prepared.sum_in_window(cost, DAY, everything)

        baseline = self._baseline_per_event(events)
        subject = events["subject"].to_numpy()
        hourly_budget = prepared.subjects["hourly_budget"].to_numpy()[subject]
        daily_budget = prepared.subjects["daily_budget"].to_numpy()[subject]

        scored = self._score_events(spend_1h, spend_24h, baseline, hourly_budget, daily_budget)
        rows = self._escalations_per_subject_hour(events, scored)
        return findings_from_rows(
            prepared,
            rows,
            reason=self.reason,
            origin=f"{self.reason}/{self.version}",
            evidence_columns={
                "spend_1h": "spend_1h",
                "spend_24h": "spend_24h",
                "baseline_median": "median",
                "baseline_mad": "mad",
                "baseline_hours": "history_hours",
                "robust_z": "z",
                "ratio_to_baseline": "ratio",
                "baseline_busy_hour": "busy_hour",
                "ratio_to_busy_hour": "peak_ratio",
                "hourly_budget": "hourly_budget",
                "daily_budget": "daily_budget",
            },
            window="rolling 1h and 24h spend; baseline from active hours of the previous 7 days",
            thresholds={
                "min_ratio": self.min_ratio,
                "min_z": self.min_z,
                "min_peak_ratio": self.min_peak_ratio,
                "min_budget_share": self.min_budget_share,
                "min_history_hours": self.min_history_hours,
            },
        )

    def _baseline_per_event(self, events: pd.DataFrame) -> pd.DataFrame:
        """Return median, MAD, busy hour and history size of each event's subject for its day."""
        subject = events["subject"].to_numpy()
        hour = (events["ts"].to_numpy() // HOUR).astype(np.int64)
        day = hour // 24

        # Hourly spend per subject from the sorted events: one row per (subject, hour) run.
        run_start = np.ones(len(events), dtype=bool)
        run_start[1:] = (subject[1:] != subject[:-1]) | (hour[1:] != hour[:-1])
        starts = np.flatnonzero(run_start)
        hourly = pd.DataFrame(
            {
                "subject": subject[starts],
                "hour": hour[starts],
                "cost": np.add.reduceat(events["cost"].to_numpy(), starts) if len(starts) else [],
            }
        )
        hourly = hourly[hourly["cost"] > 0]
        hourly["day"] = hourly["hour"] // 24

        first_day = int(day.min()) if len(day) else 0
        days = np.unique(day)
        per_day = [self._baseline_for_day(hourly, int(value)) for value in days]
        baselines = pd.concat(per_day, ignore_index=True) if per_day else pd.DataFrame()

        # Gather by a dense (subject, day) index instead of merging per event.
        width = int(days.max()) - first_day + 1 if len(days) else 1
        lookup = np.full((int(subject.max()) + 1 if len(subject) else 0) * width, -1, dtype=np.int64)
        if len(baselines):
            slots = baselines["subject"].to_numpy() * width + (baselines["day"].to_numpy() - first_day)
            lookup[slots] = np.arange(len(baselines))
        rows = lookup[subject * width + (day - first_day)] if len(subject) else np.array([], dtype=np.int64)
        found = rows >= 0

        merged = pd.DataFrame(index=range(len(events)))
        for column in ("median", "mad", "peak"):
            values = np.full(len(events), np.nan)
            if len(baselines):
                values[found] = baselines[column].to_numpy()[rows[found]]
            merged[column] = values
        history = np.zeros(len(events), dtype=np.int64)
        if len(baselines):
            history[found] = baselines["history_hours"].to_numpy()[rows[found]]
        merged["history_hours"] = history
        return merged

    def _baseline_for_day(self, hourly: pd.DataFrame, day: int) -> pd.DataFrame:
        history = hourly[(hourly["day"] >= day - 7) & (hourly["day"] < day)]
        grouped = history.groupby("subject")["cost"]
        median = grouped.median()
        peak = grouped.quantile(self.peak_quantile)
        deviation = (history["cost"] - history["subject"].map(median)).abs()
        mad = deviation.groupby(history["subject"]).median()
        return pd.DataFrame(
            {
                "subject": median.index.to_numpy(),
                "day": day,
                "median": median.to_numpy(),
                "mad": mad.reindex(median.index).to_numpy(),
                "peak": peak.reindex(median.index).to_numpy(),
                "history_hours": grouped.size().reindex(median.index).to_numpy(),
            }
        )

    def _score_events(
        self,
        spend_1h: np.ndarray,
        spend_24h: np.ndarray,
        baseline: pd.DataFrame,
        hourly_budget: np.ndarray,
        daily_budget: np.ndarray,
    ) -> pd.DataFrame:
        has_history = baseline["history_hours"].to_numpy() >= self.min_history_hours
        median = np.maximum(
            baseline["median"].fillna(0).to_numpy(), self.median_floor_share * hourly_budget
        )
        scale = np.maximum.reduce(
            [
                MAD_TO_SIGMA * baseline["mad"].fillna(0).to_numpy(),
                self.scale_floor_share * median,
                self.budget_floor_share * hourly_budget,
            ]
        )
        z = (spend_1h - median) / scale
        ratio = spend_1h / median
        peak = np.maximum(baseline["peak"].fillna(0).to_numpy(), median)
        peak_ratio = spend_1h / peak
        spike = (
            has_history
            & (ratio >= self.min_ratio)
            & (z >= self.min_z)
            & (peak_ratio >= self.min_peak_ratio)
            & (spend_1h >= self.min_budget_share * hourly_budget)
        )

        with np.errstate(divide="ignore", invalid="ignore"):
            impact = np.maximum(
                np.where(hourly_budget > 0, spend_1h / hourly_budget, 0.0),
                np.where(daily_budget > 0, spend_24h / daily_budget, 0.0),
            )
        over_budget = impact >= 1.0

        # A spike scores by its ratio to the baseline (8x -> 50, 16x -> 75, 32x -> 100).
        # Spend over budget without a spike tops out at 70: heavy use, not a stolen key.
        # A key with no baseline yet has no spike test, so its budget score goes on
        # rising (10x the budget -> 75, 100x -> 100): a dormant key that suddenly
        # spends a hundred times its plan's budget looks exactly like a stolen one.
        spike_score = np.clip(25 * np.log2(np.maximum(ratio, 1)) - 25, 0, 100)
        budget_score = np.clip(50 + 20 * (impact - 1), 50, 70)
        with np.errstate(divide="ignore"):
            unknown_key_score = np.clip(50 + 25 * np.log10(np.maximum(impact, 1)), 50, 100)
        budget_score = np.where(has_history, budget_score, np.maximum(budget_score, unknown_key_score))
        score = np.maximum(np.where(spike, spike_score, 0), np.where(over_budget, budget_score, 0))

        # Only flagged events go on; a full-length frame would double peak memory.
        flagged = np.flatnonzero(spike | over_budget)
        columns = {
            "score": score,
            "impact": impact,
            "spend_1h": spend_1h,
            "spend_24h": spend_24h,
            "median": median,
            "mad": baseline["mad"].fillna(0).to_numpy(),
            "history_hours": baseline["history_hours"].to_numpy(),
            "z": z,
            "ratio": ratio,
            "busy_hour": peak,
            "peak_ratio": peak_ratio,
            "hourly_budget": hourly_budget,
            "daily_budget": daily_budget,
        }
        scored = pd.DataFrame({name: np.asarray(values)[flagged] for name, values in columns.items()})
        scored["row"] = flagged
        return scored

    def _escalations_per_subject_hour(self, events: pd.DataFrame, scored: pd.DataFrame) -> pd.DataFrame:
        """Keep, per subject and clock hour, the first flagged event and each escalation after it."""
        flagged = scored["row"].to_numpy()
        rows = scored.copy()
        rows["subject"] = events["subject"].to_numpy()[flagged]
        rows["ts"] = events["ts"].to_numpy()[flagged]
        rows["hour"] = (rows["ts"] // HOUR).astype(np.int64)

        rows = escalations(rows, ["subject", "hour"])
        rows["peak_spend_1h"] = rows["spend_1h"]
        rows["detected_at"] = rows["ts"]
        rows["window_start"] = rows["ts"] - HOUR
        rows["window_end"] = rows["ts"]
        return rows
