from dataclasses import replace
from importlib import resources
from datetime import UTC, datetime, timedelta

import pytest

from detector.detectors import Finding
from detector.plans import ConfigError
from detector.policy import decide, load_policy
from tests.factories import HOUR, T0

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _finding(subject="key-1", reason="abnormal_cost", score=90.0, impact=3.0, at=T0, subject_type="key", kind="load"):
    return Finding(
        subject_type=subject_type, subject=subject, account_id="acct", plan="text", reason=reason,
        score=score, impact=impact, detected_at=at, window_start=at - HOUR, window_end=at,
        origin=f"{reason}/1", evidence={"value": 1, "kind": kind},
    )


def _shipped_policy_text():
    return resources.files("detector.config").joinpath("policy.toml").read_text("utf-8")


def _policy_file(tmp_path, body):
    path = tmp_path / "policy.toml"
    path.write_text(body, "utf-8")
    return path


def test_rule_order_picks_strongest_match(policy):
    outcome = decide([_finding(score=90, impact=3)], policy, now=NOW)

    assert [decision.action for decision in outcome.decisions] == ["suspend"]
    assert outcome.decisions[0].rule == "cost spike far over budget"


def test_finding_without_rule_makes_no_decision(policy):
    assert decide([_finding(score=20, impact=0.1)], policy, now=NOW).decisions == []


def test_decision_fields(policy):
    decision = decide([_finding()], policy, now=NOW).decisions[0]

    assert decision.detected_at == datetime.fromtimestamp(T0, UTC)
    assert decision.created_at == NOW
    assert decision.expires_at - decision.detected_at == timedelta(hours=6)
    assert decision.reasons == ["abnormal_cost"]
    assert decision.origin.startswith("abnormal_cost/1+policy/default-")
    assert decision.simulated is False


def test_throttle_carries_limit_and_scope(policy):
    decision = decide([_finding(reason="image_quota", score=80, impact=2)], policy, now=NOW).decisions[0]

    assert decision.action == "throttle"
    assert decision.scope == "images"
    assert decision.limit_rpm == 1


def test_allowlisted_subject_gets_review_only(tmp_path):
    text = _shipped_policy_text()
    policy = load_policy(_policy_file(tmp_path, text.replace("subjects = []", 'subjects = ["key:vip"]')))

    outcome = decide([_finding(subject="vip")], policy, now=NOW)

    assert [decision.action for decision in outcome.decisions] == ["review"]
    assert outcome.allowlisted == 1


def test_repeat_offender_gets_doubled_duration(policy):
    first = _finding(at=T0)
    second = _finding(at=T0 + 7 * HOUR)  # after the first 6h suspension expired

    decisions = decide([first, second], policy, now=NOW).decisions

    assert [decision.expires_at - decision.detected_at for decision in decisions] == [
        timedelta(hours=6),
        timedelta(hours=12),
    ]


def test_overlapping_ended_decisions_one_offence(policy):
    # A stream that saw a late event can store the same suspension twice, found 40 s apart.
    first, moved = (decide([_finding(at=T0 + offset)], policy, now=NOW).decisions[0] for offset in (0, 40))
    apart = decide([_finding(at=T0 + 7 * HOUR)], policy, now=NOW).decisions[0]

    overlapping = decide([_finding(at=T0 + 7 * HOUR)], policy, [first, moved], now=NOW).decisions
    separate = decide([_finding(at=T0 + 14 * HOUR)], policy, [first, apart], now=NOW).decisions

    assert overlapping[0].extra["earlier_offences"] == 1
    assert overlapping[0].expires_at - overlapping[0].detected_at == timedelta(hours=12)
    assert separate[0].extra["earlier_offences"] == 2
    assert separate[0].expires_at - separate[0].detected_at == timedelta(hours=24)


def test_finding_inside_active_decision_is_covered(policy):
    outcome = decide([_finding(at=T0), _finding(at=T0 + HOUR)], policy, now=NOW)

    assert len(outcome.decisions) == 1
    assert outcome.covered == 1


def test_weaker_action_inside_suspension_is_covered(policy):
    findings = [_finding(at=T0), _finding(at=T0 + 60, score=60, impact=1.2)]

    outcome = decide(findings, policy, now=NOW)

    assert [decision.action for decision in outcome.decisions] == ["suspend"]


def test_review_for_other_reason_not_covered(policy):
    sharing = _finding(at=T0, reason="key_sharing", score=70, impact=2, kind="devices")
    cost = _finding(at=T0 + 3 * HOUR, score=60, impact=0.6)

    decisions = decide([sharing, cost], policy, now=NOW).decisions

    assert [decision.action for decision in decisions] == ["review", "review"]
    assert decisions[1].reasons[0] == "abnormal_cost"


def test_review_for_same_reason_covered(policy):
    first = _finding(at=T0, score=60, impact=0.6)
    second = _finding(at=T0 + 3 * HOUR, score=60, impact=0.6)

    outcome = decide([first, second], policy, now=NOW)

    assert len(outcome.decisions) == 1
    assert outcome.covered == 1


def test_stronger_action_during_review_escalates(policy):
    findings = [_finding(at=T0, score=60, impact=0.6), _finding(at=T0 + 60, score=90, impact=3)]

    actions = [decision.action for decision in decide(findings, policy, now=NOW).decisions]

    assert actions == ["review", "suspend"]


def test_image_throttle_does_not_cover_full_throttle(policy):
    findings = [
        _finding(reason="image_quota", score=80, impact=2, at=T0),
        _finding(reason="automation", score=80, impact=2, at=T0 + 60),
    ]

    scopes = [decision.scope for decision in decide(findings, policy, now=NOW).decisions]

    assert scopes == ["images", "all"]


def test_suspension_cap_turns_extra_into_reviews(tmp_path):
    text = _shipped_policy_text()
    policy = load_policy(_policy_file(tmp_path, text.replace("max_auto_suspensions_per_hour = 20", "max_auto_suspensions_per_hour = 2")))
    findings = [_finding(subject=f"key-{index}", at=T0 + index) for index in range(5)]

    outcome = decide(findings, policy, now=NOW)

    actions = [decision.action for decision in outcome.decisions]
    assert actions.count("suspend") == 2
    assert actions.count("review") == 3
    assert outcome.capped == 3
    assert "past the limit of 2 per hour" in outcome.warnings[0]


def test_rerun_with_prior_decisions_makes_nothing_new(policy):
    findings = [_finding(at=T0), _finding(subject="key-2", reason="image_quota", score=80, impact=2, at=T0)]
    first = decide(findings, policy, now=NOW).decisions

    again = decide(findings, policy, first, now=NOW + timedelta(days=1))

    assert again.decisions == []


def test_pattern_automation_only_reported(policy):
    outcome = decide([_finding(reason="automation", score=90, impact=5, kind="pattern")], policy, now=NOW)

    assert outcome.decisions == []


def test_decision_ids_stable_across_runs(policy):
    first = decide([_finding()], policy, now=NOW).decisions[0]
    second = decide([_finding()], policy, now=NOW + timedelta(days=3)).decisions[0]

    assert first.id == second.id


def test_simulated_decisions_do_not_cover_real_ones(policy):
    simulated = decide([_finding()], policy, now=NOW, simulated=True).decisions

    real = decide([_finding()], policy, simulated, now=NOW).decisions

    assert [decision.simulated for decision in real] == [False]
    assert real[0].id != simulated[0].id


def test_reasons_merge_within_window(policy):
    findings = [_finding(reason="automation", score=65, impact=0.2, at=T0), _finding(at=T0 + 600)]

    decision = decide(findings, policy, now=NOW).decisions[0]

    assert decision.reasons == ["abnormal_cost"]
    findings = [_finding(reason="automation", score=65, impact=2, at=T0), _finding(at=T0 + 600)]
    decisions = decide(findings, policy, now=NOW).decisions
    assert decisions[-1].reasons == ["abnormal_cost", "automation"]


@pytest.mark.parametrize(
    ("replace_from", "replace_to", "message"),
    [
        ('action = "suspend"', 'action = "ban"', r"rules\[1\]\.action: expected one of"),
        ('duration = "6h"', 'duration = "six hours"', r"invalid duration 'six hours'"),
        ("limit_rpm = 10", "limit_rpm = 0", r"limit_rpm: a throttle needs"),
        ("subjects = []", 'subjects = ["user:1"]', r"allowlist.subjects: invalid entry 'user:1'"),
    ],
)
def test_invalid_policy_names_field(tmp_path, replace_from, replace_to, message):
    text = _shipped_policy_text()
    path = _policy_file(tmp_path, text.replace(replace_from, replace_to, 1))

    with pytest.raises(ConfigError, match=message):
        load_policy(path)


def test_shipped_policy_loads(policy):
    assert policy.rules
    assert policy.max_auto_suspensions_per_hour == 20
    assert replace(policy, simulation=True).simulation


def test_harder_throttle_not_covered_by_lighter(policy):
    findings = [
        _finding(reason="automation", score=70, impact=2.0, at=T0),
        _finding(reason="automation", score=90, impact=8.0, at=T0 + 120),
    ]

    decisions = decide(findings, policy, now=NOW).decisions

    assert [decision.limit_rpm for decision in decisions] == [60, 30]


def test_lighter_throttle_covered_by_harder(policy):
    findings = [
        _finding(reason="automation", score=90, impact=8.0, at=T0),
        _finding(reason="automation", score=70, impact=2.0, at=T0 + 120),
    ]

    decisions = decide(findings, policy, now=NOW).decisions

    assert [decision.limit_rpm for decision in decisions] == [30]


def test_suspension_cap_counts_suspensions_of_earlier_runs(tmp_path):
    text = _shipped_policy_text()
    policy = load_policy(_policy_file(tmp_path, text.replace("max_auto_suspensions_per_hour = 20", "max_auto_suspensions_per_hour = 2")))
    earlier = decide([_finding(subject=f"old-{index}", at=T0 + index) for index in range(2)], policy, now=NOW).decisions

    outcome = decide([_finding(subject="new-1", at=T0 + 10)], policy, now=NOW, suspensions=earlier)

    assert [decision.action for decision in outcome.decisions] == ["review"]
    assert outcome.capped == 1


def test_flood_escalation_not_repeat_offence(policy):
    light = _finding(reason="automation", score=60.0, impact=3.0, at=T0)
    heavy = _finding(reason="automation", score=60.0, impact=12.0, at=T0 + 300)

    decisions = decide([light, heavy], policy, now=NOW).decisions

    assert [decision.limit_rpm for decision in decisions] == [60, 30]
    assert all(decision.extra["earlier_offences"] == 0 for decision in decisions)


def test_allowlisted_address_matches_in_any_spelling(tmp_path):
    text = _shipped_policy_text().replace("subjects = []", 'subjects = ["ip:::ffff:198.51.100.7"]')
    policy = load_policy(_policy_file(tmp_path, text))

    assert policy.is_allowlisted("ip", "198.51.100.7")


def test_allowlisted_address_that_is_no_address_is_refused(tmp_path):
    text = _shipped_policy_text().replace("subjects = []", 'subjects = ["ip:office"]')

    with pytest.raises(ConfigError, match="'ip:office': not an IPv4 or IPv6 address"):
        load_policy(_policy_file(tmp_path, text))


def test_decision_staff_lifted_is_no_earlier_offence(policy):
    first = decide([_finding(at=T0)], policy, now=NOW).decisions[0]
    lifted = replace(first, expires_at=first.detected_at + timedelta(minutes=10), extra={"lifted_at": "2026-11-23T00:10:00Z"})

    again = decide([_finding(at=T0 + 7 * HOUR)], policy, [lifted], now=NOW).decisions

    assert again[0].extra["earlier_offences"] == 0
    assert again[0].expires_at - again[0].detected_at == timedelta(hours=6)
