"""Incremental detectors over chunks of a time-sorted input give the batch detector's findings on the whole input.

Each chunk is prepared alone, as a stream batch would be. A detector plugs in
as a ``Case``: how to build its state, which batch findings it must match, and
which findings it returns after the last chunk (for findings that measure the
whole input).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.detectors import AbnormalCostDetector, AnomalyDetector, AutomationDetector, Finding, ImageQuotaDetector
from detector.detectors.device_graph import MAX_SUBJECT_EDGES
from detector.detectors.sharing import KeySharingDetector
from detector.features import prepare_events
from detector.features.hosting import HostingNetworks
from detector.features.keyday import keyday_counts
from detector.model_registry import load_model
from detector.readers import read_events
from detector.simulate import simulate_traffic
from detector.state.anomaly import HOUR, NETWORK, PROMPT
from detector.state import AnomalyDayState, AutomationLoadState, AutomationPatternState, Chunk, ImageQuotaState
from detector.state.cost import AbnormalCostState
from detector.state.sharing import KeySharingState
from tests.factories import DAY, T0, events, frame

IMAGE = "/v1/images/generations"
SHIPPED_MODEL = load_model()


@dataclass(frozen=True)
class Case:
    """One incremental detector and the part of the batch detector's findings it must reproduce."""

    name: str
    make_state: Callable[[], object]
    batch: Callable[[pd.DataFrame, object], list[Finding]]
    finish: Callable[[object], list[Finding]] | None = None


def _of_kind(kind: str, findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if finding.evidence.get("kind") == kind]


def _whole_input(detector, kind: str | None = None) -> Callable[[pd.DataFrame, object], list[Finding]]:
    """Return the batch pass of ``detector`` over the whole input, keeping only findings of ``kind`` when given."""

    def batch(whole: pd.DataFrame, plans) -> list[Finding]:
        findings = detector.detect(prepare_events(whole, plans))
        return findings if kind is None else _of_kind(kind, findings)

    return batch


CASES = [
    Case("image_quota", lambda: ImageQuotaState(ImageQuotaDetector()), _whole_input(ImageQuotaDetector())),
    Case("automation_load", lambda: AutomationLoadState(AutomationDetector()), _whole_input(AutomationDetector(), "load")),
    Case(
        "automation_pattern",
        lambda: AutomationPatternState(AutomationDetector()),
        _whole_input(AutomationDetector(), "pattern"),
        finish=lambda state: state.pattern_findings(),
    ),
    Case(
        "anomaly",
        lambda: AnomalyDayState(AnomalyDetector(SHIPPED_MODEL)),
        _whole_input(AnomalyDetector(SHIPPED_MODEL)),
        finish=lambda state: state.close_days(state.newest),
    ),
    Case("key_sharing", lambda: KeySharingState(KeySharingDetector()), _whole_input(KeySharingDetector())),
    Case("abnormal_cost", lambda: AbnormalCostState(AbnormalCostDetector()), _whole_input(AbnormalCostDetector())),
]
# The detectors that build findings event by event, so that each chunk returns its own.
EVENT_CASES = CASES[:2]


@dataclass(slots=True)
class ChunkedRun:
    findings: list[Finding]
    inexact: pd.DataFrame


def run_in_chunks(case: Case, whole: pd.DataFrame, cuts: Sequence[int], plans) -> ChunkedRun:
    """Feed ``whole`` to a fresh state in chunks ending before each row index in ``cuts``."""
    state = case.make_state()
    bounds = [0, *sorted(set(int(cut) for cut in cuts if 0 < cut < len(whole))), len(whole)]
    findings: list[Finding] = []
    inexact = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        result = state.update(Chunk(whole.iloc[start:end].reset_index(drop=True), plans))
        findings.extend(result.findings)
        inexact.append(result.inexact)
    if case.finish is not None:
        findings.extend(case.finish(state))
    return ChunkedRun(findings, pd.concat(inexact, ignore_index=True))


def comparable(finding: Finding) -> tuple:
    """Return the fields that must match; the account and plan names are those of the chunk's last request."""
    return (
        finding.subject_type,
        finding.subject,
        finding.reason,
        finding.detected_at,
        finding.score,
        finding.impact,
        finding.window_start,
        finding.window_end,
        json.dumps(finding.evidence, sort_keys=True),
    )


def assert_chunk_invariant(case: Case, whole: pd.DataFrame, cuts: Sequence[int], plans) -> list[Finding]:
    expected = sorted(map(comparable, case.batch(whole, plans)))
    run = run_in_chunks(case, whole, cuts, plans)

    assert run.inexact.empty, f"{case.name}: unexpected inexact subjects {run.inexact.to_dict('records')}"
    assert sorted(map(comparable, run.findings)) == expected, f"{case.name} with cuts {list(cuts)}"
    return run.findings


def rows_at(whole: pd.DataFrame, times: Sequence[float]) -> list[int]:
    """Return the row indices at which chunks start for each time: the first row at or after it."""
    return [int(np.searchsorted(whole["ts"].to_numpy(), time, side="left")) for time in times]


# Simulated traffic ------------------------------------------------------


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("chunks")
    simulation = simulate_traffic(folder, keys=80, days=3, seed=5)
    return read_events([simulation.events_path]).frame


@pytest.fixture(scope="module")
def batch_findings(traffic, plans) -> dict[str, list[Finding]]:
    return {case.name: case.batch(traffic, plans) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_simulated_traffic_has_findings(case, batch_findings):
    assert len(batch_findings[case.name]) >= 5


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_one_chunk_equals_batch(case, traffic, plans):
    assert_chunk_invariant(case, traffic, [], plans)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
@settings(max_examples=6, deadline=None)
@given(shares=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=40))
def test_random_splits_equal_batch(case, traffic, plans, shares):
    assert_chunk_invariant(case, traffic, [int(share * len(traffic)) for share in shares], plans)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_split_inside_ten_minute_buckets(case, traffic, plans):
    ts = traffic["ts"].to_numpy()
    buckets = np.arange(ts.min() // 600 * 600, ts.max(), 600.0)

    assert_chunk_invariant(case, traffic, rows_at(traffic, buckets + 299.5), plans)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_split_right_after_each_finding(case, traffic, plans, batch_findings):
    """Cut after every finding, so each escalation step is tested against steps carried from the chunk before."""
    times = [finding.detected_at for finding in batch_findings[case.name]]
    after = [int(np.searchsorted(traffic["ts"].to_numpy(), time, side="right")) for time in times]

    assert_chunk_invariant(case, traffic, after, plans)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_split_at_utc_midnights(case, traffic, plans):
    ts = traffic["ts"].to_numpy()
    midnights = np.arange(ts.min() // DAY * DAY + DAY, ts.max(), DAY)

    assert_chunk_invariant(case, traffic, rows_at(traffic, midnights), plans)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_five_minute_chunks(case, traffic, plans):
    ts = traffic["ts"].to_numpy()

    assert_chunk_invariant(case, traffic, rows_at(traffic, np.arange(ts.min(), ts.max(), 300.0)), plans)


# Hand-made cases ---------------------------------------------------------


def _bot(key: str, start: float, seconds: int, *, prompt: str = "same", plan: str = "text") -> pd.DataFrame:
    return events(key, start + np.arange(seconds) * 1.0, prompt_hash=prompt, plan=plan)


@pytest.mark.parametrize("case", EVENT_CASES, ids=lambda case: case.name)
def test_split_between_events_of_one_millisecond(case, plans):
    stamp = T0 + 3 * 600 + 0.123
    burst = events("burst", np.full(30, stamp), images=1, endpoint=IMAGE, prompt_hash="same")
    whole = frame(_bot("burst", T0 + 1500, 60), burst, _bot("burst", stamp + 1, 120))
    inside = [int(np.searchsorted(whole["ts"].to_numpy(), stamp)) + offset for offset in (1, 7, 29)]

    findings = assert_chunk_invariant(case, whole, inside, plans)
    assert findings


@pytest.mark.parametrize("case", EVENT_CASES, ids=lambda case: case.name)
def test_subject_first_seen_in_later_chunk(case, plans):
    early = _bot("early", T0, 900)
    late = events("late", T0 + 450 + np.arange(600) * 0.9, images=1, endpoint=IMAGE, prompt_hash="loop")
    whole = frame(early, late)
    first_late = int(np.flatnonzero(whole["key_id"].to_numpy() == "late")[0])

    findings = assert_chunk_invariant(case, whole, [first_late, first_late + 1, first_late + 300], plans)
    assert {finding.subject for finding in findings} == {"early", "late"} or case.name == "image_quota"


def test_image_quota_across_utc_midnight(plans):
    times = T0 + DAY - 6 * 3600 + np.arange(24) * 1800.0
    whole = frame(events("night", times, images=1, endpoint=IMAGE))
    midnight = rows_at(whole, [T0 + DAY])

    findings = assert_chunk_invariant(CASES[0], whole, midnight, plans)
    days = {int(finding.detected_at // DAY) for finding in findings}
    assert days == {int(T0 // DAY), int(T0 // DAY) + 1}


def test_image_quota_window_exactly_reached(plans):
    """Ten images on a ten-image plan stay within it across chunks, the eleventh goes over."""
    exact = frame(events("exact", T0 + np.arange(10) * 3600.0, images=1, endpoint=IMAGE))
    over = frame(events("over", T0 + np.arange(11) * 3600.0, images=1, endpoint=IMAGE))

    assert assert_chunk_invariant(CASES[0], exact, range(1, 10), plans) == []
    findings = assert_chunk_invariant(CASES[0], over, range(1, 11), plans)
    assert [finding.evidence["images_7d"] for finding in findings] == [11]


def test_image_quota_week_rolls_over_chunks(plans):
    first_week = T0 + np.arange(10) * 3600.0
    next_week = T0 + 7 * DAY + 5 * 3600.0 + np.arange(10) * 3600.0
    whole = frame(events("weekly", np.concatenate([first_week, next_week]), images=1, endpoint=IMAGE))

    assert assert_chunk_invariant(CASES[0], whole, range(1, 20), plans) == []


def test_load_escalation_across_chunks(plans):
    """A bot speeding up inside one bucket escalates once per step, whichever chunk the step falls in."""
    slow = T0 + np.arange(200) * 2.0
    fast = slow[-1] + 0.25 + np.arange(1200) * 0.25
    whole = frame(events("speeding", np.concatenate([slow, fast]), prompt_hash="same"))
    cuts = range(50, len(whole), 97)

    findings = assert_chunk_invariant(CASES[1], whole, cuts, plans)
    assert len(findings) >= 3


# Where exactness is impossible ------------------------------------------


@pytest.mark.parametrize("case", EVENT_CASES, ids=lambda case: case.name)
def test_late_event_is_reported(case, plans):
    bot = events("bot", T0 + np.arange(900) * 1.0, images=1, endpoint=IMAGE, prompt_hash="same")
    other = events("other", T0 + np.arange(900) * 1.0, images=1, endpoint=IMAGE, prompt_hash="same")
    first = frame(bot.iloc[:600], other.iloc[:600])
    late = frame(bot.iloc[[100]], other.iloc[600:])

    state = case.make_state()
    state.update(Chunk(first, plans))
    result = state.update(Chunk(late, plans))

    assert result.inexact.to_dict("records") == [{"subject_type": "key", "subject": "bot", "why": "late_event"}]


@pytest.mark.parametrize("case", EVENT_CASES, ids=lambda case: case.name)
def test_plan_change_is_reported(case, plans):
    before = events("switcher", T0 + np.arange(600) * 1.0, images=1, endpoint=IMAGE, prompt_hash="same")
    after = events("switcher", T0 + 600 + np.arange(300) * 1.0, plan="image-pro", images=1, endpoint=IMAGE)
    steady = events("steady", T0 + np.arange(900) * 1.0, images=1, endpoint=IMAGE, prompt_hash="same")
    whole = frame(before, after, steady)
    cut = rows_at(whole, [T0 + 600])

    run = run_in_chunks(case, whole, cut, plans)

    assert run.inexact.to_dict("records") == [{"subject_type": "key", "subject": "switcher", "why": "plan_changed"}]
    expected = [comparable(f) for f in case.batch(whole, plans) if f.subject == "steady"]
    assert sorted(comparable(f) for f in run.findings if f.subject == "steady") == sorted(expected)


@pytest.mark.parametrize("case", EVENT_CASES, ids=lambda case: case.name)
def test_plan_change_inside_one_chunk_is_exact(case, plans):
    """Only the plan of the last request counts, so a change within one chunk before any state is not reported."""
    before = events("switcher", T0 + np.arange(600) * 1.0, images=1, endpoint=IMAGE, prompt_hash="same")
    after = events("switcher", T0 + 600 + np.arange(300) * 1.0, plan="coding", images=1, endpoint=IMAGE)
    whole = frame(before, after)

    assert_chunk_invariant(case, whole, rows_at(whole, [T0 + 700]), plans)


# Pattern state ------------------------------------------------------------


def _hourly_job(key: str, hours: int, *, plan: str = "text") -> pd.DataFrame:
    """Return a job that sends three requests at the top of every hour."""
    starts = T0 + np.arange(hours) * 3600.0
    return events(key, np.sort(np.concatenate([starts, starts + 1, starts + 2])), plan=plan, prompt_hash="cron")


def test_pattern_plan_change_stays_exact(plans):
    """The rebuild reads each subject's latest plan, as the batch does, so a plan change is not reported."""
    whole = frame(_hourly_job("cron", 30), _hourly_job("cron", 30, plan="coding").assign(ts=lambda rows: rows["ts"] + 30 * 3600.0))
    case = CASES[2]

    run = run_in_chunks(case, whole, rows_at(whole, [T0 + 30 * 3600.0]), plans)

    assert run.inexact.empty
    assert sorted(map(comparable, run.findings)) == sorted(map(comparable, case.batch(whole, plans)))
    assert run.findings[0].plan == "coding"


def test_pattern_late_event_is_reported(plans):
    whole = frame(_hourly_job("cron", 30), _hourly_job("steady", 30))
    state = AutomationPatternState(AutomationDetector())
    state.update(Chunk(whole.iloc[:100].reset_index(drop=True), plans))

    result = state.update(Chunk(whole.iloc[[10, *range(100, len(whole))]].reset_index(drop=True), plans))

    assert result.findings == []
    assert result.inexact.to_dict("records") == [{"subject_type": "key", "subject": whole["key_id"][10], "why": "late_event"}]


def test_pattern_retention_drops_old_bursts_and_hours(plans):
    whole = frame(_hourly_job("cron", 10 * 24))
    state = AutomationPatternState(AutomationDetector(), retention=7 * DAY)
    for start in range(0, len(whole), 500):
        state.update(Chunk(whole.iloc[start : start + 500].reset_index(drop=True), plans))

    kept = state.bursts.take([("key", "cron")]).rows
    hours = state.hours.take([("key", "cron")]).rows
    last = whole["ts"].max()

    assert kept["ts"].min() > last - 7 * DAY
    assert len(kept["ts"]) == 7 * 24
    assert hours["hour"].min() * 3600.0 + 3600.0 > last - 7 * DAY
    assert hours["requests"].tolist() == [3] * len(hours["hour"])


def test_pattern_without_retention_keeps_everything(plans):
    whole = frame(_hourly_job("cron", 10 * 24))
    state = AutomationPatternState(AutomationDetector())
    for start in range(0, len(whole), 500):
        state.update(Chunk(whole.iloc[start : start + 500].reset_index(drop=True), plans))

    assert len(state.bursts.take([("key", "cron")]).rows["ts"]) == 10 * 24
    assert state.pattern_findings()


# Anomaly state -------------------------------------------------------------


def _busy_day(key: str, day: int, **fields) -> pd.DataFrame:
    """Return a day of requests that the shipped model isolates: a key sending every 20 seconds with one prompt."""
    return events(key, T0 + day * DAY + np.arange(4000) * 20.0, prompt_hash="same", cost=0.5, **fields)


def test_anomaly_quiet_key_day_waits_for_close_days(plans):
    quiet = _busy_day("quiet", 0)
    later = events("other", T0 + DAY + 3600 + np.arange(5) * 60.0)
    state = AnomalyDayState(AnomalyDetector(SHIPPED_MODEL))

    assert state.update(Chunk(frame(quiet), plans)).findings == []
    # The other key's request closes the quiet key's day, but the quiet key has no event in that chunk.
    assert state.update(Chunk(frame(later), plans)).findings == []
    closed = state.close_days(state.newest)

    expected = AnomalyDetector(SHIPPED_MODEL).detect(prepare_events(frame(quiet, later), plans))
    assert [finding.subject for finding in closed] == ["quiet"]
    assert sorted(map(comparable, closed)) == sorted(map(comparable, expected))
    assert state.close_days(state.newest) == []


def test_anomaly_closed_day_leaves_state(plans):
    state = AnomalyDayState(AnomalyDetector(SHIPPED_MODEL))
    state.update(Chunk(frame(_busy_day("busy", 0)), plans))
    open_rows = len(state.counts.pairs_of(("key", "busy"))["kind"])

    state.update(Chunk(frame(events("busy", [T0 + DAY + 60.0])), plans))
    taken = state.days.take([("key", "busy")])

    times = T0 + np.arange(4000) * 20.0
    hours, buckets = len(np.unique(times // 3600)), len(np.unique(times // 600))
    # One network, user agent, country and prompt, and the day's hours and 10-minute buckets.
    assert open_rows == 4 + hours + buckets
    assert taken.values["day"].tolist() == [int(T0 // DAY) + 1]
    assert taken.values["requests"].tolist() == [1]
    # The new day's network, user agent, country, hour and bucket; its request has no prompt.
    assert len(state.counts.pairs_of(("key", "busy"))["kind"]) == 5


def test_anomaly_day_split_across_chunks_counts_distinct_once(plans):
    """Networks, prompts and buckets seen in both parts of a day count once, as in one pass."""
    day = events("split", T0 + np.arange(600) * 60.0, ip=["198.51.100.7", "203.0.113.9"] * 300, prompt_hash="same")
    whole = frame(day, events("closer", [T0 + DAY + 1.0]))

    run = run_in_chunks(CASES[3], whole, range(50, 600, 50), plans)
    rows = keyday_counts(prepare_events(whole, plans))
    state = AnomalyDayState(AnomalyDetector(SHIPPED_MODEL))
    for start in range(0, 600, 50):
        state.update(Chunk(whole.iloc[start : start + 50].reset_index(drop=True), plans))
    carried = state.days.take([("key", "split")])
    pairs = state.counts.pairs_of(("key", "split"))

    assert run.inexact.empty
    assert carried.values["requests"].tolist() == [600]
    kinds = pairs["kind"]
    assert int((kinds == NETWORK).sum()) == int(rows.loc[rows["requests"] == 600, "networks"].iloc[0]) == 2
    assert carried.values["networks"].tolist() == [2]
    assert int(pairs["count"][kinds == HOUR].max()) == 60
    assert pairs["count"][kinds == PROMPT].tolist() == [600]
    assert carried.values["top_prompt"].tolist() == [600]


# Key sharing state ---------------------------------------------------------

SHARING = CASES[4]


def _alternating(key: str, start: float, minutes: int, *, second: float = 0.0, country: str = "DE") -> pd.DataFrame:
    """Return a key used from two networks with two user agents, alternating every 30 seconds.

    The second network starts ``second`` seconds after the first.
    """
    owner = events(key, start + np.arange(minutes) * 60.0, ip="198.51.100.7", user_agent="laptop")
    friend_times = start + second + 30.0 + np.arange(minutes) * 60.0
    friend = events(key, friend_times[friend_times >= start + second], ip="203.0.113.9", user_agent="phone", country=country)
    return frame(owner, friend)


def _kinds(findings: list[Finding]) -> set[str]:
    return {finding.evidence["kind"] for finding in findings}


def test_sharing_switches_across_chunk_boundary(plans):
    whole = _alternating("shared", T0, 60)
    cuts = range(1, len(whole))

    findings = assert_chunk_invariant(SHARING, whole, cuts, plans)
    assert "concurrent" in _kinds(findings)


def test_sharing_network_settles_in_later_chunk(plans):
    """The second network is first used in one chunk and becomes settled, 300 seconds later, in another."""
    whole = _alternating("settling", T0, 60, second=1200.0)
    cuts = rows_at(whole, [T0 + 1200.0 + 31.0, T0 + 1200.0 + 299.0, T0 + 1200.0 + 331.0])

    findings = assert_chunk_invariant(SHARING, whole, cuts, plans)
    concurrent = [finding for finding in findings if finding.evidence["kind"] == "concurrent"]
    assert concurrent
    assert min(finding.detected_at for finding in concurrent) >= T0 + 1200.0 + 300.0


def test_sharing_country_day_split_by_chunks(plans):
    """One device at home in the morning and abroad at night, on two days; each night is cut between its requests."""
    parts = []
    for day in (0, 2):
        start = T0 + day * DAY
        parts.append(events("abroad", start + np.arange(30) * 60.0, ip="198.51.100.7", user_agent="laptop"))
        parts.append(events("abroad", start + 6 * 3600.0 + np.arange(30) * 60.0, ip="203.0.113.9", user_agent="laptop", country="FR"))
    whole = frame(*parts)
    nights = [T0 + day * DAY + 6 * 3600.0 + seconds for day in (0, 2) for seconds in (290.0, 330.0, 390.0)]

    findings = assert_chunk_invariant(SHARING, whole, rows_at(whole, nights), plans)
    assert [finding.evidence["kind"] for finding in findings] == ["countries"]


def test_sharing_escalation_across_chunks(plans):
    """A key that adds a network every 20 minutes escalates once per new step, whichever chunk the step is in."""
    ips = ["198.51.100.7", "203.0.113.9", "192.0.2.33", "198.18.0.5", "198.19.7.1"]
    parts = [
        events("growing", T0 + index * 1200.0 + np.arange(120) * 60.0 + index * 7.0, ip=ip, user_agent=f"agent-{index}")
        for index, ip in enumerate(ips)
    ]
    whole = frame(*parts)

    findings = assert_chunk_invariant(SHARING, whole, range(7, len(whole), 13), plans)
    assert len(findings) >= 3


def test_sharing_new_device_across_chunks(plans):
    """A laptop used for two days, then a phone on a new network: the phone's first requests are in separate chunks."""
    laptop = events("lent", T0 + np.arange(2 * 24) * 3600.0, ip="198.51.100.7", user_agent="laptop")
    phone = events("lent", T0 + 2 * DAY + 60.0 + np.arange(5) * 120.0, ip="203.0.113.9", user_agent="phone")
    whole = frame(laptop, phone)

    findings = assert_chunk_invariant(SHARING, whole, range(40, len(whole)), plans)
    assert [finding.evidence["new_device"] for finding in findings] == [1]


def test_sharing_hosting_networks_make_no_device(plans):
    """A CI runner on a cloud network is left out of the device graph, chunk by chunk as in one pass."""
    hosting = HostingNetworks.from_lines(["192.0.2.0/24"], "cloud")
    home = events("ci", T0 + np.arange(3 * 24) * 3600.0, ip="198.51.100.7", user_agent="laptop")
    runner = events("ci", T0 + 2 * DAY + 30.0 + np.arange(40) * 90.0, ip="192.0.2.10", user_agent="runner")
    phone = events("ci", T0 + 2 * DAY + 60.0 + np.arange(5) * 120.0, ip="203.0.113.9", user_agent="phone")
    whole = frame(home, runner, phone)
    case = Case(
        "key_sharing with hosting",
        lambda: KeySharingState(KeySharingDetector(hosting=hosting)),
        lambda whole, plans: KeySharingDetector(hosting=hosting).detect(prepare_events(whole, plans)),
    )

    findings = assert_chunk_invariant(case, whole, range(60, len(whole), 3), plans)
    without_hosting = KeySharingDetector().detect(prepare_events(whole, plans))
    assert max(finding.evidence["device_components"] for finding in findings) == 2
    assert max(finding.evidence["device_components"] for finding in without_hosting) == 3


def test_sharing_late_event_is_reported(plans):
    whole = _alternating("shared", T0, 60)
    state = KeySharingState(KeySharingDetector())
    state.update(Chunk(whole.iloc[:80].reset_index(drop=True), plans))

    result = state.update(Chunk(whole.iloc[[10, *range(80, len(whole))]].reset_index(drop=True), plans))

    assert result.inexact.to_dict("records") == [{"subject_type": "key", "subject": "shared", "why": "late_event"}]


def test_sharing_plan_change_stays_exact(plans):
    """Key sharing reads no entitlements, so a plan change between chunks is not reported."""
    whole = _alternating("shared", T0, 60)
    whole.loc[whole["ts"] >= T0 + 1800.0, "plan"] = "coding"

    assert_chunk_invariant(SHARING, whole, rows_at(whole, [T0 + 1800.0]), plans)


def test_sharing_edge_flood_is_reported(plans):
    """A key that passes the edge limit in a later chunk had device findings a batch pass would not make."""
    agents = [f"agent-{index}" for index in range(MAX_SUBJECT_EDGES + 1)]
    rotating = events("rotating", T0 + DAY + np.arange(len(agents)) * 1.0, user_agent=agents)
    whole = frame(events("rotating", T0 + np.arange(4) * 60.0), rotating)
    state = KeySharingState(KeySharingDetector())
    state.update(Chunk(whole.iloc[:10].reset_index(drop=True), plans))

    result = state.update(Chunk(whole.iloc[10:].reset_index(drop=True), plans))

    assert result.inexact.to_dict("records") == [{"subject_type": "key", "subject": "rotating", "why": "edge_flood"}]


def test_sharing_retention_drops_old_networks_and_edges(plans):
    early = events("mover", T0 + np.arange(10) * 60.0, ip="198.51.100.7", user_agent="laptop")
    late = events("mover", T0 + 9 * DAY + np.arange(10) * 60.0, ip="203.0.113.9", user_agent="phone")
    whole = frame(early, late)
    kept = KeySharingState(KeySharingDetector())
    trimmed = KeySharingState(KeySharingDetector(), retention=7 * DAY)
    for state in (kept, trimmed):
        for start in (0, 10):
            state.update(Chunk(whole.iloc[start : start + 10].reset_index(drop=True), plans))

    key = [("key", "mover")]
    assert len(kept.networks.take(key).rows["owner"]) == 2
    assert len(kept.devices.edges.take(key).rows["owner"]) == 2
    assert len(trimmed.networks.take(key).rows["owner"]) == 1
    assert len(trimmed.devices.edges.take(key).rows["owner"]) == 1
    assert len(trimmed.marks.take(key).rows["owner"]) == 0
