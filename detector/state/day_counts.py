"""Per-(subject, UTC day) sums and value counts as plain arrays, merged from carried and new parts.

The anomaly state adds each chunk's events to its subjects' open days. The
steps here sort and reduce numpy arrays of one chunk's rows and its
subjects' carried sums only, because group-bys and small DataFrames per
chunk would cost more than the chunk's own events. The open days' value
counts themselves live in ``detector.state.open_day_counts``.
"""

from __future__ import annotations

import numpy as np

from detector.features.runs import run_starts
from detector.state.table import Columns

# Kinds of value rows: distinct values are counted for the first four, the most frequent one for the last two.
NETWORK, USER_AGENT, COUNTRY, HOUR, PROMPT, BUCKET = range(6)
KINDS = 6
DISTINCT = {"networks": NETWORK, "user_agents": USER_AGENT, "countries": COUNTRY, "active_hours": HOUR}
MOST_FREQUENT = {"top_prompt": PROMPT, "peak_10m": BUCKET}
# The per-day counts read from value rows, named as ``keyday_counts`` names them.
MEASURES = (*DISTINCT, *MOST_FREQUENT)

SUMS = ("requests", "cost_nano", "images", "tokens", "errors")
DAY_COLUMNS = ("subject", "day", *SUMS, "window_start", "window_end")
ROW_COLUMNS = ("subject", "day", "kind", "value", "count")


def concatenated(*parts: Columns) -> Columns:
    """Return the parts, which share their column names, one after another."""
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def selected(columns: Columns, chosen: np.ndarray) -> Columns:
    """Return the entries of every column at ``chosen`` (a mask or positions)."""
    return {name: column[chosen] for name, column in columns.items()}


def day_sums(parts: Columns) -> Columns:
    """Add up the parts of each (subject, day): sums, first and last request time; sorted by subject then day.

    ``parts`` has the columns of ``DAY_COLUMNS``, in any order and with any
    number of parts per (subject, day).
    """
    if not len(parts["subject"]):
        return selected(parts, slice(0, 0))
    order = np.lexsort((parts["day"], parts["subject"]))
    parts = selected(parts, order)
    starts = run_starts(parts["subject"], parts["day"])

    days = {"subject": parts["subject"][starts], "day": parts["day"][starts]}
    for name in SUMS:
        days[name] = np.add.reduceat(parts[name], starts)
    days["window_start"] = np.minimum.reduceat(parts["window_start"], starts)
    days["window_end"] = np.maximum.reduceat(parts["window_end"], starts)
    return days


def day_positions(days: Columns, subject: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Return the position in ``days`` (sorted by subject then day) of each (subject, day); every pair must be present."""
    if not len(subject):
        return np.empty(0, np.int64)
    first_day = int(days["day"].min())
    span = int(days["day"].max()) - first_day + 1
    keys = days["subject"].astype(np.int64) * span + (days["day"] - first_day)
    return np.searchsorted(keys, subject.astype(np.int64) * span + (day - first_day))


def merged_rows(days: Columns, rows: Columns) -> Columns:
    """Return one row per (subject, day, kind, value) of ``rows`` with the sum of its counts and the position of its day in ``days``.

    ``rows`` contains value rows (``ROW_COLUMNS``), any number per (subject,
    day, kind, value), each (subject, day) present in ``days``. The merged
    rows are sorted by subject, day, kind and value, and carry their day's
    position as ``day_row``.
    """
    if not len(rows["subject"]):
        return {**rows, "day_row": np.empty(0, np.int64)}
    day_row = day_positions(days, rows["subject"], rows["day"])
    group = day_row * KINDS + rows["kind"]
    order = np.lexsort((rows["value"], group))
    starts = run_starts(group[order], rows["value"][order])
    return {
        "subject": rows["subject"][order][starts],
        "day": rows["day"][order][starts],
        "kind": rows["kind"][order][starts],
        "value": rows["value"][order][starts],
        "count": np.add.reduceat(rows["count"][order], starts),
        "day_row": day_row[order][starts],
    }


def value_counts(days: Columns, rows: Columns) -> tuple[dict[str, np.ndarray], Columns]:
    """Return the distinct and most-frequent counts of each kind per entry of ``days``, and the merged value rows.

    ``rows`` and the merged rows are those of ``merged_rows``.
    """
    counts = {name: np.zeros(len(days["subject"]), np.int64) for name in MEASURES}
    merged = merged_rows(days, rows)
    if not len(merged["subject"]):
        return counts, merged

    # Merged rows are sorted by (day row, kind), so each group is one run of them.
    merged_group = merged["day_row"] * KINDS + merged["kind"]
    group_starts = run_starts(merged_group)
    distinct = np.diff(np.append(group_starts, len(merged_group)))
    highest = np.maximum.reduceat(merged["count"], group_starts)
    owner_row, kind = np.divmod(merged_group[group_starts], KINDS)
    for name, of_kind in DISTINCT.items():
        chosen = kind == of_kind
        counts[name][owner_row[chosen]] = distinct[chosen]
    for name, of_kind in MOST_FREQUENT.items():
        chosen = kind == of_kind
        counts[name][owner_row[chosen]] = highest[chosen]
    return counts, merged
