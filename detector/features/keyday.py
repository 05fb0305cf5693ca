"""Per-subject, per-UTC-day feature rows: the input of the IsolationForest."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.features.prepare import PreparedEvents

DAY = 86400.0

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
    """Return one row per (subject, day) with ``KEYDAY_FEATURES`` and window bounds."""
    events = prepared.events
    if events.empty:
        return pd.DataFrame(columns=["subject", "day", "window_start", "window_end", *KEYDAY_FEATURES])

    ts = events["ts"].to_numpy()
    frame = pd.DataFrame(
        {
            "subject": events["subject"].to_numpy(),
            "day": (ts // DAY).astype(np.int64),
            "ts": ts,
            "hour": (ts // 3600).astype(np.int64),
            "bucket": (ts // 600).astype(np.int64),
            "cost": events["cost"].to_numpy(),
            "images": events["images"].to_numpy(),
            "tokens": events["prompt_tokens"].to_numpy() + events["completion_tokens"].to_numpy(),
            "error": events["status"].to_numpy() >= 400,
            "net": events["net"].to_numpy(),
            "ua": events["ua"].to_numpy(),
            "country": events["country"].to_numpy(),
            "prompt": events["prompt"].to_numpy(),
        }
    )
    keys = ["subject", "day"]
    grouped = frame.groupby(keys, sort=False)
    rows = pd.DataFrame(
        {
            "requests": grouped.size(),
            "cost": grouped["cost"].sum(),
            "images": grouped["images"].sum(),
            "tokens": grouped["tokens"].sum(),
            "errors": grouped["error"].sum(),
            "window_start": grouped["ts"].min(),
            "window_end": grouped["ts"].max(),
        }
    )
    rows["networks"] = _distinct(frame, keys, "net", rows.index)
    rows["user_agents"] = _distinct(frame, keys, "ua", rows.index)
    rows["countries"] = _distinct(frame, keys, "country", rows.index)
    rows["active_hours"] = _distinct(frame, keys, "hour", rows.index)
    rows["peak_10m"] = frame.groupby([*keys, "bucket"], sort=False).size().groupby(level=[0, 1]).max()
    top_prompt = (
        frame[frame["prompt"] >= 0].groupby([*keys, "prompt"], sort=False).size()
        .groupby(level=[0, 1]).max()
    )
    rows["top_prompt"] = top_prompt.reindex(rows.index).fillna(0)
    rows = rows.reset_index()

    subjects = prepared.subjects
    daily_budget = subjects["daily_budget"].to_numpy()[rows["subject"].to_numpy()]
    expected = subjects["expected_rph"].to_numpy()[rows["subject"].to_numpy()] * 24

    rows["log_requests"] = np.log1p(rows["requests"])
    rows["log_cost"] = np.log1p(rows["cost"])
    rows["log_images"] = np.log1p(rows["images"])
    rows["error_share"] = rows["errors"] / rows["requests"]
    rows["log_tokens_per_request"] = np.log1p(rows["tokens"] / rows["requests"])
    rows["log_peak_10m"] = np.log1p(rows["peak_10m"])
    rows["top_prompt_share"] = rows["top_prompt"] / rows["requests"]
    rows["cost_vs_budget"] = rows["cost"] / np.maximum(daily_budget, 1e-9)
    rows["requests_vs_expected"] = rows["requests"] / np.maximum(expected, 1.0)
    return rows


def _distinct(frame: pd.DataFrame, keys: list[str], column: str, index: pd.Index) -> pd.Series:
    """Count distinct non-negative codes of ``column`` per group (codes < 0 mean unknown)."""
    known = frame[frame[column] >= 0]
    counts = known.drop_duplicates([*keys, column]).groupby(keys, sort=False).size()
    return counts.reindex(index).fillna(0).astype(np.int64)
