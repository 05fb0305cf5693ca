"""Turn findings into decisions: rules, allowlist, repeat offenders, the suspension cap."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from detector.decisions import ACTION_RANK, LIFTED, Decision, decision_id
from detector.detectors.base import Finding
from detector.policy.config import Policy, Rule

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PolicyOutcome:
    """New decisions, and what the policy changed on the way."""

    decisions: list[Decision] = field(default_factory=list)
    covered: int = 0
    allowlisted: int = 0
    capped: int = 0
    warnings: list[str] = field(default_factory=list)


def decide(
    findings: list[Finding],
    policy: Policy,
    prior: list[Decision] = (),  # type: ignore[assignment]
    *,
    now: datetime | None = None,
    simulated: bool | None = None,
    suspensions: list[Decision] = (),  # type: ignore[assignment]
    context: list[Finding] = (),  # type: ignore[assignment]
) -> PolicyOutcome:
    """Return the decisions ``findings`` call for, given the decisions already in force.

    Findings are taken in event-time order. A finding adds nothing when its
    subject already has a decision that covers it: in force at the finding's
    time, with the same or a stronger action, on the same scope or on all
    endpoints. So scoring the same input twice creates no new decisions. ``prior`` must hold
    the stored decisions of the subjects involved. ``suspensions`` contains the
    stored suspensions of every subject in the hours of ``findings``, so the
    hourly suspension cap counts those of earlier runs and other workers.
    ``context`` contains findings decided on before, such as the stored findings
    of the merge window before a stream batch. They join the reasons and
    evidence of later decisions on their subject, as they would in one pass
    over all findings, but make no decision themselves.
    """
    now = now or datetime.now(UTC)
    simulated = policy.simulation if simulated is None else simulated
    outcome = PolicyOutcome()

    # Simulated and enforced decisions live side by side and never cover each other.
    prior = [decision for decision in prior if decision.simulated == simulated]
    state = _SubjectState.from_prior(prior)
    counted = {decision.id: decision for decision in [*prior, *suspensions] if decision.simulated == simulated}
    suspensions_per_hour = _count_suspensions_per_hour(list(counted.values()))
    recent: dict[tuple[str, str], list[Finding]] = defaultdict(list)

    for finding, decided_before in _in_event_order(findings, context):
        rule = policy.rule_for(finding.reason, finding.score, finding.impact, finding.evidence.get("kind"))
        if rule is None:
            continue

        subject = (finding.subject_type, finding.subject)
        recent[subject].append(finding)
        if decided_before:
            continue
        at = datetime.fromtimestamp(finding.detected_at, UTC)
        action = rule.action

        if action != "review" and policy.is_allowlisted(*subject):
            action = "review"
            outcome.allowlisted += 1

        if state.covers(subject, action, rule.scope, at, rule.limit_rpm, finding.reason):
            outcome.covered += 1
            continue

        hour = int(finding.detected_at // 3600)
        if action == "suspend" and suspensions_per_hour[hour] >= policy.max_auto_suspensions_per_hour:
            action = "review"
            outcome.capped += 1
            if state.covers(subject, action, rule.scope, at, reason=finding.reason):
                outcome.covered += 1
                continue

        decision = _make_decision(
            finding, rule, action, policy, state, recent[subject], at, now, simulated
        )
        state.add(decision)
        outcome.decisions.append(decision)
        if action == "suspend":
            suspensions_per_hour[hour] += 1

    if outcome.capped:
        message = (
            f"{outcome.capped} automatic suspensions went past the limit of "
            f"{policy.max_auto_suspensions_per_hour} per hour and were made reviews instead"
        )
        logger.warning(message)
        outcome.warnings.append(message)
    return outcome


def _in_event_order(findings: list[Finding], context: list[Finding]) -> list[tuple[Finding, bool]]:
    """Return the findings of both lists in event-time order, each with whether it came from ``context``."""
    tagged = [(finding, False) for finding in findings] + [(finding, True) for finding in context]
    return sorted(tagged, key=lambda item: (item[0].detected_at, item[0].subject, item[0].reason))


def _make_decision(
    finding: Finding,
    rule: Rule,
    action: str,
    policy: Policy,
    state: _SubjectState,
    recent: list[Finding],
    at: datetime,
    now: datetime,
    simulated: bool,
) -> Decision:
    subject = (finding.subject_type, finding.subject)
    earliest = finding.detected_at - policy.merge_window.total_seconds()
    supporting = [item for item in recent if item.detected_at >= earliest]

    reasons = [finding.reason] + sorted({item.reason for item in supporting} - {finding.reason})
    evidence = {item.reason: item.evidence for item in supporting}
    evidence[finding.reason] = finding.evidence
    score = max(item.score for item in supporting)

    duration = rule.duration
    offences = 0
    if action != "review":
        offences = state.offences_before(subject, at)
        duration = min(duration * (policy.repeat_factor**offences), policy.max_duration)

    origin = f"{finding.origin}+{policy.origin}"
    return Decision(
        id=decision_id(*subject, action, rule.scope, at, origin, simulated),
        subject_type=finding.subject_type,
        subject=finding.subject,
        action=action,
        reasons=reasons,
        score=float(score),
        evidence=evidence,
        detected_at=at,
        created_at=now,
        expires_at=at + duration,
        origin=origin,
        simulated=simulated,
        scope=rule.scope,
        limit_rpm=rule.limit_rpm if action == "throttle" else None,
        account_id=finding.account_id,
        plan=finding.plan,
        rule=rule.name,
        extra={"earlier_offences": offences, "rule_action": rule.action},
    )


class _SubjectState:
    """Decisions in force per subject, to tell covered findings and repeat offences."""

    def __init__(self) -> None:
        self._by_subject: dict[tuple[str, str], list[Decision]] = defaultdict(list)

    @classmethod
    def from_prior(cls, prior: list[Decision]) -> _SubjectState:
        state = cls()
        for decision in prior:
            state.add(decision)
        return state

    def add(self, decision: Decision) -> None:
        self._by_subject[(decision.subject_type, decision.subject)].append(decision)

    def covers(
        self,
        subject: tuple[str, str],
        action: str,
        scope: str,
        at: datetime,
        limit_rpm: int | None = None,
        reason: str | None = None,
    ) -> bool:
        """Return whether a decision in force already does at least what ``action`` would.

        A throttle covers another throttle only when its limit is as strict
        or stricter, so a growing flood gets a harder throttle. A review covers
        another review only when it lists ``reason``, so a key under review for
        sharing still gets a review for a cost spike.
        """
        rank = ACTION_RANK[action]
        for decision in self._by_subject.get(subject, ()):
            in_force = decision.detected_at <= at < decision.expires_at
            scope_covers = decision.scope == "all" or decision.scope == scope
            if not (in_force and scope_covers):
                continue
            if ACTION_RANK[decision.action] > rank:
                return True
            if action == "review" and reason is not None and reason not in decision.reasons:
                continue
            if decision.action == action and not _looser(decision.limit_rpm, limit_rpm):
                return True
        return False

    def offences_before(self, subject: tuple[str, str], at: datetime) -> int:
        """Count the offences that ended before ``at``: throttles and suspensions, leaving out those staff lifted.

        A decision still in force is the same offence going on, so a harder
        throttle during a growing flood does not double its own duration. For
        the same reason, ended decisions whose times in force overlap count as
        one offence, such as two throttles of one flood found a few seconds
        apart when a late event moved its start.
        """
        ended = sorted(
            (decision.detected_at, decision.expires_at)
            for decision in self._by_subject.get(subject, ())
            if decision.action != "review" and decision.expires_at <= at and LIFTED not in decision.extra
        )
        offences = 0
        offence_end = None
        for start, end in ended:
            if offence_end is None or start >= offence_end:
                offences += 1
                offence_end = end
            else:
                offence_end = max(offence_end, end)
        return offences


def _looser(existing: int | None, requested: int | None) -> bool:
    """Return whether an existing throttle limit lets more requests through than the requested one."""
    if existing is None or requested is None:
        return False
    return existing > requested


def _count_suspensions_per_hour(prior: list[Decision]) -> defaultdict[int, int]:
    counts: defaultdict[int, int] = defaultdict(int)
    for decision in prior:
        if decision.action == "suspend" and not decision.origin.startswith("staff"):
            counts[int(decision.detected_at.timestamp() // 3600)] += 1
    return counts


def is_active(decision: Decision, at: datetime) -> bool:
    """Return whether ``decision`` is in force at ``at``."""
    return decision.detected_at <= at < decision.expires_at


__all__ = ["PolicyOutcome", "decide", "is_active"]
