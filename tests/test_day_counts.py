"""Day sums and value counts of the anomaly state as arrays: merging carried and new parts of (subject, day)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd

from detector.detectors import AnomalyDetector
from detector.features import prepare_events
from detector.features.keyday import keyday_counts
from detector.state import AnomalyDayState, Chunk
from detector.state.day_counts import BUCKET, HOUR, NETWORK, PROMPT, SUMS, day_sums, value_counts
from tests.factories import DAY, T0, events, frame
from tests.test_chunk_invariance import CASES, SHIPPED_MODEL, assert_chunk_invariant, comparable, rows_at

ANOMALY = CASES[3]
FIRST_DAY = int(T0 // DAY)


def _parts(subject, day, requests, start, end) -> dict[str, np.ndarray]:
    """Return day parts with the given subjects, days, request counts and times. Every other sum is the request count."""
    requests = np.asarray(requests, np.int64)
    parts = {"subject": np.asarray(subject, np.int64), "day": np.asarray(day, np.int64)}
    parts.update({name: requests.copy() for name in SUMS})
    parts["window_start"] = np.asarray(start, np.float64)
    parts["window_end"] = np.asarray(end, np.float64)
    return parts


def _rows(subject, day, kind, value, count) -> dict[str, np.ndarray]:
    return {
        "subject": np.asarray(subject, np.int64),
        "day": np.asarray(day, np.int64),
        "kind": np.asarray(kind, np.int64),
        "value": np.asarray(value, np.uint64),
        "count": np.asarray(count, np.int64),
    }


def test_day_sums_empty():
    days = day_sums(_parts([], [], [], [], []))

    assert set(days) == {"subject", "day", *SUMS, "window_start", "window_end"}
    assert all(len(column) == 0 for column in days.values())


def test_day_sums_one_part():
    days = day_sums(_parts([0], [FIRST_DAY], [1], [T0], [T0]))

    assert days["requests"].tolist() == [1]
    assert days["window_start"].tolist() == days["window_end"].tolist() == [T0]


def test_day_sums_merges_parts_of_one_day():
    # Subject 1 has a carried part and a chunk part of one day. Subject 0 has a part on each side of midnight.
    parts = _parts(
        subject=[1, 0, 1, 0],
        day=[FIRST_DAY, FIRST_DAY, FIRST_DAY, FIRST_DAY + 1],
        requests=[5, 2, 3, 1],
        start=[T0 + 10, T0 + 50, T0 + 100, T0 + DAY],
        end=[T0 + 90, T0 + 60, T0 + 200, T0 + DAY],
    )

    days = day_sums(parts)

    assert days["subject"].tolist() == [0, 0, 1]
    assert days["day"].tolist() == [FIRST_DAY, FIRST_DAY + 1, FIRST_DAY]
    assert days["requests"].tolist() == [2, 1, 8]
    assert days["cost_nano"].tolist() == [2, 1, 8]
    assert days["window_start"].tolist() == [T0 + 50, T0 + DAY, T0 + 10]
    assert days["window_end"].tolist() == [T0 + 60, T0 + DAY, T0 + 200]


def test_value_counts_without_rows():
    days = day_sums(_parts([0], [FIRST_DAY], [1], [T0], [T0]))

    counts, merged = value_counts(days, _rows([], [], [], [], []))

    assert all(values.tolist() == [0] for values in counts.values())
    assert len(merged["value"]) == len(merged["day_row"]) == 0


def test_value_counts_distinct_and_most_frequent():
    days = day_sums(_parts([0, 0, 1], [FIRST_DAY, FIRST_DAY + 1, FIRST_DAY], [1, 1, 1], [T0] * 3, [T0] * 3))
    rows = _rows(
        subject=[0, 0, 0, 0, 0, 0, 1, 0],
        day=[FIRST_DAY] * 6 + [FIRST_DAY, FIRST_DAY + 1],
        kind=[NETWORK, NETWORK, NETWORK, PROMPT, PROMPT, PROMPT, BUCKET, HOUR],
        value=[7, 9, 7, 3, 3, 4, 11, 5],
        count=[1, 1, 2, 4, 1, 2, 6, 1],
    )

    counts, merged = value_counts(days, rows)

    assert counts["networks"].tolist() == [2, 0, 0]
    assert counts["top_prompt"].tolist() == [5, 0, 0]
    assert counts["peak_10m"].tolist() == [0, 0, 6]
    # The hour of the next UTC day counts for that day only.
    assert counts["active_hours"].tolist() == [0, 1, 0]
    assert merged["day_row"].tolist() == [0, 0, 0, 0, 1, 2]
    assert merged["count"].tolist() == [3, 1, 5, 2, 1, 6]


def test_value_counts_match_batch_counts(plans):
    day = events("mixed", T0 + np.arange(300) * 97.0, ip=["198.51.100.7", "203.0.113.9", "192.0.2.1"] * 100, prompt_hash=["a", "b"] * 150)
    whole = frame(day)
    prepared = prepare_events(whole, plans)
    state = AnomalyDayState(AnomalyDetector(SHIPPED_MODEL))

    for start in range(0, 300, 37):
        state.update(Chunk(whole.iloc[start : start + 37].reset_index(drop=True), plans))
    carried = state.days.take([("key", "mixed")])
    pairs = state.counts.pairs_of(("key", "mixed"))
    expected = keyday_counts(prepared).iloc[0]

    assert carried.values["requests"].tolist() == [300]
    kinds = pairs["kind"]
    assert int((kinds == NETWORK).sum()) == expected["networks"] == 3
    assert int((kinds == HOUR).sum()) == expected["active_hours"]
    assert int(pairs["count"][kinds == PROMPT].max()) == expected["top_prompt"] == 150
    for name in ("networks", "active_hours", "top_prompt", "peak_10m", "user_agents", "countries"):
        assert carried.values[name].tolist() == [expected[name]], name


def test_anomaly_one_event_chunks(plans):
    whole = frame(events("single", T0 + np.arange(6) * 3600.0), events("closer", [T0 + DAY + 1.0]))

    assert_chunk_invariant(ANOMALY, whole, range(1, len(whole)), plans)


def test_anomaly_one_subject_per_chunk(plans):
    busy = events("busy", T0 + np.arange(4000) * 20.0, prompt_hash="same", cost=0.5)
    quiet = events("quiet", T0 + 7200 + np.arange(50) * 600.0)
    whole = frame(busy, quiet, events("busy", [T0 + DAY + 5.0]))

    findings = assert_chunk_invariant(ANOMALY, whole, rows_at(whole, [T0 + 7200, T0 + DAY]), plans)

    assert [finding.subject for finding in findings] == ["busy"]


def test_anomaly_event_at_utc_midnight(plans):
    """An event exactly at midnight belongs to the new day and closes the day before it."""
    before = events("edge", T0 + DAY - 120 + np.arange(2) * 60.0)
    midnight = events("edge", [T0 + DAY, T0 + DAY + 30.0])
    whole = frame(before, midnight)
    state = AnomalyDayState(AnomalyDetector(SHIPPED_MODEL))

    state.update(Chunk(frame(before), plans))
    state.update(Chunk(frame(midnight), plans))
    carried = state.days.take([("key", "edge")])

    assert carried.values["day"].tolist() == [FIRST_DAY + 1]
    assert carried.values["requests"].tolist() == [2]
    for cut in range(1, len(whole)):
        assert_chunk_invariant(ANOMALY, whole, [cut], plans)


def _busy(key: str) -> pd.DataFrame:
    """Return a day of requests that the shipped model isolates: one every 20 seconds with one prompt."""
    return events(key, T0 + np.arange(4000) * 20.0, prompt_hash="same", cost=0.5)


def test_anomaly_day_closes_while_another_stays_open(plans):
    fresh = events("fresh", T0 + np.arange(300) * 200.0, prompt_hash=[f"p{number}" for number in range(300)])
    next_day = events("busy", [T0 + DAY + 60.0])
    state = AnomalyDayState(AnomalyDetector(SHIPPED_MODEL))

    state.update(Chunk(frame(_busy("busy"), fresh), plans))
    open_pairs = state.counts.pairs_of(("key", "fresh"))
    found = state.update(Chunk(frame(next_day), plans)).findings
    carried = state.days.take([("key", "busy"), ("key", "fresh")]).values

    assert [finding.subject for finding in found] == ["busy"]
    # The busy key's next day starts from its one request: network, user agent, country, hour and bucket.
    assert len(state.counts.pairs_of(("key", "busy"))["kind"]) == 5
    assert carried["day"].tolist() == [FIRST_DAY + 1, FIRST_DAY]
    assert carried["top_prompt"].tolist() == [0, 1]
    for name, column in state.counts.pairs_of(("key", "fresh")).items():
        assert column.tolist() == open_pairs[name].tolist(), name

    closed = state.close_days(state.newest)
    expected = AnomalyDetector(SHIPPED_MODEL).detect(prepare_events(frame(_busy("busy"), fresh, next_day), plans))
    assert sorted(map(comparable, found + closed)) == sorted(map(comparable, expected))
    assert len(state.counts) == 5


def test_anomaly_state_continues_after_pickle(plans):
    whole = frame(_busy("busy"), _busy("other").assign(ts=lambda rows: rows["ts"] + 7), events("busy", [T0 + DAY + 60.0]))
    cuts = [0, *rows_at(whole, [T0 + 20000, T0 + 50000, T0 + DAY]), len(whole)]
    chunks = [Chunk(whole.iloc[start:end].reset_index(drop=True), plans) for start, end in zip(cuts[:-1], cuts[1:])]
    state = AnomalyDayState(AnomalyDetector(SHIPPED_MODEL))
    state.update(chunks[0])

    loaded = pickle.loads(pickle.dumps(state))
    original = [finding for chunk in chunks[1:] for finding in state.update(chunk).findings]
    original += state.close_days(state.newest)
    continued = [finding for chunk in chunks[1:] for finding in loaded.update(chunk).findings]
    continued += loaded.close_days(loaded.newest)

    assert {finding.subject for finding in original} == {"busy", "other"}
    assert list(map(comparable, continued)) == list(map(comparable, original))
