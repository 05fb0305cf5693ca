"""EventTail before StateScorer: events in arrival order, late by at most the lateness, give ``score_events``' findings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from detector.state.tail import EventTail
from tests.factories import DAY, T0, events, frame
from tests.test_chunk_invariance import IMAGE, traffic  # noqa: F401 (the traffic fixture is used by name)
from tests.test_state_scorer import ScoredRun, assert_run_equals_batch, batch_findings, score_through_tail

LATENESS = 120.0


def in_arrival_order(whole: pd.DataFrame, delays: np.ndarray, window: float) -> tuple[pd.DataFrame, list[int]]:
    """Return ``whole`` ordered by ``ts + delays`` (seconds), and the row indices that start each ``window`` of arrival time."""
    arrival = whole["ts"].to_numpy() + delays
    order = np.argsort(arrival, kind="stable")
    cuts = (np.flatnonzero(np.diff(arrival[order] // window) > 0) + 1).tolist()
    return whole.iloc[order].reset_index(drop=True), cuts


def fed_in_chunks(chunks: Sequence[pd.DataFrame], plans, lateness: float = LATENESS) -> ScoredRun:
    """Feed each frame of ``chunks`` in turn through the tail and the state."""
    arrived = pd.concat(chunks, ignore_index=True)
    cuts = np.cumsum([len(chunk) for chunk in chunks])[:-1].tolist()
    return score_through_tail(arrived, cuts, plans, lateness)


def _reasons(run: ScoredRun) -> set[str]:
    return set(run.inexact["why"])


def _rows(whole: pd.DataFrame, key: str, times: Sequence[float]) -> pd.DataFrame:
    """Return ``key``'s rows of ``whole`` at ``times`` (seconds after T0)."""
    ts = whole["ts"].to_numpy()
    mask = (whole["key_id"].to_numpy() == key) & np.isin(np.round(ts - T0, 4), np.round(np.asarray(times, float), 4))
    return whole[mask]


def _without(whole: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    return whole.drop(index=rows.index)


# The tail alone ---------------------------------------------------------------


def test_tail_holds_events_newer_than_watermark():
    tail = EventTail(60.0)
    first = events("a", T0 + np.array([0.0, 50.0, 100.0]))

    released = tail.add(first)

    assert released.frame["ts"].tolist() == [T0]
    assert len(tail) == 2
    assert tail.watermark == T0 + 40.0


def test_tail_releases_held_and_new_in_time_order():
    tail = EventTail(60.0)
    tail.add(events("a", T0 + np.array([100.0, 50.0])))

    released = tail.add(events("b", T0 + np.array([170.0, 45.0, 105.0])))

    assert (released.frame["ts"] - T0).tolist() == [45.0, 50.0, 100.0, 105.0]
    assert released.beyond_lateness == 0
    assert len(tail) == 1


def test_tail_counts_events_beyond_lateness():
    tail = EventTail(60.0)
    tail.add(events("a", T0 + np.array([100.0])))

    released = tail.add(events("a", T0 + np.array([39.0, 40.0, 41.0])))

    assert released.beyond_lateness == 1
    assert (released.frame["ts"] - T0).tolist() == [39.0]


def test_tail_without_lateness_releases_frame_as_given():
    tail = EventTail(0.0)
    batch = events("a", T0 + np.array([5.0, 1.0, 3.0]))
    tail.add(events("a", T0 + np.array([4.0])))

    released = tail.add(batch)

    assert released.frame is batch
    assert released.beyond_lateness == 2
    assert len(tail) == 0


def test_tail_lateness_lowered_to_zero_releases_held():
    """A worker started with lateness 0 on a checkpoint whose tail holds events releases them with the next batch."""
    tail = EventTail(60.0)
    tail.add(events("a", T0 + np.array([10.0, 30.0])))
    tail.lateness = 0.0

    released = tail.add(events("a", T0 + np.array([20.0])))

    assert (released.frame["ts"] - T0).tolist() == [10.0, 20.0, 30.0]
    assert len(tail) == 0


def test_tail_release_all_moves_watermark():
    tail = EventTail(60.0)
    tail.add(events("a", T0 + np.array([10.0, 30.0, 20.0])))

    released = tail.release_all()

    assert released["ts"].tolist() == [T0 + 10.0, T0 + 20.0, T0 + 30.0]
    assert len(tail) == 0
    assert tail.watermark == T0 + 30.0
    assert tail.add(events("a", T0 + np.array([29.0]))).beyond_lateness == 1


def test_tail_empty_frame_releases_nothing():
    tail = EventTail(60.0)

    released = tail.add(events("a", np.array([])))

    assert released.frame is None
    assert tail.watermark is None
    assert tail.release_all() is None


def test_tail_negative_lateness_rejected():
    with pytest.raises(ValueError, match="lateness must be 0 or more seconds, got -1"):
        EventTail(-1.0)


# Simulated traffic in arrival order -------------------------------------------


def test_arrival_order_equals_score_events(traffic, plans, policy):
    """The simulated events sorted by response end, each latency capped at the lateness, in 600-second batches."""
    delays = np.minimum(traffic["latency_ms"].to_numpy() / 1000.0, LATENESS)
    arrived, cuts = in_arrival_order(traffic, delays, 600.0)
    late = np.maximum.accumulate(arrived["ts"].to_numpy()) > arrived["ts"].to_numpy()

    run = score_through_tail(arrived, cuts, plans, LATENESS)

    assert late.sum() > 1000
    assert_run_equals_batch(run, traffic, plans, policy)


def test_arrival_order_without_lateness_is_inexact(traffic, plans):
    """The same input with lateness 0 makes subjects inexact, so the test above compares late events."""
    delays = np.minimum(traffic["latency_ms"].to_numpy() / 1000.0, LATENESS)
    arrived, cuts = in_arrival_order(traffic, delays, 600.0)

    run = score_through_tail(arrived, cuts, plans, 0.0)

    assert "late_event" in _reasons(run)


# No shrinking: each example scores half a day of traffic in hundreds of chunks.
@settings(max_examples=3, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(
    lateness=st.sampled_from([1.0, 5.0, 30.0, 120.0]),
    window=st.sampled_from([60.0, 300.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_small_lateness_equals_score_events(traffic, plans, policy, lateness, window, seed):
    """Each event of 12 simulated hours is delayed by a random time up to the lateness, then fed in batches."""
    start = traffic["ts"].min() + DAY
    hours = traffic[(traffic["ts"] >= start) & (traffic["ts"] < start + DAY / 2)].reset_index(drop=True)
    delays = np.random.default_rng(seed).uniform(0.0, lateness, len(hours))
    arrived, cuts = in_arrival_order(hours, delays, window)

    run = score_through_tail(arrived, cuts, plans, lateness)

    assert len(batch_findings(hours, plans, policy)) >= 10
    assert_run_equals_batch(run, hours, plans, policy)


# Adversarial late events ------------------------------------------------------


def _bot(key: str, seconds: Sequence[float], **fields) -> pd.DataFrame:
    return events(key, T0 + np.asarray(seconds, float), prompt_hash="same", **fields)


def test_late_event_at_lateness_bound_is_exact(plans, policy):
    """The newest event before it is 120 s newer, so the late event is exactly at the watermark."""
    whole = frame(_bot("bot", np.arange(900.0)))
    late = _rows(whole, "bot", [580.0])
    early = _without(whole, late)

    chunks = [early[early["ts"] <= T0 + 700], late, early[early["ts"] > T0 + 700]]
    run = fed_in_chunks(chunks, plans)

    assert run.findings
    assert_run_equals_batch(run, whole, plans, policy)
    assert "late_event" in _reasons(fed_in_chunks(chunks, plans, lateness=0.0))


def test_late_event_just_beyond_bound_is_reported(plans, policy):
    """An event 0.9 ms older than the watermark, after a newer event of its subject was applied, stays inexact."""
    whole = frame(_bot("bot", [*np.arange(580.0), 579.0008, *np.arange(580.0, 900.0)]), _bot("other", [699.0009]))
    late = _rows(whole, "bot", [579.0])
    early = _without(whole, late)

    run = fed_in_chunks([early[early["ts"] <= T0 + 699.0009], late, early[early["ts"] > T0 + 699.0009]], plans)

    assert list(run.inexact.groupby("why").size().items()) == [("beyond_lateness", 1), ("late_event", 1)]


def test_late_event_across_utc_midnight(plans, policy):
    """A late image request of the previous day arrives after a minute of the next day's requests."""
    seconds = DAY - 300 + np.arange(600.0)
    whole = frame(_bot("night", seconds, images=1, endpoint=IMAGE), _bot("steady", seconds[::7]))
    late = _rows(whole, "night", [DAY - 30.0])
    early = _without(whole, late)

    chunks = [early[early["ts"] < T0 + DAY + 60], late, early[early["ts"] >= T0 + DAY + 60]]
    run = fed_in_chunks(chunks, plans)

    assert {finding.reason for finding in run.findings} >= {"image_quota"}
    assert_run_equals_batch(run, whole, plans, policy)
    assert "late_event" in _reasons(fed_in_chunks(chunks, plans, lateness=0.0))


def test_late_event_moves_threshold_crossing(plans, policy):
    """The eleventh image of a ten-image plan is crossed at 100 s only with the image at 50 s, which arrives after it."""
    whole = frame(events("images", T0 + np.arange(0.0, 101.0, 10.0), images=1, endpoint=IMAGE), _bot("clock", np.arange(0.0, 200.0, 5.0)))
    late = _rows(whole, "images", [50.0])
    early = _without(whole, late)

    run = fed_in_chunks([early[early["ts"] <= T0 + 150], late, early[early["ts"] > T0 + 150]], plans)

    quota = [finding for finding in run.findings if finding.reason == "image_quota"]
    assert [finding.detected_at for finding in quota] == [T0 + 100.0]
    assert_run_equals_batch(run, whole, plans, policy)


def test_late_event_is_subjects_first(plans, policy):
    """The first request of ``first`` arrives after its later ones, and after the first request of ``second``."""
    whole = frame(_bot("first", np.arange(0.0, 900.0)), _bot("second", np.arange(0.5, 900.0)))
    late = _rows(whole, "first", [0.0])
    early = _without(whole, late)

    chunks = [early[early["ts"] <= T0 + 60], late, early[early["ts"] > T0 + 60]]
    run = fed_in_chunks(chunks, plans)

    assert {finding.subject for finding in run.findings} == {"first", "second"}
    assert_run_equals_batch(run, whole, plans, policy)
    assert "late_event" in _reasons(fed_in_chunks(chunks, plans, lateness=0.0))
