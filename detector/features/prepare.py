"""Turn a canonical event frame into the sorted, integer-coded form detectors share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detector.events import IMAGE_ENDPOINTS
from detector.features.network import network_codes
from detector.plans import PlanCatalogue

# Bits kept for milliseconds in the composite (subject, time) key: 2**41 ms is
# about 69 years, so any real log span fits and subjects never overlap.
_TIME_BITS = 41


@dataclass(slots=True)
class PreparedEvents:
    """Events sorted by subject then time, as integer codes and numbers only.

    ``events`` has one row per request with these columns:

    - ``subject``: code into ``subjects``;
    - ``ts``, ``ts_ms``, and ``iat`` (seconds since the subject's previous
      request, NaN for its first);
    - ``net``, ``ua``, ``country`` and ``prompt``: codes, -1 when unknown or absent;
    - ``is_image`` and the numeric contract fields.

    ``subjects`` has one row per subject code:
    ``subject_type``, ``subject``, ``account_id``, ``plan`` (of the last
    request) and the plan's entitlements.
    """

    events: pd.DataFrame
    subjects: pd.DataFrame
    networks: list[str]
    # The row of the input frame that each prepared row came from.
    input_rows: np.ndarray | None = None

    @property
    def composite_time(self) -> np.ndarray:
        """Return (subject << 41 | ms since epoch), increasing over the sorted events."""
        return composite_time(self.events["subject"].to_numpy(), self.events["ts_ms"].to_numpy())

    def count_in_window(self, seconds: float, mask: np.ndarray | None = None) -> np.ndarray:
        """Count, at each event, the subject's events in the trailing ``seconds`` (itself included).

        With ``mask``, only masked events are counted, and the result is for masked events.
        """
        keys = self.composite_time
        if mask is not None:
            keys = keys[mask]
        return trailing_count(keys, seconds)

    def sum_in_window(self, values: np.ndarray, seconds: float, mask: np.ndarray) -> np.ndarray:
        """Sum ``values`` over each masked event's trailing window of the same subject."""
        return trailing_sum(self.composite_time[mask], values[mask], seconds)


def composite_time(subject: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
    """Return (subject << 41 | ms since epoch), which increases over events sorted by subject then time."""
    return (subject << _TIME_BITS) | ts_ms


def trailing_count(keys: np.ndarray, seconds: float) -> np.ndarray:
    """Count, at each composite time in ``keys``, the keys of the same subject in the trailing ``seconds`` (itself included)."""
    starts = np.searchsorted(keys, keys - int(seconds * 1000), side="right")
    return np.arange(len(keys)) - starts + 1


def trailing_sum(keys: np.ndarray, values: np.ndarray, seconds: float) -> np.ndarray:
    """Sum ``values`` over each composite time's trailing ``seconds`` of the same subject, in float64."""
    totals = np.concatenate(([0.0], np.cumsum(values, dtype=np.float64)))
    starts = np.searchsorted(keys, keys - int(seconds * 1000), side="right")
    return totals[1:] - totals[starts]


_NUMERIC = ("cost", "images", "prompt_tokens", "completion_tokens", "status", "latency_ms")


def prepare_events(frame: pd.DataFrame, plans: PlanCatalogue) -> PreparedEvents:
    """Code and sort ``frame`` by subject and time; strings stay behind in the subject table."""
    subject_codes = _subject_codes(frame)
    ts = frame["ts"].to_numpy(dtype=np.float64)
    ts_ms = np.round(ts * 1000).astype(np.int64)

    if len(ts) < 2 or bool(np.all(ts[1:] >= ts[:-1])):
        order = np.argsort(subject_codes, kind="stable")
    else:
        order = np.lexsort((ts_ms, subject_codes))

    net, networks = network_codes(frame["ip"])
    columns = {
        "subject": subject_codes[order],
        "ts": ts[order],
        "ts_ms": ts_ms[order],
        "net": net[order],
        "ua": pd.factorize(frame["user_agent"])[0][order],
        "country": _codes_with_blank(frame["country"])[order],
        "prompt": _codes_with_blank(frame["prompt_hash"])[order],
        "is_image": _image_mask(frame["endpoint"])[order] | (frame["images"].to_numpy()[order] > 0),
    }
    for name in _NUMERIC:
        columns[name] = frame[name].to_numpy()[order]
    # Every column is a fresh array, so the frame can own them without a copy.
    events = pd.DataFrame(columns, copy=False)

    subject = events["subject"].to_numpy()
    first = np.ones(len(events), dtype=bool)
    first[1:] = subject[1:] != subject[:-1]
    iat = np.diff(events["ts"].to_numpy(), prepend=np.nan)
    iat[first] = np.nan
    events["iat"] = iat

    subjects = _subject_table(frame, events, order, np.flatnonzero(first), plans)
    return PreparedEvents(events, subjects, networks, input_rows=order)


def _subject_codes(frame: pd.DataFrame) -> np.ndarray:
    """Code each (subject_type, key_id) pair; a key and an address never share a code."""
    key_codes = pd.factorize(frame["key_id"])[0].astype(np.int64, copy=False)
    is_address = (frame["subject_type"] == "ip").to_numpy(dtype=bool)
    return pd.factorize(key_codes * 2 + is_address)[0].astype(np.int64)


def _codes_with_blank(values: pd.Series) -> np.ndarray:
    """Factorise ``values`` with "" mapped to -1 so a missing value never counts as distinct."""
    codes, uniques = pd.factorize(values)
    # Compared in the uniques' own string dtype: a Python object per unique would cost more than the factorise.
    blank = np.flatnonzero(uniques == "")
    if len(blank):
        codes = np.where(codes == blank[0], -1, codes)
    return codes.astype(np.int64, copy=False)


def _image_mask(endpoints: pd.Series) -> np.ndarray:
    codes, uniques = pd.factorize(endpoints)
    is_image = np.array([endpoint in IMAGE_ENDPOINTS for endpoint in uniques], dtype=bool)
    return is_image[codes] if len(uniques) else np.zeros(len(endpoints), dtype=bool)


def _subject_table(
    frame: pd.DataFrame,
    events: pd.DataFrame,
    order: np.ndarray,
    segment_starts: np.ndarray,
    plans: PlanCatalogue,
) -> pd.DataFrame:
    segment_ends = np.append(segment_starts[1:], len(events))[: len(segment_starts)] - 1
    last_rows = order[segment_ends]
    ts = events["ts"].to_numpy()

    table = pd.DataFrame(
        {
            "subject_type": frame["subject_type"].take(last_rows).to_numpy(),
            "subject": frame["key_id"].take(last_rows).to_numpy(),
            "account_id": frame["account_id"].take(last_rows).to_numpy(),
            "plan": frame["plan"].take(last_rows).to_numpy(),
            "first_ts": ts[segment_starts],
            "last_ts": ts[segment_ends],
            "requests": segment_ends - segment_starts + 1,
        }
    )
    entitlements = plans.columns(table["plan"]).reset_index(drop=True)
    return pd.concat([table, entitlements], axis=1)
