"""Per-subject, per-UTC-day feature rows: the input of the IsolationForest."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.features.prepare import PreparedEvents
from detector.features.runs import distinct_per_run, max_count_per_run, run_numbers, run_starts

DAY = 86400.0
# Costs are summed in whole nano-credits: cheap requests cost 0.00005 credits, which micro-credits would round by 1 %.
NANO = 1_000_000_000

# The per-day counts and sums of ``keyday_counts``, from which the features are computed.
KEYDAY_COUNTS: tuple[str, ...] = (
    "requests", "cost", "images", "tokens", "errors",
    "networks", "user_agents", "countries", "active_hours", "peak_10m", "top_prompt",
)

# Feature names in the order the model was trained on. Counts and money are
# log1p-scaled so that one heavy customer does not set the scale for everyone.
KEYDAY_FEATURES: tuple[str, ...] = (
    "log_requests",
    "log_cost",
    "log_images",
    "networks",
    "user_agents",
    "countries",
    "error_share",
    "log_tokens_per_request",
    "active_hours",
    "log_peak_10m",
    "top_prompt_share",
    "cost_vs_budget",
    "requests_vs_expected",
)


def keyday_features(prepared: PreparedEvents) -> pd.DataFrame:
    """Return one row per (subject, day) with ``KEYDAY_FEATURES`` and window bounds.

    Events are sorted by subject and time, so each (subject, day) is one run of
    rows. Sums are ``reduceat`` over the runs, and distinct and most-frequent
    counts come from (run, value) pairs (``detector.features.runs``), with no
    full-frame group-by.
    """
    return with_features(keyday_counts(prepared), prepared.subjects)


def keyday_counts(prepared: PreparedEvents) -> pd.DataFrame:
    """Return one row per (subject, day) with the counts and sums the features are made of.

    Costs are summed in integer nano-credits, so a day's cost does not depend
    on how its requests are split into parts and added up.
    """
    events = prepared.events
    if events.empty:
        return pd.DataFrame(columns=["subject", "day", "window_start", "window_end", *KEYDAY_COUNTS])

    ts = events["ts"].to_numpy()
    subject = events["subject"].to_numpy()
    day = (ts // DAY).astype(np.int64)
    starts = run_starts(subject, day)
    run = run_numbers(starts, len(ts))
    ends = np.append(starts[1:], len(ts)) - 1

    rows = pd.DataFrame(
        {
            "subject": subject[starts],
            "day": day[starts],
            "requests": ends - starts + 1,
            "cost": np.add.reduceat(nano_credits(events["cost"].to_numpy()), starts) / NANO,
            "images": np.add.reduceat(events["images"].to_numpy(), starts),
            "tokens": np.add.reduceat(
                events["prompt_tokens"].to_numpy() + events["completion_tokens"].to_numpy(), starts
            ),
            "errors": np.add.reduceat((events["status"].to_numpy() >= 400).astype(np.int64), starts),
            "window_start": ts[starts],
            "window_end": ts[ends],
        }
    )
    rows["networks"] = distinct_per_run(run, events["net"].to_numpy(), len(starts))
    rows["user_agents"] = distinct_per_run(run, events["ua"].to_numpy(), len(starts))
    rows["countries"] = distinct_per_run(run, events["country"].to_numpy(), len(starts))
    rows["active_hours"] = distinct_per_run(run, (ts // 3600).astype(np.int64), len(starts))
    rows["peak_10m"] = max_count_per_run(run, (ts // 600).astype(np.int64), len(starts))
    rows["top_prompt"] = max_count_per_run(run, events["prompt"].to_numpy(), len(starts))
    return rows


def with_features(rows: pd.DataFrame, subjects: pd.DataFrame) -> pd.DataFrame:
    """Add ``KEYDAY_FEATURES`` to ``rows`` of ``keyday_counts``, whose ``subject`` codes index ``subjects``.

    The plan's daily budget and expected rate come from ``subjects``, the plan of each subject's last request.
    """
    counts = {name: rows[name].to_numpy() for name in ("subject", "requests", "cost", "images", "tokens", "errors", "peak_10m", "top_prompt")}
    for name, values in feature_columns(counts, subjects).items():
        rows[name] = values
    return rows


def feature_columns(counts: dict[str, np.ndarray], subjects: pd.DataFrame) -> dict[str, np.ndarray]:
    """Return the computed ``KEYDAY_FEATURES`` of per-day counts given as arrays (``cost`` in credits).

    The count features (``networks``, ``user_agents``, ``countries``,
    ``active_hours``) are the counts themselves and are not returned.
    """
    subject = counts["subject"].astype(np.int64)
    daily_budget = subjects["daily_budget"].to_numpy()[subject]
    expected = subjects["expected_rph"].to_numpy()[subject] * 24
    requests = counts["requests"]
    return {
        "log_requests": np.log1p(requests),
        "log_cost": np.log1p(counts["cost"]),
        "log_images": np.log1p(counts["images"]),
        "error_share": counts["errors"] / requests,
        "log_tokens_per_request": np.log1p(counts["tokens"] / requests),
        "log_peak_10m": np.log1p(counts["peak_10m"]),
        "top_prompt_share": counts["top_prompt"] / requests,
        "cost_vs_budget": counts["cost"] / np.maximum(daily_budget, 1e-9),
        "requests_vs_expected": requests / np.maximum(expected, 1.0),
    }


def nano_credits(cost: np.ndarray) -> np.ndarray:
    """Return costs in whole nano-credits (int64), rounded to the nearest."""
    return np.round(np.asarray(cost, dtype=np.float64) * NANO).astype(np.int64)
