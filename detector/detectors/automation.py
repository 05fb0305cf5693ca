"""automation: machine-driven traffic, and whether its volume is more than the plan allows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detector.detectors.base import Finding, findings_from_rows
from detector.features import PreparedEvents

BUCKET = 600.0
HOUR = 3600.0
DAY = 86400.0
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class AutomationDetector:
    """Find machine-driven traffic at two speeds.

    *Load*: in each 10-minute bucket, a subject sending at least ``min_load``
    times its plan's expected rate with a machine signal: a regular cadence
    (robust CV of inter-arrival times under ``max_regular_cv``, with a median
    gap of at least ``min_regular_period`` seconds, because logs with
    one-second timestamps make any quick run of requests look even), one
    ``prompt_hash`` in at least ``min_repeat_share`` of requests, or
    ``min_parallel`` requests started within one second, at least
    ``min_parallel_waves`` times in the bucket (a browser opening one page
    fetches its assets in parallel once; a flood does it again and again).

    *Pattern*: over the whole input, requests collapsed into bursts (gaps under
    ``burst_gap`` seconds) that arrive on a clock (robust CV of the gaps under
    ``max_regular_cv``) or around the clock (at least ``min_active_hours`` of
    the 24 hours of the day, normalised hour entropy at least
    ``min_hour_entropy``). It needs ``min_bursts`` bursts. An hourly cron job is
    found here with an impact far below 1, so policy leaves it alone.
    """

    min_load: float = 1.0
    min_bucket_events: int = 20
    max_regular_cv: float = 0.25
    min_regular_period: float = 2.0
    min_repeat_share: float = 0.5
    min_parallel: int = 8
    min_parallel_waves: int = 3
    burst_gap: float = 10.0
    min_bursts: int = 12
    min_active_hours: int = 18
    min_hour_entropy: float = 0.85
    reason: str = "automation"
    version: str = "1"

    def detect(self, prepared: PreparedEvents) -> list[Finding]:
        if prepared.events.empty:
            return []
        return self._detect_load(prepared) + self._detect_pattern(prepared)

    def _thresholds(self) -> dict[str, float]:
        return {
            "min_load": self.min_load,
            "max_regular_cv": self.max_regular_cv,
            "min_regular_period": self.min_regular_period,
            "min_repeat_share": self.min_repeat_share,
            "min_parallel": self.min_parallel,
            "min_parallel_waves": self.min_parallel_waves,
            "min_bursts": self.min_bursts,
            "min_active_hours": self.min_active_hours,
            "min_hour_entropy": self.min_hour_entropy,
        }

    # Load: 10-minute buckets ------------------------------------------------

    def _detect_load(self, prepared: PreparedEvents) -> list[Finding]:
        events = prepared.events
        expected = prepared.subjects["expected_rph"].to_numpy()[events["subject"].to_numpy()]
        per_bucket = np.maximum(expected * BUCKET / HOUR, 1.0)

        subject = events["subject"].to_numpy()
        bucket = (events["ts"].to_numpy() // BUCKET).astype(np.int64)
        level = np.maximum(np.ceil(self.min_load * per_bucket), self.min_bucket_events)

        # Events are sorted by subject and time, so each (subject, bucket) is one run.
        run_start = np.ones(len(events), dtype=bool)
        run_start[1:] = (subject[1:] != subject[:-1]) | (bucket[1:] != bucket[:-1])
        run_lengths = np.diff(np.append(np.flatnonzero(run_start), len(events)))
        busy = np.repeat(run_lengths, run_lengths) >= level
        if not busy.any():
            return []

        parallel = prepared.count_in_window(1.0)[busy]
        frame = pd.DataFrame(
            {
                "subject": subject[busy],
                "bucket": bucket[busy],
                "ts": events["ts"].to_numpy()[busy],
                "iat": events["iat"].to_numpy()[busy],
                "prompt": events["prompt"].to_numpy()[busy],
                "latency_ms": events["latency_ms"].to_numpy()[busy],
                "parallel": parallel,
                "wave": parallel == self.min_parallel,
                "level": level[busy],
                "per_bucket": per_bucket[busy],
            }
        )
        buckets = self._bucket_signals(frame)
        buckets = buckets[buckets["machine"]]
        if buckets.empty:
            return []

        running = frame.groupby(["subject", "bucket"], sort=False).cumcount().to_numpy() + 1
        crossed = frame[running >= frame["level"].to_numpy()]
        detected = crossed.groupby(["subject", "bucket"], sort=False)["ts"].min()
        buckets = buckets.join(detected.rename("detected_at"), how="inner").reset_index()

        signals = buckets[["regular", "repeated", "parallel_burst"]].sum(axis=1)
        buckets["score"] = np.clip(45 + 15 * signals + 10 * np.log2(buckets["load"]), 0, 100)
        buckets["impact"] = buckets["load"]
        buckets["window_start"] = buckets["bucket"] * BUCKET
        buckets["window_end"] = buckets["window_start"] + BUCKET

        return findings_from_rows(
            prepared,
            buckets,
            reason=self.reason,
            origin=f"{self.reason}/{self.version}",
            evidence_columns={
                "kind": "kind",
                "requests_10m": "requests",
                "load_vs_plan": "load",
                "iat_robust_cv": "cv",
                "top_prompt_share": "repeat_share",
                "max_started_in_1s": "max_parallel",
                "parallel_waves": "parallel_waves",
                "mean_in_flight": "in_flight",
            },
            window="10-minute bucket",
            thresholds=self._thresholds(),
        )

    def _bucket_signals(self, frame: pd.DataFrame) -> pd.DataFrame:
        grouped = frame.groupby(["subject", "bucket"], sort=False)
        iat = frame["iat"]
        median = grouped["iat"].transform("median")
        deviation = (iat - median).abs()
        mad = deviation.groupby([frame["subject"], frame["bucket"]], sort=False).median()

        prompts = frame[frame["prompt"] >= 0]
        top_prompt = (
            prompts.groupby(["subject", "bucket", "prompt"], sort=False).size()
            .groupby(level=[0, 1]).max()
        )

        buckets = pd.DataFrame(
            {
                "requests": grouped.size(),
                "median_iat": grouped["iat"].median(),
                "mad_iat": mad,
                "max_parallel": grouped["parallel"].max(),
                "parallel_waves": grouped["wave"].sum(),
                "in_flight": grouped["latency_ms"].sum() / (BUCKET * 1000),
                "per_bucket": grouped["per_bucket"].first(),
            }
        )
        buckets["top_prompt"] = top_prompt.reindex(buckets.index).fillna(0)
        buckets["repeat_share"] = buckets["top_prompt"] / buckets["requests"]
        with np.errstate(divide="ignore", invalid="ignore"):
            buckets["cv"] = np.where(
                buckets["median_iat"] > 0,
                MAD_TO_SIGMA * buckets["mad_iat"] / buckets["median_iat"],
                np.inf,
            )
        buckets["load"] = buckets["requests"] / buckets["per_bucket"]

        buckets["regular"] = (buckets["cv"] <= self.max_regular_cv) & (
            buckets["median_iat"] >= self.min_regular_period
        )
        buckets["repeated"] = buckets["repeat_share"] >= self.min_repeat_share
        buckets["parallel_burst"] = buckets["parallel_waves"] >= self.min_parallel_waves
        buckets["machine"] = buckets["regular"] | buckets["repeated"] | buckets["parallel_burst"]
        buckets["kind"] = "load"
        return buckets

    # Pattern: the whole input ---------------------------------------------

    def _detect_pattern(self, prepared: PreparedEvents) -> list[Finding]:
        events = prepared.events
        iat = events["iat"].to_numpy()
        starts_burst = ~(iat <= self.burst_gap)  # NaN (first request) starts a burst too
        bursts = pd.DataFrame(
            {
                "subject": events["subject"].to_numpy()[starts_burst],
                "ts": events["ts"].to_numpy()[starts_burst],
                "prompt": events["prompt"].to_numpy()[starts_burst],
            }
        )
        counts = bursts.groupby("subject").size()
        enough = counts[counts >= self.min_bursts].index
        bursts = bursts[bursts["subject"].isin(enough)]
        if bursts.empty:
            return []

        bursts["gap"] = bursts.groupby("subject")["ts"].diff()
        bursts["hour_of_day"] = ((bursts["ts"] % DAY) // HOUR).astype(np.int64)
        table = self._pattern_table(bursts)
        table = table[table["regular"] | table["round_the_clock"]]
        if table.empty:
            return []

        hourly = self._hourly_requests(events, table.index)
        expected = prepared.subjects["expected_rph"].to_numpy()[table.index.to_numpy()]
        table["peak_rph"] = hourly.groupby(level=0).max().reindex(table.index).to_numpy()
        table["mean_rph"] = hourly.groupby(level=0).mean().reindex(table.index).to_numpy()
        # The sustained rate, not the peak: one busy hour is the load detector's business.
        table["impact"] = table["mean_rph"] / np.maximum(expected, 1.0)
        table["score"] = (
            np.where(table["regular"], 60, 0)
            + np.where(table["round_the_clock"], 50, 0)
            + np.where(table["repeat_share"] >= self.min_repeat_share, 10, 0)
        ).clip(max=90)
        table["kind"] = "pattern"
        table["detected_at"] = table["window_end"]

        return findings_from_rows(
            prepared,
            table.reset_index(),
            reason=self.reason,
            origin=f"{self.reason}/{self.version}",
            evidence_columns={
                "kind": "kind",
                "bursts": "bursts",
                "median_gap_s": "median_gap",
                "gap_robust_cv": "cv",
                "active_hours_of_day": "active_hours",
                "hour_entropy": "entropy",
                "top_prompt_share": "repeat_share",
                "peak_requests_per_hour": "peak_rph",
                "mean_requests_per_active_hour": "mean_rph",
            },
            window="whole input, requests collapsed into bursts",
            thresholds=self._thresholds(),
        )

    def _pattern_table(self, bursts: pd.DataFrame) -> pd.DataFrame:
        grouped = bursts.groupby("subject")
        median_gap = grouped["gap"].median()
        deviation = (bursts["gap"] - bursts["subject"].map(median_gap)).abs()
        mad_gap = deviation.groupby(bursts["subject"]).median()

        hours = bursts.groupby(["subject", "hour_of_day"]).size().unstack(fill_value=0)
        shares = hours.to_numpy() / hours.to_numpy().sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -np.nansum(np.where(shares > 0, shares * np.log2(shares), 0), axis=1)

        prompts = bursts[bursts["prompt"] >= 0]
        top_prompt = prompts.groupby(["subject", "prompt"]).size().groupby(level=0).max()

        table = pd.DataFrame(
            {
                "bursts": grouped.size(),
                "median_gap": median_gap,
                "mad_gap": mad_gap,
                "window_start": grouped["ts"].min(),
                "window_end": grouped["ts"].max(),
            }
        )
        table["active_hours"] = pd.Series((hours.to_numpy() > 0).sum(axis=1), index=hours.index)
        table["entropy"] = pd.Series(entropy / np.log2(24), index=hours.index)
        table["repeat_share"] = top_prompt.reindex(table.index).fillna(0) / table["bursts"]
        with np.errstate(divide="ignore", invalid="ignore"):
            table["cv"] = np.where(
                table["median_gap"] > 0, MAD_TO_SIGMA * table["mad_gap"] / table["median_gap"], np.inf
            )
        span = table["window_end"] - table["window_start"]

        table["regular"] = table["cv"] <= self.max_regular_cv
        table["round_the_clock"] = (
            (span >= DAY)
            & (table["active_hours"] >= self.min_active_hours)
            & (table["entropy"] >= self.min_hour_entropy)
        )
        return table

    @staticmethod
    def _hourly_requests(events: pd.DataFrame, subjects: pd.Index) -> pd.Series:
        """Requests per (subject, clock hour) over the hours each subject was active."""
        chosen = events[events["subject"].isin(subjects)]
        hour = (chosen["ts"] // HOUR).astype(np.int64)
        return chosen.groupby([chosen["subject"], hour]).size()
