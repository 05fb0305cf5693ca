"""StateScorer over chunks of a time-sorted input gives ``score_events``' findings on the whole input."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from detector.decisions import Decision
from detector.detectors import AutomationDetector, Finding
from detector.features import prepare_events
from detector.pipeline import default_detectors, score_events
from detector.policy import decide
from detector.state import AutomationPatternState, Chunk
from detector.state.scorer import STREAM_RETENTION, StateScorer
from detector.state.tail import EventTail
from tests.factories import DAY, T0, events, frame
from tests.test_chunk_invariance import (  # noqa: F401 (the traffic fixture is used by name)
    SHIPPED_MODEL,
    Case,
    _whole_input,
    comparable,
    rows_at,
    traffic,
)

DETECTORS = default_detectors(SHIPPED_MODEL)
REASONS = [detector.reason for detector in DETECTORS]
SHARING_KINDS = ("concurrent", "devices", "countries")


@dataclass(slots=True)
class ScoredRun:
    findings: list[Finding]
    inexact: pd.DataFrame


def score_in_chunks(whole: pd.DataFrame, cuts: Sequence[int], plans, retention: float | None = None) -> ScoredRun:
    """Score ``whole`` in chunks ending before each row index in ``cuts``, then close the days ended by its last event.

    A chunk's pattern findings replace those returned for the same subjects
    before. The findings come back in ``score_events``' order over the whole
    input: by detector, load before pattern, then by the subject's first event.
    """
    scorer = StateScorer(detectors=DETECTORS, plans=plans, retention=retention)
    bounds = [0, *sorted(set(int(cut) for cut in cuts if 0 < cut < len(whole))), len(whole)]
    findings: list[Finding] = []
    patterns: dict[tuple[str, str], list[Finding]] = {}
    inexact = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        part = whole.iloc[start:end].reset_index(drop=True)
        result = scorer.score(part)
        for key in zip(part["subject_type"], part["key_id"]):
            patterns[key] = []
        for finding in result.findings:
            if _is_pattern(finding):
                patterns[(finding.subject_type, finding.subject)].append(finding)
            else:
                findings.append(finding)
        inexact.append(result.inexact)
    findings.extend(scorer.close(float(whole["ts"].max())))
    findings.extend(finding for found in patterns.values() for finding in found)
    return ScoredRun(_in_batch_order(findings, whole), pd.concat(inexact, ignore_index=True))


def score_through_tail(arrived: pd.DataFrame, cuts: Sequence[int], plans, lateness: float) -> ScoredRun:
    """Feed ``arrived`` (events in arrival order) in chunks through an ``EventTail``, as the state worker does.

    Cuts work as in ``score_in_chunks``. The released events are scored, and
    after the last chunk the whole tail is released and the days ended by the
    newest event are closed. Findings come back in ``score_events``' order over
    the events sorted by time. ``ScoredRun.inexact`` also has a row with
    ``why`` ``beyond_lateness`` for each event that came later than ``lateness``.
    """
    scorer = StateScorer(detectors=DETECTORS, plans=plans, retention=STREAM_RETENTION)
    tail = EventTail(lateness)
    bounds = [0, *sorted(set(int(cut) for cut in cuts if 0 < cut < len(arrived))), len(arrived)]
    findings: list[Finding] = []
    patterns: dict[tuple[str, str], list[Finding]] = {}
    inexact = []

    def apply(released: pd.DataFrame | None) -> None:
        if released is None:
            return
        result = scorer.score(released)
        for key in zip(released["subject_type"], released["key_id"]):
            patterns[key] = []
        for finding in result.findings:
            if _is_pattern(finding):
                patterns[(finding.subject_type, finding.subject)].append(finding)
            else:
                findings.append(finding)
        inexact.append(result.inexact)

    for start, end in zip(bounds[:-1], bounds[1:]):
        part = arrived.iloc[start:end].reset_index(drop=True)
        released = tail.add(part)
        apply(released.frame)
        inexact.append(pd.DataFrame({"subject_type": ["key"] * released.beyond_lateness, "subject": [""] * released.beyond_lateness, "why": ["beyond_lateness"] * released.beyond_lateness}))
    apply(tail.release_all())
    findings.extend(scorer.close(float(arrived["ts"].max())))
    findings.extend(finding for found in patterns.values() for finding in found)
    whole = arrived.sort_values("ts", kind="stable")
    return ScoredRun(_in_batch_order(findings, whole), pd.concat(inexact, ignore_index=True))


def _is_pattern(finding: Finding) -> bool:
    return finding.evidence.get("kind") == "pattern"


def _in_batch_order(findings: list[Finding], whole: pd.DataFrame) -> list[Finding]:
    """Sort stably by detector, load before pattern, then as ``StateScorer`` orders one detector's findings.

    key_sharing's findings go by time, then kind. The other detectors' go by
    the subject's first row in ``whole``, and a subject's findings keep the
    order in which the chunks returned them.
    """
    first_rows: dict[tuple[str, str], int] = {}
    for key in zip(whole["subject_type"], whole["key_id"]):
        first_rows.setdefault(key, len(first_rows))

    def position(finding: Finding) -> tuple:
        rank = first_rows[(finding.subject_type, finding.subject)]
        if finding.reason == "key_sharing":
            return REASONS.index(finding.reason), False, finding.detected_at, SHARING_KINDS.index(finding.evidence["kind"]), rank
        return REASONS.index(finding.reason), _is_pattern(finding), 0.0, 0, rank

    return sorted(findings, key=position)


def batch_findings(whole: pd.DataFrame, plans, policy) -> list[Finding]:
    return score_events(whole, plans=plans, policy=policy, detectors=DETECTORS).findings


def assert_scorer_equals_batch(whole: pd.DataFrame, cuts: Sequence[int], plans, policy, retention=None) -> list[Finding]:
    run = score_in_chunks(whole, cuts, plans, retention)

    assert_run_equals_batch(run, whole, plans, policy, context=f"; cuts {list(cuts)}")
    return run.findings


def assert_run_equals_batch(run: ScoredRun, whole: pd.DataFrame, plans, policy, context: str = "") -> None:
    """Assert that ``run`` has no inexact subject and the batch detectors' findings on ``whole``, in order."""
    assert run.inexact.empty, f"unexpected inexact subjects {run.inexact.to_dict('records')}"
    found = list(map(comparable, run.findings))
    expected = list(map(comparable, batch_findings(whole, plans, policy)))
    differs = next((index for index, pair in enumerate(zip(found, expected)) if pair[0] != pair[1]), None)
    assert len(found) == len(expected), f"{len(found)} findings, expected {len(expected)}{context}"
    assert differs is None, f"finding {differs}: {found[differs]} != {expected[differs]}{context}"


# Simulated traffic ----------------------------------------------------------


def test_simulated_traffic_has_every_reason(traffic, plans, policy):
    reasons = {finding.reason for finding in batch_findings(traffic, plans, policy)}

    assert reasons == set(REASONS)


def test_one_chunk_equals_score_events_in_order(traffic, plans, policy):
    """One chunk holding the whole input returns score_events' findings unchanged, in its order and with its names."""
    scorer = StateScorer(detectors=DETECTORS, plans=plans)

    found = scorer.score(traffic).findings + scorer.close(float(traffic["ts"].max()))

    assert found == batch_findings(traffic, plans, policy)


# No shrinking: each example scores the whole input several times, so shrinking would take many minutes.
@settings(max_examples=5, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(shares=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=40))
def test_random_splits_equal_score_events(traffic, plans, policy, shares):
    assert_scorer_equals_batch(traffic, [int(share * len(traffic)) for share in shares], plans, policy)


def test_split_after_findings(traffic, plans, policy):
    """Cut right after every fourth batch finding, so escalation steps meet steps carried from the chunk before.

    The chunk harness of each detector cuts after every one of its findings.
    """
    times = [finding.detected_at for finding in batch_findings(traffic, plans, policy)][::4]
    after = [int(np.searchsorted(traffic["ts"].to_numpy(), time, side="right")) for time in times]

    assert_scorer_equals_batch(traffic, after, plans, policy)


def test_hourly_chunks_cut_inside_buckets(traffic, plans, policy):
    """Cut every hour in the middle of a 10-minute bucket, and at every UTC midnight.

    The chunk harness of each detector also cuts every 5 minutes, so this
    test, which runs all detectors on each chunk, keeps to hourly chunks.
    """
    ts = traffic["ts"].to_numpy()
    midnights = np.arange(ts.min() // DAY * DAY + DAY, ts.max(), DAY)
    hours = np.arange(ts.min() // 3600 * 3600, ts.max(), 3600.0) + 299.5

    assert_scorer_equals_batch(traffic, rows_at(traffic, np.concatenate([midnights, hours])), plans, policy)


def test_stream_retention_keeps_a_shorter_input_exact(traffic, plans, policy):
    """The simulated traffic spans 3 days, so the stream's 7-day retention drops nothing."""
    ts = traffic["ts"].to_numpy()

    cuts = rows_at(traffic, np.arange(ts.min(), ts.max(), 6 * 3600.0))

    assert_scorer_equals_batch(traffic, cuts, plans, policy, STREAM_RETENTION)


# Inexact subjects and edge cases --------------------------------------------


def test_late_event_reported_once_per_reason(plans):
    bot = events("bot", T0 + np.arange(900) * 1.0, prompt_hash="same")
    other = events("other", T0 + np.arange(900) * 1.0, prompt_hash="same")
    scorer = StateScorer(detectors=DETECTORS, plans=plans)
    scorer.score(frame(bot.iloc[:600], other.iloc[:600]))

    result = scorer.score(frame(bot.iloc[[100]], other.iloc[600:]))

    assert result.inexact.to_dict("records") == [{"subject_type": "key", "subject": "bot", "why": "late_event"}]


def test_plan_change_reported(plans):
    before = events("switcher", T0 + np.arange(600) * 1.0)
    after = events("switcher", T0 + 600 + np.arange(300) * 1.0, plan="coding")
    scorer = StateScorer(detectors=DETECTORS, plans=plans)
    scorer.score(frame(before))

    result = scorer.score(frame(after))

    assert result.inexact.to_dict("records") == [{"subject_type": "key", "subject": "switcher", "why": "plan_changed"}]


def test_empty_frame_scores_nothing(plans, traffic):
    scorer = StateScorer(detectors=DETECTORS, plans=plans)

    result = scorer.score(traffic.iloc[:0])

    assert result.findings == []
    assert result.inexact.empty


def test_empty_chunk_prepares_no_subjects(plans, traffic):
    """An empty frame used to raise IndexError in prepare_events, so a Chunk could not be built from it."""
    chunk = Chunk(traffic.iloc[:0], plans)

    assert chunk.keys == []
    assert len(chunk.prepared.subjects) == 0


def test_close_scores_quiet_key_day(plans, policy):
    """A key quiet after its busy day gets its anomaly finding from close, as the batch gives it at the end of the input."""
    busy = events("quiet", T0 + np.arange(4000) * 20.0, prompt_hash="same", cost=0.5)
    later = events("other", T0 + DAY + 3600 + np.arange(5) * 60.0)
    scorer = StateScorer(detectors=DETECTORS, plans=plans)
    scorer.score(frame(busy))
    scorer.score(frame(later))

    closed = scorer.close(float(later["ts"].max()))

    expected = [finding for finding in batch_findings(frame(busy, later), plans, policy) if finding.reason == "anomaly"]
    assert expected
    assert list(map(comparable, closed)) == list(map(comparable, expected))
    assert scorer.close(float(later["ts"].max())) == []


def test_unknown_detector_rejected(plans):
    class Other:
        reason = "other"
        version = "1"

    with pytest.raises(TypeError, match="no incremental state for detector Other"):
        StateScorer(detectors=[Other()], plans=plans)


# Pattern rebuild for touched subjects ---------------------------------------


def test_pattern_rebuild_of_touched_equals_all(traffic, plans):
    """After every hour of traffic, the rebuild for that hour's subjects equals the rebuild over all subjects, to the bit."""
    state = AutomationPatternState(AutomationDetector())
    ts = traffic["ts"].to_numpy()
    bounds = [0, *rows_at(traffic, np.arange(ts.min() + 3600.0, ts.max(), 3600.0)), len(traffic)]
    compared = 0
    for start, end in zip(bounds[:-1], bounds[1:]):
        chunk = Chunk(traffic.iloc[start:end].reset_index(drop=True), plans)
        state.update(chunk)
        touched = set(chunk.keys)

        alone = state.pattern_findings(chunk.keys)
        among_all = [finding for finding in state.pattern_findings() if (finding.subject_type, finding.subject) in touched]

        assert sorted(alone, key=repr) == sorted(among_all, key=repr)
        compared += len(alone)
    assert compared >= 100


def test_pattern_rebuild_skips_unknown_subjects(plans):
    state = AutomationPatternState(AutomationDetector())

    assert state.pattern_findings([("key", "never-seen")]) == []


def test_pattern_findings_match_batch_detector(traffic, plans):
    """The rebuild after all chunks equals the batch detector's pattern findings, now that both sum 24 hour columns."""
    state = AutomationPatternState(AutomationDetector())
    for start in range(0, len(traffic), 997):
        state.update(Chunk(traffic.iloc[start : start + 997].reset_index(drop=True), plans))

    batch = _whole_input(AutomationDetector(), "pattern")(traffic, plans)

    assert batch
    assert sorted(map(comparable, state.pattern_findings())) == sorted(map(comparable, batch))


def test_hour_entropy_independent_of_other_subjects(traffic, plans):
    """A subject's hour-of-day entropy is the same to the bit whether it is scored alone or with all others."""
    detector = AutomationDetector()
    events = prepare_events(traffic, plans).events
    starts_burst = ~(events["iat"].to_numpy() <= detector.burst_gap)
    bursts = pd.DataFrame(
        {
            "subject": events["subject"].to_numpy()[starts_burst],
            "ts": events["ts"].to_numpy()[starts_burst],
            "prompt": events["prompt"].to_numpy()[starts_burst],
        }
    )
    bursts["gap"] = bursts.groupby("subject")["ts"].diff()
    bursts["hour_of_day"] = ((bursts["ts"] % DAY) // 3600).astype(np.int64)

    together = detector._pattern_table(bursts)["entropy"]
    for subject, alone in bursts.groupby("subject"):
        assert detector._pattern_table(alone)["entropy"].iloc[0] == together[subject], f"subject {subject}"


# Decisions chunk by chunk ----------------------------------------------------


def decide_in_chunks(
    whole: pd.DataFrame, cuts: Sequence[int], plans, policy, now: datetime, lateness: float | None = None,
    inexact: list[pd.DataFrame] | None = None,
) -> list[Decision]:
    """Run the policy on each chunk's findings, as a stream worker would, and return every decision made.

    The policy gets the chunk's subjects' earlier findings of the merge
    window as context, because the policy merges them into a decision's
    reasons and evidence. Decisions made so far are ``prior`` and count
    towards the hourly suspension cap, as stored decisions would.

    With ``lateness`` (seconds) the chunks go through an ``EventTail`` first,
    as in the state worker, and the tail is released after the last chunk.
    ``inexact``, where given, receives each scored chunk's inexact subjects.
    """
    scorer = StateScorer(detectors=DETECTORS, plans=plans)
    tail = EventTail(lateness) if lateness is not None else None
    merge_window = policy.merge_window.total_seconds()
    earlier: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    decisions: dict[str, Decision] = {}

    def decide_on(new: list[Finding], since: float) -> None:
        subjects = {(finding.subject_type, finding.subject) for finding in new}
        context = [finding for subject in subjects for finding in earlier[subject] if finding.detected_at >= since - merge_window]
        prior = [decision for decision in decisions.values() if (decision.subject_type, decision.subject) in subjects]
        for decision in decide(context + new, policy, prior, now=now, suspensions=list(decisions.values())).decisions:
            decisions.setdefault(decision.id, decision)
        for finding in new:
            earlier[(finding.subject_type, finding.subject)].append(finding)

    def score(part: pd.DataFrame | None) -> None:
        if part is None or part.empty:
            return
        result = scorer.score(part)
        if inexact is not None:
            inexact.append(result.inexact)
        decide_on(result.findings, float(part["ts"].min()))

    bounds = [0, *sorted(set(int(cut) for cut in cuts if 0 < cut < len(whole))), len(whole)]
    for start, end in zip(bounds[:-1], bounds[1:]):
        part = whole.iloc[start:end].reset_index(drop=True)
        score(tail.add(part).frame if tail is not None else part)
    if tail is not None:
        score(tail.release_all())
    last = float(whole["ts"].max())
    decide_on(scorer.close(last), last)
    return sorted(decisions.values(), key=lambda decision: (decision.detected_at, decision.id))


def test_policy_on_chunks_equals_batch_decisions(traffic, plans, policy):
    now = datetime(2027, 1, 1, tzinfo=UTC)
    ts = traffic["ts"].to_numpy()
    cuts = rows_at(traffic, np.arange(ts.min() // 3600 * 3600, ts.max(), 3600.0) + 1800.0)

    chunked = decide_in_chunks(traffic, cuts, plans, policy, now)
    batch = score_events(traffic, plans=plans, policy=policy, detectors=DETECTORS, now=now).decisions

    expected = sorted(batch, key=lambda decision: (decision.detected_at, decision.id))

    assert len(batch) >= 10
    assert [decision.to_dict() for decision in chunked] == [decision.to_dict() for decision in expected]
