"""The automation load state on hard cases: its window measures and findings equal the batch detector's."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from detector.detectors.automation_load import WINDOW_MS, _square_gap_sums, _trailing_same_value_count, _trailing_sum
from detector.features.prepare import composite_time, trailing_count
from detector.state.chunk import prompt_codes
from detector.state.load_window import LoadWindows
from tests.factories import T0, events, frame
from tests.test_chunk_invariance import CASES, assert_chunk_invariant, run_in_chunks

LOAD = next(case for case in CASES if case.name == "automation_load")
MIN_PARALLEL = 3
RETENTION_MS = 2 * WINDOW_MS


def _batch_measures(subject, ts_ms, prompt) -> dict[str, np.ndarray]:
    """Return the measures ``load_rows`` takes at every event, for events sorted by subject then time."""
    keys = composite_time(subject, ts_ms)
    count = trailing_count(keys, WINDOW_MS / 1000)
    positions = np.arange(len(subject))
    start = positions - count + 1
    parallel = trailing_count(keys, 1.0)
    return {
        "count": count,
        "parallel": parallel,
        "waves": _trailing_sum((parallel == MIN_PARALLEL).astype(np.int64), start, positions),
        "same_prompt": _trailing_same_value_count(subject, ts_ms, prompt_codes(prompt), WINDOW_MS / 1000),
        "square_sum": _square_gap_sums(subject, ts_ms, start, positions),
        "span_ms": ts_ms - ts_ms[start],
    }


def _streamed_measures(subject, ts_ms, prompt, cuts, checkpoint: bool = False) -> dict[str, np.ndarray]:
    """Append the events to ``LoadWindows`` in batches ending before each index of ``cuts`` and collect their measures.

    With ``checkpoint``, the windows are pickled and restored after every batch, as a state worker's checkpoint is.
    """
    windows = LoadWindows(retention_ms=RETENTION_MS, min_parallel=MIN_PARALLEL)
    subjects = np.unique(subject)
    count_from = np.zeros(len(subjects), np.int64)
    order = np.lexsort((ts_ms, subject))
    time_order = np.argsort(ts_ms[order], kind="stable")
    collected = {name: np.zeros(len(subject), np.int64) for name in _batch_measures(subject[:1], ts_ms[:1], prompt[:1])}
    bounds = [0, *cuts, len(subject)]
    for begin, end in zip(bounds[:-1], bounds[1:]):
        rows = np.sort(order[time_order[begin:end]])
        slots = windows.segments.slots_for([("key", str(code)) for code in subjects])
        measures, count_from = windows.append(slots, count_from, subject[rows], ts_ms[rows], prompt[rows])
        last_ms = np.full(len(subjects), -1, np.int64)
        np.maximum.at(last_ms, subject[rows], ts_ms[rows])
        windows.trim(slots, np.maximum(last_ms, 0), count_from)
        for name in collected:
            collected[name][rows] = getattr(measures, name)
        if checkpoint:
            windows = pickle.loads(pickle.dumps(windows))
    return collected


def _random_events(rng, subjects: int, size: int, prompts: int):
    """Return events sorted by subject then time: bursts inside one millisecond, gaps longer than the window, repeats."""
    subject = np.sort(rng.integers(0, subjects, size=size))
    gaps = rng.choice([0, 0, 1, 7, 250, 999, 1000, 1001, WINDOW_MS, WINDOW_MS + 1, 3_600_000], size=size)
    ts_ms = 1_795_000_000_000 + np.cumsum(gaps)
    ts_ms = np.concatenate([np.sort(ts_ms[subject == code]) for code in range(subjects)])
    prompt = rng.integers(0, prompts + 1, size=size).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return subject, ts_ms, prompt


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_windows_measures_equal_batch(seed):
    rng = np.random.default_rng(seed)
    subject, ts_ms, prompt = _random_events(rng, subjects=4, size=3000, prompts=12)
    cuts = np.sort(rng.choice(np.arange(1, len(subject)), size=40, replace=False)).tolist()

    streamed = _streamed_measures(subject, ts_ms, prompt, cuts)

    for name, expected in _batch_measures(subject, ts_ms, prompt).items():
        assert streamed[name].tolist() == expected.tolist(), name


@pytest.mark.parametrize("seed", [4, 5])
def test_windows_measures_equal_batch_across_checkpoints(seed):
    rng = np.random.default_rng(seed)
    subject, ts_ms, prompt = _random_events(rng, subjects=4, size=3000, prompts=12)
    cuts = np.sort(rng.choice(np.arange(1, len(subject)), size=40, replace=False)).tolist()

    streamed = _streamed_measures(subject, ts_ms, prompt, cuts, checkpoint=True)

    for name, expected in _batch_measures(subject, ts_ms, prompt).items():
        assert streamed[name].tolist() == expected.tolist(), name


def test_windows_one_event_per_batch():
    rng = np.random.default_rng(4)
    subject, ts_ms, prompt = _random_events(rng, subjects=2, size=400, prompts=3)

    streamed = _streamed_measures(subject, ts_ms, prompt, list(range(1, len(subject))))

    for name, expected in _batch_measures(subject, ts_ms, prompt).items():
        assert streamed[name].tolist() == expected.tolist(), name


def test_windows_forget_then_append_again():
    windows = LoadWindows(retention_ms=RETENTION_MS, min_parallel=MIN_PARALLEL)
    slots = windows.segments.slots_for([("key", "a")])
    ts_ms = 1_795_000_000_000 + np.arange(50) * 100
    prompt = np.full(50, 7, np.uint64)
    _, count_from = windows.append(slots, np.zeros(1, np.int64), np.zeros(50, np.int64), ts_ms, prompt)

    count_from = windows.forget(slots, count_from)
    measures, count_from = windows.append(slots, count_from, np.zeros(50, np.int64), ts_ms, prompt)

    assert measures.same_prompt.tolist() == list(range(1, 51))
    assert len(windows.prompt_counts) == 1
    assert windows.prompt_counts.get(slots, np.array([7], np.uint64)).tolist() == [50]


def test_windows_trim_keeps_retention():
    windows = LoadWindows(retention_ms=RETENTION_MS, min_parallel=MIN_PARALLEL)
    slots = windows.segments.slots_for([("key", "a")])
    ts_ms = 1_795_000_000_000 + np.arange(30) * 60_000
    _, count_from = windows.append(slots, np.zeros(1, np.int64), np.zeros(30, np.int64), ts_ms, np.zeros(30, np.uint64))

    windows.trim(slots, ts_ms[-1:], count_from)

    kept = windows.rows_of(slots)[1]
    assert kept.tolist() == ts_ms[ts_ms > ts_ms[-1] - RETENTION_MS].tolist()


# Findings of the state over chunks equal the batch detector's ----------------


def _rate(key: str, start: float, seconds: float, per_second: float, **fields):
    return events(key, start + np.arange(int(seconds * per_second)) / per_second, **fields)


def test_load_chunks_inside_one_millisecond(plans):
    stamp = T0 + 1200.007
    burst = events("burst", np.full(60, stamp), prompt_hash=[f"p{n % 4}" for n in range(60)])
    whole = frame(_rate("burst", T0 + 700, 500, 1.0, prompt_hash="same"), burst, _rate("burst", stamp + 0.001, 300, 2.0))
    first = int(np.searchsorted(whole["ts"].to_numpy(), stamp))

    findings = assert_chunk_invariant(LOAD, whole, [first + offset for offset in range(0, 61, 6)], plans)
    assert findings


def test_load_gap_longer_than_window(plans):
    before = _rate("gappy", T0, 700, 1.0, prompt_hash="same")
    after = _rate("gappy", T0 + 700 + 601, 700, 1.0, prompt_hash="same")
    whole = frame(before, after)

    findings = assert_chunk_invariant(LOAD, whole, [650, 700, 701, 1000], plans)
    assert {finding.detected_at >= T0 + 1301 for finding in findings} == {False, True}


def test_load_subject_back_after_quiet_hour(plans):
    first = _rate("returning", T0, 900, 1.0, prompt_hash="same")
    back = _rate("returning", T0 + 900 + 3600, 900, 1.5, prompt_hash="again")
    steady = _rate("steady", T0, 5400, 0.2)
    whole = frame(first, back, steady)
    cuts = range(37, len(whole), 211)

    findings = assert_chunk_invariant(LOAD, whole, cuts, plans)
    assert {finding.subject for finding in findings} >= {"returning"}


def test_load_many_prompts(plans):
    rng = np.random.default_rng(21)
    times = T0 + np.sort(rng.uniform(0, 1800, size=4000))
    prompts = [f"p{n}" for n in rng.integers(0, 400, size=4000)]
    prompts[1000:1600] = ["hot"] * 600
    whole = frame(events("mixed", times, prompt_hash=prompts), _rate("other", T0, 1800, 0.5))
    cuts = np.sort(rng.choice(np.arange(1, len(whole)), size=60, replace=False))

    findings = assert_chunk_invariant(LOAD, whole, cuts, plans)
    assert any(finding.evidence["top_prompt_share"] > 0.1 for finding in findings)


def test_load_bots_at_hundred_per_second(plans):
    looping = _rate("looping", T0, 660, 100.0, prompt_hash="loop")
    fresh = _rate("fresh", T0 + 30, 630, 100.0, prompt_hash=[f"q{n}" for n in range(63_000)])
    whole = frame(looping, fresh)
    cuts = np.searchsorted(whole["ts"].to_numpy(), T0 + np.arange(30, 660, 30.0))

    findings = assert_chunk_invariant(LOAD, whole, cuts, plans)
    assert {finding.subject for finding in findings} == {"looping", "fresh"}


def test_load_after_late_event_matches_batch_order(plans):
    bot = _rate("bot", T0, 1500, 1.0, prompt_hash="same")
    first, late, rest = bot.iloc[:700], bot.iloc[[650]], bot.iloc[700:]
    chunks = frame(first.drop(index=650)), frame(late), frame(rest)
    whole = frame(bot)
    cuts = np.cumsum([len(part) for part in chunks[:2]])
    arrived = pd.concat(chunks, ignore_index=True)

    run = run_in_chunks(LOAD, arrived, cuts, plans)

    assert run.inexact.to_dict("records") == [{"subject_type": "key", "subject": "bot", "why": "late_event"}]
    expected = [f for f in LOAD.batch(whole, plans) if f.detected_at >= T0 + 700]
    assert sorted(map(repr, [f for f in run.findings if f.detected_at >= T0 + 700])) == sorted(map(repr, expected))
