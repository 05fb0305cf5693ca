import numpy as np

from detector.detectors import AutomationDetector
from detector.features import prepare_events
from detector.pipeline import default_detectors, score_events
from tests.factories import HOUR, T0, events, frame, human_times


def _findings(plans, *parts):
    return AutomationDetector().detect(prepare_events(frame(*parts), plans))


def test_fast_regular_bot_found_with_load_over_plan(plans):
    rng = np.random.default_rng(5)
    times = T0 + np.arange(0, 4 * HOUR, 4.0) + rng.normal(0, 0.2, 3600)

    findings = [item for item in _findings(plans, events("bot", np.sort(times))) if item.evidence["kind"] == "load"]

    assert findings
    assert findings[0].evidence["iat_cv"] < 0.25
    assert findings[0].detected_at - T0 < 10 * 60
    # Found at the plan's rate, then again as the load grows past it.
    assert findings[0].impact >= 1.0
    assert max(item.impact for item in findings if item.detected_at - T0 < 10 * 60) >= 1.5


def test_hourly_cron_found_but_tiny_impact(plans):
    rng = np.random.default_rng(6)
    times = T0 + np.arange(7 * 24) * HOUR + rng.uniform(0, 3, 7 * 24)

    findings = _findings(plans, events("cron", times, plan="coding", prompt_hash="aa11"))

    assert len(findings) == 1
    assert findings[0].evidence["kind"] == "pattern"
    assert findings[0].impact < 0.05


def test_hourly_cron_on_paid_plan_gets_no_decision(plans, policy):
    rng = np.random.default_rng(6)
    times = T0 + np.arange(7 * 24) * HOUR + rng.uniform(0, 3, 7 * 24)

    result = score_events(
        frame(events("cron", times, plan="coding", prompt_hash="aa11")),
        plans=plans, policy=policy, detectors=default_detectors(),
    )

    assert [finding.reason for finding in result.findings] == ["automation"]
    assert result.decisions == []
    assert result.subjects.loc[0, "risk_score"] > 0


def test_runaway_loop_repeats_one_prompt(plans):
    times = T0 + np.arange(0, 2 * HOUR, 2.0)

    findings = [item for item in _findings(plans, events("loop", times, prompt_hash="deadbeef")) if item.evidence["kind"] == "load"]

    assert findings
    assert findings[0].evidence["top_prompt_share"] == 1.0


def test_parallel_flood_found(plans):
    # 40 requests started within the same second, every 20 seconds, for 10 minutes.
    waves = T0 + np.repeat(np.arange(0, 600, 20.0), 40) + np.tile(np.linspace(0, 0.9, 40), 30)

    findings = _findings(plans, events("flood", waves))

    assert findings
    assert findings[0].evidence["started_in_1s"] >= 8


def test_human_working_hours_not_automation(plans):
    rng = np.random.default_rng(7)

    assert _findings(plans, events("person", human_times(rng, days=7, per_day=60))) == []


def test_constant_cadence_is_regular_not_nan(plans):
    # Exactly every 5 s: the spread of the gaps is 0, so the CV is 0, not NaN.
    times = T0 + np.arange(0, HOUR, 5.0)

    findings = [item for item in _findings(plans, events("metronome", times)) if item.evidence["kind"] == "load"]

    assert findings
    assert findings[0].evidence["iat_cv"] == 0


def test_fast_bot_with_new_prompts_found(plans, policy):
    # Five requests a second, jittered, each with its own prompt and a tiny cost:
    # no regular cadence above 2 s, no repeated prompt, no parallel waves.
    rng = np.random.default_rng(8)
    times = np.sort(T0 + np.cumsum(rng.uniform(0.1, 0.3, 3000)))
    bot = events("cheap-bot", times, cost=0.0001, prompt_hash=[f"p{number}" for number in range(3000)])

    result = score_events(frame(bot), plans=plans, policy=policy, detectors=[AutomationDetector()])

    loads = [item for item in result.findings if item.evidence["kind"] == "load"]
    assert loads
    assert loads[0].evidence["requests_10m"] >= 600
    assert loads[0].detected_at - T0 <= 10 * 60
    assert "throttle" in {decision.action for decision in result.decisions}


def test_busy_person_below_fast_pace_not_found(plans):
    # 400 requests in 10 minutes at uneven gaps with new prompts: over the plan, but no machine signal.
    rng = np.random.default_rng(9)
    times = np.sort(T0 + rng.uniform(0, 600, 400))
    person = events("busy", times, prompt_hash=[f"p{number}" for number in range(400)])

    assert [item for item in _findings(plans, person) if item.evidence["kind"] == "load"] == []
