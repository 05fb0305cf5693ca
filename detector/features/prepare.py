"""Turn a canonical event frame into the sorted, integer-coded form detectors share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detector.events import is_image_endpoint
from detector.features.network import network_codes
from detector.plans import PlanCatalogue

# Bits kept for milliseconds in the composite (subject, time) key: 2**41 ms is
# about 69 years, so any real log span fits and subjects never overlap.
_TIME_BITS = 41


@dataclass(slots=True)
class PreparedEvents:
    """Events sorted by subject then time, with codes and per-subject entitlements.

    ``events`` has one row per request and these columns beside the contract's:
    ``subject`` (code), ``net`` (network code, -1 unknown), ``ua``, ``country``,
    ``prompt`` (prompt_hash code, -1 when absent), ``ts_ms``, ``iat`` (seconds
    since the subject's previous request, NaN for its first), ``is_image``.
    ``subjects`` has one row per subject code: ``subject_type``, ``subject``,
    ``account_id``, ``plan`` (the last one seen) and the plan's entitlements.
    """

    events: pd.DataFrame
    subjects: pd.DataFrame
    networks: list[str]
    segment_starts: np.ndarray

    @property
    def composite_time(self) -> np.ndarray:
        """Return (subject << 41 | ms since epoch), increasing over the sorted events."""
        return (self.events["subject"].to_numpy() << _TIME_BITS) | self.events["ts_ms"].to_numpy()

    def count_in_window(self, seconds: float, mask: np.ndarray | None = None) -> np.ndarray:
        """Count, at each event, the subject's events in the trailing ``seconds`` (itself included).

        With ``mask``, only masked events are counted, and the result is for masked events.
        """
        keys = self.composite_time
        if mask is not None:
            keys = keys[mask]
        starts = np.searchsorted(keys, keys - int(seconds * 1000), side="right")
        return np.arange(len(keys)) - starts + 1

    def sum_in_window(self, values: np.ndarray, seconds: float, mask: np.ndarray) -> np.ndarray:
        """Sum ``values`` over each masked event's trailing window of the same subject."""
        keys = self.composite_time[mask]
        totals = np.concatenate(([0.0], np.cumsum(values[mask], dtype=np.float64)))
        starts = np.searchsorted(keys, keys - int(seconds * 1000), side="right")
        return totals[1:] - totals[starts]


def prepare_events(frame: pd.DataFrame, plans: PlanCatalogue) -> PreparedEvents:
    """Sort ``frame`` by subject and time and add the codes detectors use."""
    subject_labels = frame["subject_type"].astype(str) + ":" + frame["key_id"].astype(str)
    subject_codes, _ = pd.factorize(subject_labels, sort=True)
    ts_ms = np.round(frame["ts"].to_numpy() * 1000).astype(np.int64)

    order = np.lexsort((ts_ms, subject_codes))
    events = frame.iloc[order].reset_index(drop=True)
    events["subject"] = subject_codes[order].astype(np.int64)
    events["ts_ms"] = ts_ms[order]

    net, networks = network_codes(events["ip"])
    events["net"] = net
    events["ua"] = pd.factorize(events["user_agent"])[0]
    events["country"] = _codes_with_blank(events["country"])
    events["prompt"] = _codes_with_blank(events["prompt_hash"])
    events["is_image"] = is_image_endpoint(events["endpoint"]) | (events["images"].to_numpy() > 0)

    subject = events["subject"].to_numpy()
    first = np.ones(len(events), dtype=bool)
    first[1:] = subject[1:] != subject[:-1]
    iat = np.diff(events["ts"].to_numpy(), prepend=np.nan)
    iat[first] = np.nan
    events["iat"] = iat

    segment_starts = np.flatnonzero(first)
    subjects = _subject_table(events, segment_starts, plans)
    return PreparedEvents(events, subjects, networks, segment_starts)


def _codes_with_blank(values: pd.Series) -> np.ndarray:
    """Factorise ``values`` with "" mapped to -1 so a missing value never counts as distinct."""
    blank = values.to_numpy() == ""
    codes, _ = pd.factorize(values.mask(blank))
    return codes.astype(np.int64)


def _subject_table(
    events: pd.DataFrame, segment_starts: np.ndarray, plans: PlanCatalogue
) -> pd.DataFrame:
    last_rows = np.append(segment_starts[1:], len(events)) - 1
    last = events.iloc[last_rows]

    table = pd.DataFrame(
        {
            "subject_type": last["subject_type"].to_numpy(),
            "subject": last["key_id"].to_numpy(),
            "account_id": last["account_id"].to_numpy(),
            "plan": last["plan"].to_numpy(),
            "first_ts": events["ts"].to_numpy()[segment_starts] if len(events) else [],
            "last_ts": last["ts"].to_numpy(),
            "requests": np.diff(np.append(segment_starts, len(events))),
        }
    )
    entitlements = plans.columns(table["plan"]).reset_index(drop=True)
    return pd.concat([table, entitlements], axis=1)
