"""anomaly from per-subject state: the counts and sums of each subject's open UTC day."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.detectors.anomaly import AnomalyDetector
from detector.features import PreparedEvents
from detector.features.keyday import DAY, KEYDAY_FEATURES, NANO, feature_columns, nano_credits
from detector.features.runs import run_starts
from detector.state.chunk import UNKNOWN_PROMPT, Chunk, ChunkFindings, inexact_subjects
from detector.state.day_counts import (
    BUCKET,
    COUNTRY,
    DISTINCT,
    HOUR,
    MEASURES,
    MOST_FREQUENT,
    NETWORK,
    PROMPT,
    SUMS,
    USER_AGENT,
    concatenated,
    day_positions,
    day_sums,
    merged_rows,
    selected,
    value_counts,
)
from detector.state.open_day_counts import AddedCounts, OpenDayCounts
from detector.state.table import Columns, SubjectKey, SubjectStates

__all__ = ["AnomalyDayState", "BUCKET", "COUNTRY", "HOUR", "NETWORK", "PROMPT", "USER_AGENT"]


class AnomalyDayState:
    """Each subject's open UTC day as counts and sums, scored as the day closes.

    Per subject, ``days`` keeps the open day's request count, cost in
    nano-credits, images, tokens, errors, and first and last request time.
    It also keeps the day's numbers of distinct networks, user agents,
    countries and hours, and the request counts of its most frequent prompt
    and 10-minute bucket. ``counts`` keeps the request count of each
    distinct network, user agent, country, hour, prompt and 10-minute bucket
    of the open day. A chunk raises the distinct and most-frequent counts
    from the pairs it adds, so it costs time in proportion to its events,
    however long the day has run. Networks, user agents, countries and
    prompts are kept as 64-bit hashes of their text, so two values whose
    hashes collide count as one (one chance in 2**64 per pair).

    A day is scored once it is closed: it ended before the newest event seen
    so far, as ``AnomalyDetector`` closes the days of its input. A subject's
    day is scored in the chunk that closes it when the subject has events in
    that chunk. Otherwise it waits for the subject's next chunk or for
    ``close_days``, which a caller runs at the end of its input or on a clock
    (a quiet key's last day). After ``close_days`` at the newest event of a
    time-sorted input, the findings equal those of the batch detector on the
    whole input, except for the subjects reported in ``ChunkFindings.inexact``.
    A day with prompts that never repeat keeps one pair per request in
    ``counts`` until it closes, which costs memory, not time.
    """

    def __init__(self, detector: AnomalyDetector) -> None:
        self.detector = detector
        self.days = SubjectStates(
            values={
                "last_ms": ("int64", -1),
                "plan": ("uint64", 0),
                "day": ("int64", -1),
                **{name: ("int64", 0) for name in SUMS},
                **{name: ("int64", 0) for name in MEASURES},
                "window_start": ("float64", np.nan),
                "window_end": ("float64", np.nan),
                "daily_budget": ("float64", 0.0),
                "expected_rph": ("float64", 0.0),
            },
            rows={},
        )
        # Not a ``SubjectStates``, so ``workers.state_store.state_tables`` refuses this state. Checkpoints pickle it whole.
        self.counts = OpenDayCounts()
        self.newest = -np.inf
        # The account and plan names of each subject's latest request, for the findings of ``close_days``.
        self.names: dict[SubjectKey, tuple[str, str]] = {}

    # A list while a caller collects the closed days to score them with a second model too (the state
    # worker's shadow): each scoring appends (prepared, day columns, feature matrix). Never in a checkpoint.
    closed_days: list | None = None

    def __getstate__(self) -> dict:
        values = dict(self.__dict__)
        values.pop("closed_days", None)
        return values

    def update(self, chunk: Chunk) -> ChunkFindings:
        """Add ``chunk``'s events to their subjects' open days and return the findings of the days that closed."""
        taken = self.days.take(chunk.keys)
        inexact = inexact_subjects(chunk, taken)
        self.newest = max(self.newest, float(chunk.ts.max()))
        slots = self.counts.slots_for(chunk.keys)

        carried = taken.values
        days = day_sums(concatenated(_carried_sums(carried, carried["day"] >= 0), _chunk_sums(chunk)))
        closed = (days["day"] + 1) * DAY <= self.newest
        days.update(self._day_measures(chunk, slots, carried, days, closed))

        found = self._findings(chunk.prepared, selected(days, closed))
        self._carry_on(chunk, carried, selected(days, ~closed))

        subjects = chunk.prepared.subjects
        self.names.update(zip(chunk.keys, zip(subjects["account_id"].tolist(), subjects["plan"].tolist())))
        return ChunkFindings(findings=found, inexact=inexact)

    def close_days(self, as_of: float) -> list:
        """Score the open days of every subject that ended before ``as_of`` and drop them from the state."""
        keys = list(self.names)
        if not keys:
            return []
        carried = self.days.take(keys).values
        ended = (carried["day"] >= 0) & ((carried["day"] + 1) * DAY <= as_of)
        if not ended.any():
            return []

        days = day_sums(_carried_sums(carried, ended))
        days.update((name, carried[name][ended]) for name in MEASURES)
        found = self._findings(self._named_subjects(keys, carried), days)

        chosen = np.flatnonzero(ended)
        ended_keys = [keys[index] for index in chosen]
        self.counts.close(self.counts.slots_for(ended_keys))
        cleared = selected(carried, chosen)
        cleared["day"] = np.full(len(chosen), -1, np.int64)
        for name in (*SUMS, *MEASURES):
            cleared[name] = np.zeros(len(chosen), np.int64)
        self.days.put(ended_keys, cleared, {"owner": np.empty(0, np.int64)})
        return found

    def _day_measures(self, chunk: Chunk, slots: np.ndarray, carried: Columns, days: Columns, closed: np.ndarray) -> Columns:
        """Return the distinct and most-frequent counts (``MEASURES``) of each entry of ``days`` after adding the chunk's events.

        The subjects' carried days and the days left open go through
        ``counts``: first the carried days' pairs, then the carried days that
        closed end there, then the new open days' pairs. A closed day that was
        not carried (late events, or a day that begins and ends within the
        chunk) is counted from the chunk's rows alone.
        """
        is_carried = days["day"] == carried["day"][days["subject"]]
        rows = _chunk_rows(chunk)
        in_table = (is_carried | ~closed)[day_positions(days, rows["subject"], rows["day"])]
        measures, _ = value_counts(days, selected(rows, ~in_table))
        for name in MEASURES:
            measures[name][is_carried] = carried[name][days["subject"][is_carried]]

        pairs = merged_rows(days, selected(rows, in_table))
        of_carried_day = is_carried[pairs["day_row"]]
        self._add_pairs(slots, selected(pairs, of_carried_day), measures)
        ending = (carried["day"] >= 0) & ((carried["day"] + 1) * DAY <= self.newest)
        self.counts.close(slots[ending])
        self._add_pairs(slots, selected(pairs, ~of_carried_day), measures)
        return measures

    def _add_pairs(self, slots: np.ndarray, pairs: Columns, measures: Columns) -> None:
        """Add merged value rows to ``counts`` and raise the ``measures`` of their days in place."""
        added = self.counts.add(slots[pairs["subject"]], pairs["kind"], pairs["value"], pairs["count"])
        _raise_measures(measures, pairs["day_row"], pairs["kind"], added)

    def _findings(self, prepared: PreparedEvents, days: Columns) -> list:
        """Score the closed ``days`` with the detector's model and return the findings of the flagged ones.

        Only the flagged days become a frame, which the detector's ``flagged_findings`` reads.
        """
        if not len(days["subject"]):
            return []
        columns = {("cost" if name == "cost_nano" else name): column for name, column in days.items()}
        columns["cost"] = columns["cost"] / NANO
        columns.update(feature_columns(columns, prepared.subjects))
        features = np.column_stack([columns[name] for name in KEYDAY_FEATURES]).astype(np.float64)
        if self.closed_days is not None:
            self.closed_days.append((prepared, columns, features))
        anomaly = self.detector.model.anomaly_scores(features)
        flagged = anomaly > self.detector.model.threshold
        if not flagged.any():
            return []
        rows = pd.DataFrame(selected(columns, flagged))
        return self.detector.flagged_findings(prepared, rows, anomaly[flagged])

    def _carry_on(self, chunk: Chunk, carried: Columns, still_open: Columns) -> None:
        """Put each chunk subject's open day, if any, back into the state.

        A subject has at most one open day, the UTC day of the newest event
        seen, so ``still_open`` has at most one entry per subject.
        """
        subjects = chunk.prepared.subjects
        values = dict(carried)
        values["last_ms"] = np.maximum(chunk.last_ms, carried["last_ms"])
        values["plan"] = chunk.plan_hash
        values["daily_budget"] = subjects["daily_budget"].to_numpy()
        values["expected_rph"] = subjects["expected_rph"].to_numpy()
        values["day"] = np.full(len(chunk.keys), -1, np.int64)
        for name in (*SUMS, *MEASURES):
            values[name] = np.zeros(len(chunk.keys), np.int64)
        owners = still_open["subject"]
        for name in ("day", *SUMS, *MEASURES, "window_start", "window_end"):
            values[name] = values[name].copy()
            values[name][owners] = still_open[name]
        self.days.put(chunk.keys, values, {"owner": np.empty(0, np.int64)})

    def _named_subjects(self, keys: list[SubjectKey], carried: Columns) -> PreparedEvents:
        """Return a ``PreparedEvents`` with only the subject table of ``keys``, for findings outside a chunk."""
        subjects = pd.DataFrame(
            {
                "subject_type": [key[0] for key in keys],
                "subject": [key[1] for key in keys],
                "account_id": [self.names[key][0] for key in keys],
                "plan": [self.names[key][1] for key in keys],
                "daily_budget": carried["daily_budget"],
                "expected_rph": carried["expected_rph"],
            }
        )
        return PreparedEvents(events=pd.DataFrame(), subjects=subjects, networks=[])


def _chunk_sums(chunk: Chunk) -> Columns:
    """Return the sums of the chunk's events per (subject, day)."""
    events = chunk.prepared.events
    ts = chunk.ts
    subject = chunk.subject.astype(np.int64)
    day = (ts // DAY).astype(np.int64)
    starts = run_starts(subject, day)
    ends = np.append(starts[1:], len(ts)) - 1
    tokens = events["prompt_tokens"].to_numpy() + events["completion_tokens"].to_numpy()
    return {
        "subject": subject[starts],
        "day": day[starts],
        "requests": (ends - starts + 1).astype(np.int64),
        "cost_nano": np.add.reduceat(nano_credits(events["cost"].to_numpy()), starts),
        "images": np.add.reduceat(events["images"].to_numpy().astype(np.int64), starts),
        "tokens": np.add.reduceat(tokens.astype(np.int64), starts),
        "errors": np.add.reduceat((events["status"].to_numpy() >= 400).astype(np.int64), starts),
        "window_start": ts[starts],
        "window_end": ts[ends],
    }


def _carried_sums(carried: Columns, chosen: np.ndarray) -> Columns:
    """Return the carried open days of the ``chosen`` subjects (a mask) as parts like ``_chunk_sums``."""
    return {
        "subject": np.flatnonzero(chosen),
        "day": carried["day"][chosen],
        **{name: carried[name][chosen] for name in SUMS},
        "window_start": carried["window_start"][chosen],
        "window_end": carried["window_end"][chosen],
    }


def _chunk_rows(chunk: Chunk) -> Columns:
    """Return one value row per event and kind (value unknown or blank: no row), with ``subject``, ``day`` and ``count`` 1."""
    ts = chunk.ts
    subject = chunk.subject.astype(np.int64)
    day = (ts // DAY).astype(np.int64)
    every = np.ones(len(ts), dtype=bool)
    parts = (
        (NETWORK, *_network_hashes(chunk)),
        (USER_AGENT, *_text_hashes(chunk, "user_agent", blank_known=True)),
        (COUNTRY, *_text_hashes(chunk, "country", blank_known=False)),
        (HOUR, (ts // 3600).astype(np.uint64), every),
        (PROMPT, chunk.prompt_hash, chunk.prompt_hash != UNKNOWN_PROMPT),
        (BUCKET, (ts // 600).astype(np.uint64), every),
    )
    known = np.concatenate([part[2] for part in parts])
    rows = {
        "subject": np.tile(subject, len(parts))[known],
        "day": np.tile(day, len(parts))[known],
        "kind": np.repeat(np.array([part[0] for part in parts], np.int64), len(ts))[known],
        "value": np.concatenate([part[1].astype(np.uint64) for part in parts])[known],
    }
    rows["count"] = np.ones(len(rows["subject"]), np.int64)
    return rows


def _raise_measures(measures: Columns, day_row: np.ndarray, kind: np.ndarray, added: AddedCounts) -> None:
    """Raise each day's distinct counts by its new pairs and its most-frequent counts to its pairs' new counts."""
    for name, of_kind in DISTINCT.items():
        chosen = (kind == of_kind) & added.is_new
        measures[name] += np.bincount(day_row[chosen], minlength=len(measures[name]))
    for name, of_kind in MOST_FREQUENT.items():
        chosen = kind == of_kind
        np.maximum.at(measures[name], day_row[chosen], added.count[chosen])


def _network_hashes(chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """Return a hash of each event's network text, and where its network is known."""
    codes = chunk.prepared.events["net"].to_numpy()
    networks = np.asarray(chunk.prepared.networks, dtype=object)
    hashed = pd.util.hash_array(networks) if len(networks) else np.zeros(1, np.uint64)
    return hashed[np.maximum(codes, 0)], codes >= 0


def _text_hashes(chunk: Chunk, column: str, *, blank_known: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return a hash of each prepared event's ``column`` text, and where it counts: blank counts only with ``blank_known``."""
    codes, uniques = pd.factorize(chunk.frame[column])
    uniques = np.asarray(uniques, dtype=object)
    hashed = pd.util.hash_array(uniques) if len(uniques) else np.zeros(1, np.uint64)
    rows = chunk.prepared.input_rows
    values = hashed[np.maximum(codes, 0)][rows]
    known = codes[rows] >= 0
    if not blank_known and len(uniques):
        known &= uniques[np.maximum(codes, 0)][rows] != ""
    return values, known
