"""The review console's hourly activity rows, kept by the state worker from its micro-batches.

The window worker builds a subject's ``subject_activity`` rows
(``detector.review.activity``) from its stored 7-day window. The state
worker keeps no raw events, so each partition keeps an ``HourlyActivity``
instead: per subject and clock hour, the requests, the cost, the gap
histogram and the distinct networks, countries and user agents. It keeps
the 64-bit hashes of the distinct values too, so an hour split over several
micro-batches counts each value once. This is kept for every subject of
the partition, not only for those acted on, because a subject acted on for
the first time needs the chart of its past 7 days.

``record_activity`` writes, after each batch, the rows of the batch's
subjects that have a decision or an open case, as the window worker
chooses them. A subject written for the first time (``charted``) gets
every hour kept; the others get the hours the batch added to.

Where the rows can differ from the window worker's:

- ``cost`` is the sum of each batch's sum, so an hour split over batches
  can differ in the last bits from one sum over the hour's events;
- a late event (older than the subject's newest event of an earlier
  batch) gets no gap, and the gap of the event after it is not corrected;
- a subject acted on for the first time gets its oldest hour whole, where
  the window worker's 7-day window may cut that hour;
- two distinct values count as one when their 64-bit hashes collide.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from detector.features.runs import run_numbers, run_starts
from detector.review.activity import GAP_EDGES, GAP_LABELS, ActivityLog
from detector.shadow import decided_without_shadow
from detector.state.chunk import Chunk
from detector.state.scorer import STREAM_RETENTION
from detector.state.table import SubjectKey
from detector.store import DecisionStore
from detector.store.repository import subjects_with_rows
from detector.store.review_models import CaseRow

# The chart shows 168 hours; one more keeps the hour a 7-day window starts in.
KEPT_HOURS = int(STREAM_RETENTION // 3600) + 1
# Kinds of distinct value, in the order of the count columns.
_KINDS = ("networks", "countries", "user_agents")
_HOUR_BITS = 32
_HOUR_MASK = (1 << _HOUR_BITS) - 1
_BINS = len(GAP_LABELS)
# Hash of a missing user agent: the window worker counts it as one more user agent.
_MISSING_USER_AGENT = np.uint64(0x9E3779B97F4A7C15)
# Hashes of the strings seen lately, shared by the partitions of a process and not checkpointed.
_HASHES: dict[str, int] = {}
_HASH_CACHE_SIZE = 1 << 16


class HourlyActivity:
    """Hourly counts of one partition's subjects over the last ``KEPT_HOURS`` hours, and the subjects already written.

    Rows are kept sorted by ``row_key`` (subject id << 32 | hour since the
    epoch). ``value_keys`` is the sorted set of hashed (row, kind, value)
    triples that the distinct counts were made from, and ``value_rows`` the
    row key of each.
    """

    def __init__(self) -> None:
        self.ids: dict[SubjectKey, int] = {}
        self.keys: list[SubjectKey | None] = []
        self.free_ids: list[int] = []
        # Per subject id: the newest event time seen, NaN for a free id.
        self.newest = np.empty(0, np.float64)
        self.row_key = np.empty(0, np.int64)
        self.requests = np.empty(0, np.int64)
        self.cost = np.empty(0, np.float64)
        self.distinct = np.empty((0, len(_KINDS)), np.int64)
        self.gaps = np.empty((0, _BINS), np.int64)
        self.value_keys = np.empty(0, np.uint64)
        self.value_rows = np.empty(0, np.int64)
        self.charted: set[SubjectKey] = set()
        self.newest_hour = -1

    def __len__(self) -> int:
        return len(self.row_key)

    def nbytes(self) -> int:
        """Return the bytes of the arrays, without the subject keys and spare capacity."""
        arrays = (self.newest, self.row_key, self.requests, self.cost, self.distinct, self.gaps,
                  self.value_keys, self.value_rows)
        return sum(array.nbytes for array in arrays)

    def add(self, chunk: Chunk) -> np.ndarray:
        """Count the chunk's events into their subjects' hours; return the row keys of the hours it added to."""
        events = chunk.prepared.events
        if not len(events):
            return np.empty(0, np.int64)
        ids = self._subject_ids(chunk.keys)
        subject = ids[chunk.subject]
        ts = chunk.ts
        hour = (ts // 3600).astype(np.int64)
        row_key = (subject << _HOUR_BITS) | hour
        gap = self._gaps(chunk, ids)

        # Events are sorted by subject then time, so each (subject, hour) is one run.
        starts = run_starts(row_key)
        run = run_numbers(starts, len(row_key))
        keys = row_key[starts]
        requests = np.diff(np.append(starts, len(row_key)))
        cost = pd.Series(events["cost"].to_numpy(dtype=np.float64)).groupby(run, sort=False).sum().to_numpy()
        has_gap = ~np.isnan(gap)
        cells = run[has_gap] * _BINS + np.digitize(gap[has_gap], GAP_EDGES)
        gaps = np.bincount(cells, minlength=len(keys) * _BINS).reshape(len(keys), _BINS)

        positions = self._merge_rows(keys, requests, cost, gaps)
        self._count_distinct(chunk, row_key, positions[run])
        self.newest_hour = max(self.newest_hour, int(hour.max()))
        self._prune()
        return keys

    def _subject_ids(self, keys: list[SubjectKey]) -> np.ndarray:
        """Return the id of each chunk subject, giving new subjects a free id."""
        ids = np.empty(len(keys), np.int64)
        for position, key in enumerate(keys):
            found = self.ids.get(key)
            if found is None:
                if self.free_ids:
                    found = self.free_ids.pop()
                    self.keys[found] = key
                else:
                    found = len(self.keys)
                    self.keys.append(key)
                self.ids[key] = found
            ids[position] = found
        if len(self.keys) > len(self.newest):
            self.newest = np.append(self.newest, np.full(len(self.keys) - len(self.newest), np.nan))
        return ids

    def _gaps(self, chunk: Chunk, ids: np.ndarray) -> np.ndarray:
        """Return each event's gap to its subject's previous request, NaN where the window worker has none.

        A subject's first event in the chunk follows its newest event of
        earlier chunks, if that is within the 7-day window that ends at the
        subject's newest event in the chunk.

        NOTE: a late first event (older than the subject's newest earlier
        event) gets no gap, and the gap of the event after it stays
        measured from the one before, where the window worker re-sorts them.
        """
        gap = chunk.prepared.events["iat"].to_numpy(dtype=np.float64).copy()
        first = chunk.first_rows
        previous = self.newest[ids]
        newest = chunk.ts[chunk.last_rows]
        first_ts = chunk.ts[first]
        counted = ~np.isnan(previous) & (previous >= newest - STREAM_RETENTION) & (first_ts >= previous)
        gap[first] = np.where(counted, first_ts - previous, np.nan)
        self.newest[ids] = np.fmax(previous, newest)
        return gap

    def _merge_rows(self, keys: np.ndarray, requests: np.ndarray, cost: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        """Add the chunk's runs to the rows with their keys, inserting missing rows; return each run's row position."""
        at = np.searchsorted(self.row_key, keys)
        found = at < len(self.row_key)
        found[found] = self.row_key[at[found]] == keys[found]
        kept = at[found]
        self.requests[kept] += requests[found]
        self.cost[kept] += cost[found]
        self.gaps[kept] += gaps[found]

        # Chunk subject codes follow first appearance, not ids, so the new keys are sorted before inserting:
        # np.insert keeps the given order among values inserted at one place.
        new = np.flatnonzero(~found)
        if len(new):
            new = new[np.argsort(keys[new])]
            places = at[new]
            self.row_key = np.insert(self.row_key, places, keys[new])
            self.requests = np.insert(self.requests, places, requests[new])
            self.cost = np.insert(self.cost, places, cost[new])
            self.distinct = np.insert(self.distinct, places, 0, axis=0)
            self.gaps = np.insert(self.gaps, places, gaps[new], axis=0)
        return np.searchsorted(self.row_key, keys)

    def _count_distinct(self, chunk: Chunk, row_key: np.ndarray, row: np.ndarray) -> None:
        """Count the values of the chunk's events that their hour has not had before."""
        value_keys, value_rows, value_kinds, positions = [], [], [], []
        for kind, hashes in enumerate(_value_hashes(chunk)):
            known = hashes != 0
            keys = _mix(_mix(row_key[known].astype(np.uint64) * np.uint64(4) + np.uint64(kind)) ^ hashes[known])
            # A subject's consecutive requests mostly repeat their values, so those are dropped before sorting.
            changed = np.flatnonzero(np.diff(keys, prepend=keys[:1] ^ np.uint64(1)) != 0)
            keys, first = np.unique(keys[changed], return_index=True)
            first = changed[first]
            at = np.searchsorted(self.value_keys, keys)
            seen = at < len(self.value_keys)
            seen[seen] = self.value_keys[at[seen]] == keys[seen]
            fresh = first[~seen]
            value_keys.append(keys[~seen])
            value_rows.append(row_key[known][fresh])
            value_kinds.append(np.full(len(fresh), kind))
            positions.append(row[known][fresh])
        kinds = np.concatenate(value_kinds)
        np.add.at(self.distinct, (np.concatenate(positions), kinds), 1)

        added = np.concatenate(value_keys)
        order = np.argsort(added)
        added = added[order]
        places = np.searchsorted(self.value_keys, added)
        self.value_keys = np.insert(self.value_keys, places, added)
        self.value_rows = np.insert(self.value_rows, places, np.concatenate(value_rows)[order])

    def _prune(self) -> None:
        """Drop the hours older than ``KEPT_HOURS`` before the newest, and the subjects with no event since."""
        cutoff = self.newest_hour - KEPT_HOURS + 1
        if not len(self.row_key) or int((self.row_key & _HOUR_MASK).min()) >= cutoff:
            return
        keep = (self.row_key & _HOUR_MASK) >= cutoff
        self.row_key, self.requests, self.cost = self.row_key[keep], self.requests[keep], self.cost[keep]
        self.distinct, self.gaps = self.distinct[keep], self.gaps[keep]
        keep_values = (self.value_rows & _HOUR_MASK) >= cutoff
        self.value_keys, self.value_rows = self.value_keys[keep_values], self.value_rows[keep_values]

        # A subject without events since the cutoff has no rows left, so its id can go to a new subject.
        idle = np.flatnonzero(self.newest < cutoff * 3600.0)
        for subject_id in idle.tolist():
            key = self.keys[subject_id]
            self.ids.pop(key, None)
            self.charted.discard(key)
            self.keys[subject_id] = None
            self.free_ids.append(subject_id)
        self.newest[idle] = np.nan

    def rows(self, subjects: Iterable[SubjectKey], touched: np.ndarray) -> pd.DataFrame:
        """Return the rows to write for ``subjects``, with the columns of ``ActivityRow``, and mark them charted.

        A subject not charted yet gets every hour kept from 7 days before its
        newest event. A charted one gets its hours from the earliest of its
        hours in ``touched`` (row keys from ``add``) on.
        """
        subjects = [key for key in subjects if key in self.ids]
        ids = np.array([self.ids[key] for key in subjects], np.int64)
        whole = np.array([key not in self.charted for key in subjects], dtype=bool)
        # Per subject id, the first hour to write. The window worker rewrites every hour from its batch's
        # earliest on, and ActivityLog replaces a subject's whole span of hours, so no hour in between is left out.
        first_hour = np.full(len(self.newest), np.iinfo(np.int64).max)
        touched_owner = touched >> _HOUR_BITS
        again = np.isin(touched_owner, ids[~whole])
        np.minimum.at(first_hour, touched_owner[again], touched[again] & _HOUR_MASK)
        first_hour[ids[whole]] = (self.newest[ids[whole]] - STREAM_RETENTION) // 3600
        chosen = (self.row_key & _HOUR_MASK) >= first_hour[self.row_key >> _HOUR_BITS]
        self.charted.update(subjects)
        return _rows_frame(self, np.flatnonzero(chosen))


def _value_hashes(chunk: Chunk) -> list[np.ndarray]:
    """Return, per kind in ``_KINDS``, a 64-bit hash of each prepared event's value, 0 where the value does not count.

    A blank or missing network or country does not count. A missing user
    agent does, and a blank one is a value of its own, as in ``prepare_events``.
    """
    events = chunk.prepared.events
    networks = np.append(_hash_strings(chunk.prepared.networks), np.uint64(0))
    rows = chunk.prepared.input_rows
    frame = chunk.frame
    countries = _hash_column(frame["country"], missing=np.uint64(0), blank_counts=False)
    user_agents = _hash_column(frame["user_agent"], missing=_MISSING_USER_AGENT, blank_counts=True)
    # Code -1 (unknown network) picks the 0 appended last.
    return [networks[events["net"].to_numpy()], countries[rows], user_agents[rows]]


def _hash_column(values: pd.Series, *, missing: np.uint64, blank_counts: bool) -> np.ndarray:
    codes, uniques = pd.factorize(values)
    strings = np.asarray(uniques, dtype=object)
    hashed = np.append(_hash_strings(strings), missing)
    if not blank_counts:
        hashed[:-1][strings == ""] = 0
    return hashed[codes]


def _hash_strings(strings) -> np.ndarray:
    """Return a stable 64-bit hash of each string, never 0, which marks a value that does not count.

    Batches repeat most of their networks and user agents, and hashing them
    again took a fifth of ``HourlyActivity.add``, so hashes are cached.
    """
    strings = np.asarray(strings, dtype=object)
    hashed = np.fromiter((_HASHES.get(string, 0) for string in strings), np.uint64, len(strings))
    missing = np.flatnonzero(hashed == 0)
    if len(missing):
        computed = pd.util.hash_array(strings[missing])
        computed[computed == 0] = 1
        hashed[missing] = computed
        if len(_HASHES) + len(missing) > _HASH_CACHE_SIZE:
            _HASHES.clear()
        _HASHES.update(zip(strings[missing].tolist(), computed.tolist()))
    return hashed


def _mix(values: np.ndarray) -> np.ndarray:
    """Return the splitmix64 finaliser of each value, a bijection on 64-bit integers."""
    with np.errstate(over="ignore"):
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def _rows_frame(activity: HourlyActivity, chosen: np.ndarray) -> pd.DataFrame:
    keys = [activity.keys[subject_id] for subject_id in (activity.row_key[chosen] >> _HOUR_BITS).tolist()]
    hours = pd.to_datetime((activity.row_key[chosen] & _HOUR_MASK) * 3600, unit="s", utc=True)
    distinct = activity.distinct[chosen]
    return pd.DataFrame({
        "subject_type": [key[0] for key in keys],
        # PostgreSQL text cannot contain NUL, so identifiers are stored as the decision store stores them.
        "subject": [key[1].replace("\x00", "\ufffd") for key in keys],
        "hour": list(hours.to_pydatetime()),
        "requests": activity.requests[chosen],
        "cost": activity.cost[chosen],
        "networks": distinct[:, 0],
        "countries": distinct[:, 1],
        "user_agents": distinct[:, 2],
        "gaps": activity.gaps[chosen].tolist(),
    })


def record_activity(store: DecisionStore, activity: HourlyActivity, subjects: Iterable[SubjectKey], touched: np.ndarray) -> int:
    """Write the rows of those of ``subjects`` with a non-shadow decision or an open case; return the rows written.

    Call it after the batch's decisions are stored, so that a subject acted
    on in this batch gets its rows.
    """
    subjects = set(subjects)
    if not subjects:
        return 0
    chosen = decided_without_shadow(store, subjects)
    with Session(store.engine) as session:
        chosen |= subjects_with_rows(session, CaseRow, subjects - chosen, CaseRow.status == "open")
    rows = activity.rows(chosen, touched)
    if rows.empty:
        return 0
    return ActivityLog(store.engine).store_rows(rows)


__all__ = ["KEPT_HOURS", "HourlyActivity", "record_activity"]
