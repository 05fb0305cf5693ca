"""Recalibrate detector thresholds from quantiles of benign history.

A recalibrated threshold never drops below its base value (the shipped one,
or the one given with ``fairuse train --thresholds``) and never rises above
twice that value. Training on a quiet week can therefore only make a
detector stricter about what it reports, within a bound that the quality
benchmark covers. It cannot lower a threshold and send more customers to
review or throttling.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.features import PreparedEvents
from detector.thresholds import Thresholds

CALIBRATION_QUANTILE = 0.999
# Fewer benign observations than this leave the shipped threshold unchanged.
MIN_OBSERVATIONS = 200


def calibrate_thresholds(
    prepared: PreparedEvents, benign_subjects: np.ndarray, base: Thresholds, quantile: float = CALIBRATION_QUANTILE
) -> tuple[Thresholds, dict[str, dict[str, float]]]:
    """Return the recalibrated thresholds and, per threshold, the benign statistic behind it.

    ``benign_subjects`` is a boolean per subject code of ``prepared``.
    """
    events = prepared.events
    benign_events = events[benign_subjects[events["subject"].to_numpy()]]
    statistics = {
        ("abnormal_cost", "min_peak_ratio"): _hour_over_busy_hour(benign_events),
        ("automation", "min_parallel"): _requests_per_second(benign_events),
    }

    thresholds: Thresholds = {}
    notes: dict[str, dict[str, float]] = {}
    for (section, name), values in statistics.items():
        shipped = base[section][name]
        value, observed = _bounded_quantile(values, shipped, quantile)
        if name == "min_parallel":
            # A flood must start more requests in one second than any benign key did.
            value = int(np.ceil(min(value + 1, 2 * shipped))) if observed is not None else int(shipped)
        thresholds.setdefault(section, {})[name] = value
        notes[f"{section}.{name}"] = {
            "shipped": shipped,
            "value": value,
            "benign_quantile": quantile,
            "benign_statistic": observed if observed is not None else float("nan"),
            "observations": int(len(values)),
        }
    return thresholds, _json_safe(notes)


def _bounded_quantile(values: np.ndarray, shipped: float, quantile: float) -> tuple[float, float | None]:
    if len(values) < MIN_OBSERVATIONS:
        return shipped, None
    observed = float(np.quantile(values, quantile))
    return float(np.clip(observed, shipped, 2 * shipped)), observed


def _hour_over_busy_hour(events: pd.DataFrame) -> np.ndarray:
    """Return each benign active hour's spend over its key's 95th-percentile active hour."""
    if events.empty:
        return np.array([])
    hourly = (
        events.assign(hour=(events["ts"] // 3600).astype(np.int64))
        .groupby(["subject", "hour"], sort=False)["cost"]
        .sum()
    )
    hourly = hourly[hourly > 0]
    busy = hourly.groupby(level="subject").transform(lambda values: values.quantile(0.95))
    return (hourly / busy).to_numpy(dtype=np.float64)


def _requests_per_second(events: pd.DataFrame) -> np.ndarray:
    """Return, per benign key and second with traffic, how many requests started in it."""
    if events.empty:
        return np.array([])
    seconds = (events["ts"] // 1).astype(np.int64)
    return events.groupby([events["subject"], seconds], sort=False).size().to_numpy(dtype=np.float64)


def _json_safe(notes: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    return {
        key: {name: (None if isinstance(value, float) and not np.isfinite(value) else value) for name, value in entry.items()}
        for key, entry in notes.items()
    }
