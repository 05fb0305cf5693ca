"""automation: machine-driven traffic, and whether its volume is more than the plan allows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from detector.detectors.base import Finding, at_or_after, escalations, findings_from_rows, from_period_start
from detector.features import PreparedEvents
from detector.detectors.automation_load import WINDOW, load_rows
from detector.features.runs import max_count_per_run, run_numbers, run_starts

HOUR = 3600.0
DAY = 86400.0
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class AutomationDetector:
    """Find machine-driven traffic at two speeds.

    *Load*: over the trailing 10 minutes at each request, a subject sends at
    least ``min_load`` times its plan's expected rate with a machine signal.
    The signals are:

    - a regular cadence: CV of inter-arrival times under ``max_regular_cv``
      with a mean gap of at least ``min_regular_period`` seconds, because logs
      with one-second timestamps make any quick run of requests look even;
    - one ``prompt_hash`` in at least ``min_repeat_share`` of requests;
    - ``min_parallel`` requests started within one second, at least
      ``min_parallel_waves`` times in the window. A browser opening one page
      fetches its assets in parallel once, and a flood does it again and again;
    - a pace no person keeps up: at least ``min_fast_requests`` requests in the
      window (600, one a second for ten minutes), whatever their timing and
      prompts. A script that sends one request at a time, each with a new
      prompt and too quickly for the regular-cadence test, is found by this.

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
    min_fast_requests: int = 600
    burst_gap: float = 10.0
    min_bursts: int = 12
    min_active_hours: int = 18
    min_hour_entropy: float = 0.85
    reason: str = "automation"
    version: str = "2"

    def detect(self, prepared: PreparedEvents, since: float | None = None) -> list[Finding]:
        """Return the findings, or with ``since`` the load findings detected from ``since`` on (see ``Detector``).

        A pattern finding measures the whole input, so ``since`` leaves it as it is.
        """
        if prepared.events.empty:
            return []
        return self._detect_load(prepared, since) + self._detect_pattern(prepared)

    def _thresholds(self) -> dict[str, float]:
        return {
            "min_load": self.min_load,
            "max_regular_cv": self.max_regular_cv,
            "min_regular_period": self.min_regular_period,
            "min_repeat_share": self.min_repeat_share,
            "min_parallel": self.min_parallel,
            "min_parallel_waves": self.min_parallel_waves,
            "min_fast_requests": self.min_fast_requests,
            "min_bursts": self.min_bursts,
            "min_active_hours": self.min_active_hours,
            "min_hour_entropy": self.min_hour_entropy,
        }

    # Load: 10-minute buckets ------------------------------------------------

    def _detect_load(self, prepared: PreparedEvents, since: float | None) -> list[Finding]:
        events = prepared.events
        subject = events["subject"].to_numpy()
        ts = events["ts"].to_numpy()
        # Findings escalate per 10-minute bucket, so the bucket holding ``since`` is tested from its start.
        recent = from_period_start(ts, since, WINDOW)
        rows = load_rows(
            self,
            subject=subject,
            ts=ts,
            ts_ms=events["ts_ms"].to_numpy(),
            prompt=events["prompt"].to_numpy(),
            expected_rph=prepared.subjects["expected_rph"].to_numpy()[subject],
            candidates=recent,
        )
        if rows.empty:
            return []
        rows = escalations(rows, ["subject", "bucket"]).copy()
        return self.load_findings(prepared, at_or_after(rows, since))

    def load_findings(self, prepared: PreparedEvents, rows: pd.DataFrame) -> list[Finding]:
        """Build load findings from the escalation rows of ``load_rows``, whose ``subject`` codes index ``prepared.subjects``."""
        rows = rows.copy()
        rows["kind"] = "load"
        rows["window_start"] = rows["ts"] - WINDOW
        rows["window_end"] = rows["ts"]
        return findings_from_rows(
            prepared,
            rows,
            reason=self.reason,
            origin=f"{self.reason}/{self.version}",
            evidence_columns={
                "kind": "kind",
                "requests_10m": "requests",
                "load_vs_plan": "load",
                "iat_cv": "cv",
                "mean_gap_s": "mean_gap",
                "top_prompt_share": "repeat_share",
                "started_in_1s": "max_parallel",
                "parallel_waves": "parallel_waves",
            },
            window="trailing 10 minutes",
            thresholds=self._thresholds(),
        )

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
        return self.pattern_findings(prepared, bursts, lambda subjects: self._hourly_requests(events, subjects))

    def pattern_findings(
        self,
        prepared: PreparedEvents,
        bursts: pd.DataFrame,
        hourly_requests: Callable[[pd.Index], pd.Series],
    ) -> list[Finding]:
        """Build pattern findings from burst starts, sorted by subject then time.

        ``bursts`` has ``subject`` (a code into ``prepared.subjects``), ``ts`` and
        ``prompt`` (a code per distinct prompt, -1 unknown). ``hourly_requests``
        returns requests per (subject, clock hour) for the given subject codes.
        """
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

        hourly = hourly_requests(table.index)
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

        # Bursts are sorted by subject, so each subject is one run, in the order of the groups.
        subject = bursts["subject"].to_numpy()
        starts = run_starts(subject)
        run = run_numbers(starts, len(subject))
        hours = _hour_of_day_counts(run, bursts["hour_of_day"].to_numpy(), len(starts))
        shares = hours / hours.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -np.nansum(np.where(shares > 0, shares * np.log2(shares), 0), axis=1)
        top_prompt = max_count_per_run(run, bursts["prompt"].to_numpy(), len(starts))

        table = pd.DataFrame(
            {
                "bursts": grouped.size(),
                "median_gap": median_gap,
                "mad_gap": mad_gap,
                "window_start": grouped["ts"].min(),
                "window_end": grouped["ts"].max(),
            }
        )
        table["active_hours"] = (hours > 0).sum(axis=1)
        table["entropy"] = entropy / np.log2(24)
        table["repeat_share"] = top_prompt / table["bursts"]
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


def _hour_of_day_counts(run: np.ndarray, hour_of_day: np.ndarray, runs: int) -> np.ndarray:
    """Count bursts per subject run and each of the 24 hours of day.

    Every subject's entropy sums the same 24 terms, zeros included, in the same order, so its rounding does not
    depend on which other subjects are scored with it. The incremental state rebuilds the touched subjects alone.
    """
    return np.bincount(run * 24 + hour_of_day, minlength=runs * 24).reshape(runs, 24)
