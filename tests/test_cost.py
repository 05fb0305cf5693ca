import numpy as np
import pytest

from detector.detectors import AbnormalCostDetector
from detector.features import prepare_events
from detector.policy import decide
from tests.factories import DAY, HOUR, T0, events, frame


def _findings(plans, *parts):
    return AbnormalCostDetector().detect(prepare_events(frame(*parts), plans))


def _hourly(key, spends, start=T0, **kwargs):
    """One request per hour, each costing the given amount."""
    times = start + np.arange(len(spends)) * HOUR + 60
    return events(key, times, cost=list(spends), **kwargs)


def test_mad_zero_spike_finite(plans):
    # Seven quiet days (MAD = 0), then one hour at 10x: [10,10,...,10,100] in cents.
    quiet = _hourly("steady", [0.10] * 7 * 24)
    spike = events("steady", T0 + 7 * DAY + np.arange(10) * 60, cost=0.10)

    with np.errstate(all="raise"):
        findings = _findings(plans, quiet, spike)

    assert findings
    for finding in findings:
        assert finding.reason == "abnormal_cost"
        assert finding.evidence["baseline_mad"] == 0
        assert np.isfinite(finding.evidence["robust_z"])
        assert finding.evidence["ratio_to_baseline"] >= 8


def test_stolen_key_spike_detected_at_crossing(plans):
    history = _hourly("victim", [0.05] * 5 * 24)
    stolen_start = T0 + 5 * DAY + 1800
    stolen = events("victim", stolen_start + np.arange(120) * 30, cost=0.5, ip="203.0.113.9")

    findings = _findings(plans, history, stolen)

    assert findings, "a 100x spend jump must be found"
    first = min(findings, key=lambda finding: finding.detected_at)
    assert first.detected_at >= stolen_start
    assert first.detected_at - stolen_start < 10 * 60
    within_half_hour = [finding for finding in findings if finding.detected_at - stolen_start < 30 * 60]
    assert max(finding.score for finding in within_half_hour) >= 75
    assert max(finding.impact for finding in within_half_hour) >= 2


def test_findings_escalate_without_look_ahead(plans):
    history = _hourly("victim", [0.05] * 5 * 24)
    stolen_start = T0 + 5 * DAY + 1800
    stolen = events("victim", stolen_start + np.arange(120) * 30, cost=0.5, ip="203.0.113.9")

    findings = sorted(_findings(plans, history, stolen), key=lambda finding: finding.detected_at)
    spends = [finding.evidence["spend_1h"] for finding in findings]

    assert len(findings) >= 2
    assert spends == sorted(spends)
    # Evidence is measured at the finding's own time: the first one has seen only part of the spike.
    assert spends[0] < spends[-1]


def test_steady_growth_is_not_a_spike(plans):
    spends = [0.02 * (1.3 ** (hour / 24)) for hour in range(7 * 24)]

    findings = _findings(plans, _hourly("growing", spends))

    assert findings == []


def test_new_key_judged_by_budget_only(plans):
    # First hour of a brand-new key, 0.8 of the hourly budget: no baseline, no spike.
    fresh = events("fresh", T0 + np.arange(40) * 60, cost=0.04)

    assert _findings(plans, fresh) == []


def test_spend_over_hourly_budget_found_with_budget_impact(plans):
    heavy = events("heavy", T0 + np.arange(120) * 30, cost=0.05)  # 6 credits in an hour, budget 2

    findings = _findings(plans, heavy)

    assert findings
    assert max(finding.impact for finding in findings) == pytest.approx(3.0, rel=0.05)
    assert all(finding.score <= 70 for finding in findings)


def test_evidence_names_window_and_thresholds(plans):
    heavy = events("heavy", T0 + np.arange(120) * 30, cost=0.05)

    evidence = _findings(plans, heavy)[0].evidence

    assert "rolling 1h" in evidence["window"]
    assert evidence["thresholds"]["min_ratio"] == 8.0
    assert evidence["thresholds"]["short_window_s"] == 600.0
    assert evidence["kind"] == "rolling_hour"
    assert evidence["window_s"] == 3600.0
    assert evidence["hourly_budget"] == 2.0


def test_new_key_far_over_budget_scores_for_suspension(plans, policy):
    # A key never seen before spends 200 credits in ten minutes: 100x the text plan's hourly budget of 2.
    dormant = events("dormant", T0 + np.arange(10) * 60, cost=20.0)

    findings = _findings(plans, dormant)
    decisions = decide(findings, policy).decisions

    assert max(finding.score for finding in findings) >= 75
    assert "suspend" in [decision.action for decision in decisions]


def test_new_key_triple_budget_not_suspended(plans, policy):
    heavy = events("heavy", T0 + np.arange(120) * 30, cost=0.05)

    decisions = decide(_findings(plans, heavy), policy).decisions

    assert decisions
    assert "suspend" not in [decision.action for decision in decisions]


def _office_weeks(key, cost_per_request, days=6, session_requests=8, **kwargs):
    """Sessions of ``session_requests`` requests a minute apart, at 10:00 and 15:00 UTC every day."""
    times = [
        T0 + day * DAY + hour * HOUR + minute * 60
        for day in range(days)
        for hour in (10, 15)
        for minute in range(session_requests)
    ]
    return events(key, times, cost=cost_per_request, **kwargs)


def test_short_window_catches_theft_early(plans, policy):
    # A light user (0.002 a request), then a thief at 4x the hourly budget: 0.4 credits every 3 minutes.
    history = _office_weeks("victim", 0.002)
    stolen_start = T0 + 6 * DAY + 3 * HOUR
    stolen = events("victim", stolen_start + np.arange(40) * 180, cost=0.4, ip="203.0.113.9", country="US")

    findings = sorted(_findings(plans, history, stolen), key=lambda finding: finding.detected_at)
    decisions = decide(findings, policy).decisions

    assert findings
    first = findings[0]
    assert first.evidence["kind"] == "short_window"
    assert first.detected_at >= stolen_start
    # The rolling hour needs half the hourly budget (1.0): the third request at 6 minutes.
    # The short window needs 1.5x the budget's rate over 10 minutes (0.5): the second, at 3 minutes.
    assert first.detected_at - stolen_start <= 3 * 60
    assert first.evidence["spend_short_window"] == pytest.approx(0.8)
    assert first.impact == pytest.approx(2.4)
    assert decisions[0].action == "review"
    assert decisions[0].rule == "cost spike within minutes"
    assert decisions[0].detected_at.timestamp() == first.detected_at


def test_short_window_keeps_hour_escalations(plans, policy):
    # The short window's early findings must not hide the rolling hour's, which enforce.
    history = _office_weeks("victim", 0.002)
    stolen_start = T0 + 6 * DAY + 3 * HOUR
    stolen = events("victim", stolen_start + np.arange(40) * 180, cost=0.4, ip="203.0.113.9", country="US")

    findings = _findings(plans, history, stolen)
    decisions = decide(findings, policy).decisions
    hour_findings = [finding for finding in findings if finding.evidence["kind"] == "rolling_hour"]
    suspensions = [decision for decision in decisions if decision.action == "suspend"]

    assert hour_findings
    assert min(finding.detected_at for finding in hour_findings) - stolen_start <= 6 * 60
    assert suspensions
    # Four credits, twice the hourly budget, are spent after 30 minutes.
    assert suspensions[0].detected_at.timestamp() - stolen_start <= 30 * 60


def test_short_window_leaves_usual_bursts(plans):
    # The same 8-minute sessions every day, each spending 3x the budget's rate: usual for this key.
    history = _office_weeks("bursty", 0.2, days=7)

    findings = _findings(plans, history)

    assert [finding for finding in findings if finding.evidence["kind"] == "short_window"] == []


def test_short_window_needs_budget_rate(plans):
    # 20x the key's tiny usual sessions, but spent at half the hourly budget's rate: not a theft.
    history = _office_weeks("tiny", 0.001)
    burst = events("tiny", T0 + 6 * DAY + 3 * HOUR + np.arange(10) * 60, cost=0.0167)

    findings = _findings(plans, history, burst)

    assert [finding for finding in findings if finding.evidence["kind"] == "short_window"] == []


def test_short_window_needs_history(plans):
    # A brand-new key spending 3x the budget's rate for ten minutes has no baseline to spike from.
    fresh = events("fresh", T0 + np.arange(10) * 60, cost=0.1)

    findings = _findings(plans, fresh)

    assert findings == []


def test_zero_budget_plan_scores_without_warnings(tmp_path):
    import warnings

    from detector.detectors import AbnormalCostDetector
    from detector.features import prepare_events
    from detector.plans import load_plans
    from tests.factories import HOUR, T0, events, frame

    plans_file = tmp_path / "plans.toml"
    plans_file.write_text(
        '[plans.default]\nkind = "text"\nweekly_images = 10\nhourly_budget = 0.0\ndaily_budget = 0.0\nexpected_rph = 120\n'
    )
    traffic = frame(events("free", T0 + np.arange(200) * 60.0, cost=0.0),
                    events("paying", T0 + np.arange(200) * 60.0 + 1, cost=0.5))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        findings = AbnormalCostDetector().detect(prepare_events(traffic, load_plans(plans_file)))

    assert {finding.subject for finding in findings} <= {"paying"}


def _theft(key="victim"):
    history = _hourly(key, [0.05] * 5 * 24)
    stolen_start = T0 + 5 * DAY + 1800
    stolen = events(key, stolen_start + np.arange(120) * 30, cost=0.5, ip="203.0.113.9")
    return history, stolen


def test_spend_same_alone_and_in_big_frame(plans):
    # Around the victim: a whale whose requests sort before it, other keys, and the
    # victim's own huge spend ten days before, outside every window and baseline.
    alone = _findings(plans, *_theft())
    whale = events("whale", T0 - 12 * DAY + np.arange(50) * 60, cost=1e9)
    others = [_hourly(f"office-{n}", [0.03 + n * 0.001] * 6 * 24) for n in range(20)]
    earlier = events("victim", T0 - 10 * DAY + np.arange(20) * 60, cost=3e8)

    crowded = _findings(plans, whale, *others, earlier, *_theft())
    victim = [finding for finding in crowded if finding.subject == "victim" and finding.detected_at >= T0]

    assert alone
    assert [finding.evidence for finding in victim] == [finding.evidence for finding in alone]
    assert victim == alone


def test_hour_window_excludes_minute_an_hour_before(plans):
    # 10:00:59 and 11:00:00 are 59 s short of an hour apart, but the 10:00 minute is not
    # among the 59 whole minutes before 11:00. Each hour window then contains 1.5 credits, under the budget of 2.
    times = [T0 + 10 * HOUR + 59, T0 + 11 * HOUR]

    assert _findings(plans, events("edge", times, cost=1.5)) == []


def test_hour_window_includes_first_minute_inside(plans):
    # 10:01:00 and 11:00:59: the 10:01 minute is the first of the 59 before 11:00.
    times = [T0 + 10 * HOUR + 60, T0 + 11 * HOUR + 59]

    findings = _findings(plans, events("edge", times, cost=1.5))

    assert len(findings) == 1
    assert findings[0].detected_at == times[1]
    assert findings[0].evidence["spend_1h"] == 3.0
    assert findings[0].impact == 1.5


def test_mad_zero_from_mixed_request_costs(plans):
    # Hours of 0.1 + 0.2 and hours of 0.3 are the same spend in micro-credits, so the MAD is exactly 0.
    times = T0 + np.arange(5 * 24) * HOUR + 60
    split_hours = times[::2]
    history = [
        events("steady", split_hours, cost=0.1),
        events("steady", split_hours + 60, cost=0.2),
        events("steady", times[1::2], cost=0.3),
    ]
    spike = events("steady", T0 + 5 * DAY + 1800 + np.arange(20) * 60, cost=0.3)

    with np.errstate(all="raise"):
        findings = _findings(plans, *history, spike)

    assert findings
    spikes = [finding for finding in findings if finding.evidence["kind"] == "rolling_hour"]
    assert spikes
    assert spikes[0].evidence["baseline_mad"] == 0
    assert spikes[0].evidence["baseline_median"] == 0.3
    assert spikes[0].evidence["baseline_hours"] == 120


def test_new_key_in_crowded_frame_judged_by_budget(plans):
    others = [_hourly(f"office-{n}", [0.03] * 6 * 24) for n in range(5)]
    fresh = events("fresh", T0 + 5 * DAY + np.arange(120) * 30, cost=0.05)

    findings = [finding for finding in _findings(plans, *others, fresh) if finding.subject == "fresh"]

    assert findings
    assert all(finding.evidence["baseline_hours"] == 0 for finding in findings)
    assert all(finding.evidence["kind"] == "rolling_hour" for finding in findings)
    assert max(finding.impact for finding in findings) == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize(("history_cost", "active_hours"), [(0.000001, 120), (0.0000004, 0)])
def test_tiny_costs_round_to_micro_credits(plans, history_cost, active_hours):
    # Under half a micro-credit a request costs 0, so its hours are not active spend.
    history = _hourly("tiny", [history_cost] * 5 * 24)
    burst = events("tiny", T0 + 5 * DAY + 1800 + np.arange(10) * 60, cost=1.0)

    findings = _findings(plans, history, burst)

    assert findings
    assert findings[0].evidence["baseline_hours"] == active_hours


@pytest.mark.parametrize("short_window", [90.0, 30.0, 420.0])
def test_short_window_must_be_whole_minutes(short_window):
    with pytest.raises(ValueError, match="invalid short_window"):
        AbnormalCostDetector(short_window=short_window)


def test_short_window_of_five_minutes(plans):
    history = _office_weeks("victim", 0.002)
    stolen_start = T0 + 6 * DAY + 3 * HOUR
    stolen = events("victim", stolen_start + np.arange(40) * 180, cost=0.4, ip="203.0.113.9", country="US")

    findings = AbnormalCostDetector(short_window=300.0).detect(prepare_events(frame(history, stolen), plans))
    short = [finding for finding in findings if finding.evidence["kind"] == "short_window"]

    assert short
    assert short[0].evidence["window_s"] == 300.0
    # The floor is 1.5x the budget's rate over 5 minutes (0.25 credits), so the first request of 0.4 passes it.
    assert short[0].detected_at == stolen_start
    assert short[0].evidence["spend_short_window"] == pytest.approx(0.4)
