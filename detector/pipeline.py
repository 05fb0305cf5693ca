"""One scoring code path: events in, findings, risk scores and decisions out.

The batch command and the stream workers both call ``score_events``; neither
has detection or policy logic of its own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from detector.cores import available_cores
from detector.decisions import Decision
from detector.detectors import Detector, Finding, KeySharingDetector
from detector.detectors.base import detect_since
from detector.detectors.forked import can_fork, detect_in_processes
from detector.features import PreparedEvents, prepare_events
from detector.features.hosting import hosting_from_environment
from detector.model_registry import AnomalyModel
from detector.plans import PlanCatalogue
from detector.policy import Policy, PolicyOutcome, decide
from detector.store.repository import finding_id
from detector.thresholds import build_detectors, load_thresholds, merged

logger = logging.getLogger(__name__)

PriorLookup = Callable[[Iterable[tuple[str, str]]], list[Decision]]
SuspensionLookup = Callable[[datetime, datetime], list[Decision]]
AllowlistLookup = Callable[[Iterable[tuple[str, str]]], set[tuple[str, str]]]
FindingsLookup = Callable[[Iterable[tuple[str, str]], float, float], list[Finding]]

# Smaller inputs, such as stream micro-batches, score in one process. NOTE: an
# estimate, not a measured break-even: a fork and the findings sent back cost
# tens of milliseconds, while the detectors take about 1.7 s per million events.
MIN_EVENTS_TO_FORK = 200_000
# Inputs of at least this many events run their detectors in threads, which overlap because numpy
# releases the GIL (docs/benchmarks.md). NOTE: an estimate, not a measured break-even.
MIN_EVENTS_FOR_THREADS = 50_000


@dataclass(slots=True)
class ScoringResult:
    """Everything one scoring pass produced."""

    findings: list[Finding]
    subjects: pd.DataFrame
    outcome: PolicyOutcome
    prepared: PreparedEvents
    # Stored decisions of the subjects with findings, as the policy saw them.
    prior: list[Decision] = field(default_factory=list)

    @property
    def decisions(self) -> list[Decision]:
        return self.outcome.decisions

    def acted_on(self) -> set[tuple[str, str]]:
        """Return the subjects with a decision from this pass or a stored one."""
        return {(decision.subject_type, decision.subject) for decision in [*self.prior, *self.outcome.decisions]}


def default_detectors(model: AnomalyModel | None = None) -> list[Detector]:
    """Return the shipped detectors; the anomaly detector only when a model is given.

    Thresholds come from the shipped ``thresholds.toml``, overridden by those
    the model was trained and evaluated with. Key sharing leaves out the
    hosting networks of the file ``FAIRUSE_HOSTING_NETWORKS`` names, if any.
    """
    thresholds = load_thresholds()
    if model is not None:
        thresholds = merged(thresholds, model.thresholds)
    detectors = build_detectors(thresholds, model)
    hosting = hosting_from_environment()
    if hosting is None:
        return detectors
    return [
        dataclasses.replace(detector, hosting=hosting) if isinstance(detector, KeySharingDetector) else detector
        for detector in detectors
    ]


def score_events(
    frame: pd.DataFrame | PreparedEvents,
    *,
    plans: PlanCatalogue,
    policy: Policy,
    detectors: Sequence[Detector],
    prior: PriorLookup | None = None,
    suspensions: SuspensionLookup | None = None,
    allowlisted: AllowlistLookup | None = None,
    now: datetime | None = None,
    simulated: bool | None = None,
    processes: int = 1,
    since: float | None = None,
) -> ScoringResult:
    """Run every detector over ``frame``, score subjects, and apply ``policy``.

    ``frame`` is the canonical event frame, or the events ``prepare_events``
    already coded from it with the same ``plans``. Prepared events need
    ``since`` to be None, because ``since`` needs each input row's plan.

    ``prior`` returns the stored decisions of the subjects involved, so that
    decisions already in force are not made again. ``suspensions`` returns the
    stored suspensions detected in a span of time, for the policy's hourly cap.
    ``allowlisted`` returns those of the given subjects that staff allowlisted,
    which policy treats like its own allowlist. ``simulated`` overrides the
    policy's simulation setting. With ``processes`` above 1, detectors run in
    that many processes when the input has at least ``MIN_EVENTS_TO_FORK``
    events and the process can fork (see ``detect_in_processes``).

    With ``since`` (epoch seconds), the events before it are context only,
    already scored by an earlier pass: a stream worker passes its batch's
    earliest event time. Detectors then build findings from ``since`` minus
    the policy's ``merge_window`` on, because the policy merges a subject's
    findings of that span into each decision's reasons and evidence.
    Findings that measure the whole input (automation patterns, anomalous
    days) still come whole. The findings from ``since`` on and the decisions
    are those of a pass without ``since``, given the decisions of the
    earlier passes in ``prior``. The subject table's risk scores and reasons
    then cover only the findings of this pass. When a subject's plan changed
    from ``since`` on, ``since`` is ignored (see ``plan_changed_since``).
    """
    if isinstance(frame, PreparedEvents):
        if since is not None:
            raise ValueError("since needs the event frame, not prepared events")
        prepared = frame
    else:
        prepared = prepare_events(frame, plans)
    if since is not None and plan_changed_since(prepared, frame["plan"], since):
        since = None

    findings_from = None if since is None else since - policy.merge_window.total_seconds()
    findings: list[Finding] = []
    for detector, found in zip(detectors, run_detectors(detectors, prepared, processes, findings_from)):
        logger.debug("detector %s found %d", detector.reason, len(found))
        findings.extend(found)

    outcome, existing = apply_policy(
        findings, policy, prior=prior, suspensions=suspensions, allowlisted=allowlisted, now=now, simulated=simulated
    )
    subjects = risk_table(prepared, findings, outcome.decisions)
    gaps = evidence_gaps(detectors, prepared)
    subjects["evidence_gaps"] = [gaps.get(code, []) for code in subjects["code"]]
    subjects = subjects.drop(columns="code")
    outcome.warnings.extend(gap_warnings(gaps))
    return ScoringResult(findings=findings, subjects=subjects, outcome=outcome, prepared=prepared, prior=existing)


def apply_policy(
    findings: list[Finding],
    policy: Policy,
    *,
    prior: PriorLookup | None = None,
    suspensions: SuspensionLookup | None = None,
    allowlisted: AllowlistLookup | None = None,
    stored_findings: FindingsLookup | None = None,
    context_since: float | None = None,
    now: datetime | None = None,
    simulated: bool | None = None,
) -> tuple[PolicyOutcome, list[Decision]]:
    """Decide on ``findings`` with the stored decisions, suspensions and allowlist; return the outcome and the prior decisions.

    The batch command and both stream workers decide through this function.
    ``prior``, ``suspensions`` and ``allowlisted`` are as in ``score_events``.
    A caller whose detectors do not repeat the findings of the policy's merge
    window, such as the state worker, passes ``stored_findings`` (see
    ``DecisionStore.findings_between``) and ``context_since``, the earliest
    time its findings may have. The stored findings of the subjects that
    may get a decision, from ``context_since`` minus the merge window to the
    newest of ``findings``, then join the decisions' reasons and evidence
    as context. Those with the id of a finding in ``findings``, which a
    redelivered batch makes again, are left out.
    """
    flagged = {(finding.subject_type, finding.subject) for finding in findings}
    existing = prior(flagged) if prior and flagged else []
    if allowlisted and flagged:
        policy = policy.with_allowlisted(allowlisted(flagged))
    capped = suspensions(*_hours_spanned(findings)) if suspensions and findings else []
    context: list[Finding] = []
    if stored_findings is not None and context_since is not None and flagged:
        context = _stored_context(findings, policy, stored_findings, context_since)
    outcome = decide(findings, policy, existing, now=now, simulated=simulated, suspensions=capped, context=context)
    return outcome, existing


def _stored_context(
    findings: list[Finding], policy: Policy, stored_findings: FindingsLookup, since: float
) -> list[Finding]:
    """Return the stored findings that ``apply_policy`` gives ``decide`` as context.

    Only subjects with a finding that some rule matches can get a decision,
    so only their stored findings are read. A stream batch returns the
    automation pattern of every subject it touches, and no shipped rule
    matches those, so this keeps the query small.
    """
    actionable = {
        (finding.subject_type, finding.subject)
        for finding in findings
        if policy.rule_for(finding.reason, finding.score, finding.impact, finding.evidence.get("kind")) is not None
    }
    if not actionable:
        return []
    start = since - policy.merge_window.total_seconds()
    end = max(finding.detected_at for finding in findings) + 1.0
    again = {finding_id(finding) for finding in findings}
    return [found for found in stored_findings(actionable, start, end) if finding_id(found) not in again]


def plan_changed_since(prepared: PreparedEvents, plan: pd.Series, since: float) -> bool:
    """Return whether a subject's last request has another plan than its last request before ``since``.

    ``plan`` is the plan column of the frame ``prepared`` was made from.
    Detectors measure all of a subject's events against the plan of its last
    request, so a new plan can change findings before ``since`` that earlier
    passes built under the old plan.
    """
    earlier = np.flatnonzero(prepared.events["ts"].to_numpy() < since)
    if not len(earlier) or prepared.input_rows is None:
        return False
    # Events are sorted by subject and time, so each subject's last earlier event ends its run.
    subject = prepared.events["subject"].to_numpy()[earlier]
    last = np.append(subject[1:] != subject[:-1], True)
    before = plan.take(prepared.input_rows[earlier[last]]).to_numpy()
    latest = prepared.subjects["plan"].to_numpy()[subject[last]]
    return bool((before != latest).any())


def run_detectors(
    detectors: Sequence[Detector], prepared: PreparedEvents, processes: int = 1, since: float | None = None
) -> list[list[Finding]]:
    """Return each detector's findings in detector order, from forked processes or threads when that pays.

    ``since`` goes to each detector (see ``detect_since``). With ``processes``
    above 1, detectors run in forked processes (see ``detect_in_processes``).
    Otherwise an input of ``MIN_EVENTS_FOR_THREADS`` events or more runs them
    in one thread per available core, because detectors only read ``prepared``.
    """
    events = len(prepared.events)
    if processes > 1 and len(detectors) > 1 and events >= MIN_EVENTS_TO_FORK and can_fork():
        return detect_in_processes(detectors, prepared, processes, since)

    threads = min(len(detectors), available_cores())
    if threads < 2 or events < MIN_EVENTS_FOR_THREADS:
        return [detect_since(detector, prepared, since) for detector in detectors]
    logger.debug("%d detectors on %d events in %d threads", len(detectors), events, threads)
    with ThreadPoolExecutor(threads, thread_name_prefix="fairuse-detector") as pool:
        return list(pool.map(lambda detector: detect_since(detector, prepared, since), detectors))


def _hours_spanned(findings: Sequence[Finding]) -> tuple[datetime, datetime]:
    """Return the start of the first finding's hour and the end of the last one's."""
    first = min(finding.detected_at for finding in findings)
    last = max(finding.detected_at for finding in findings)
    return (
        datetime.fromtimestamp(first // 3600 * 3600, UTC),
        datetime.fromtimestamp((last // 3600 + 1) * 3600, UTC),
    )


def evidence_gaps(detectors: Sequence[Detector], prepared: PreparedEvents) -> dict[int, list[str]]:
    """Return, by subject code, the evidence detectors could not measure, as ``reason: why`` lines.

    A detector reports its gaps through an optional ``evidence_gaps(prepared)``
    method, so a subject whose requests lack what a detector needs is shown as
    unmeasured instead of as clean.
    """
    gaps: dict[int, list[str]] = {}
    for detector in detectors:
        report = getattr(detector, "evidence_gaps", None)
        if report is None:
            continue
        for code, why in report(prepared).items():
            gaps.setdefault(code, []).append(f"{detector.reason}: {why}")
    return gaps


def gap_warnings(gaps: dict[int, list[str]]) -> list[str]:
    """Return one warning per kind of gap, such as ``key_sharing: network evidence unavailable``, with its subject count."""
    counts: dict[str, int] = {}
    for lines in gaps.values():
        for line in lines:
            reason, _, why = line.partition(": ")
            kind = f"{reason}: {why.split(':')[0]}"
            counts[kind] = counts.get(kind, 0) + 1
    return [f"{kind} for {count} subjects (see evidence_gaps in the subject scores)" for kind, count in sorted(counts.items())]


def risk_table(
    prepared: PreparedEvents, findings: list[Finding], decisions: list[Decision]
) -> pd.DataFrame:
    """Return one row per subject with its risk score (0–100), reasons and new actions.

    The risk score is the highest finding score, plus 5 for every further
    distinct reason, capped at 100; a subject without findings scores 0.
    """
    table = prepared.subjects[
        ["subject_type", "subject", "account_id", "plan", "requests", "first_ts", "last_ts"]
    ].copy()
    table["code"] = np.arange(len(table))
    keys = list(zip(table["subject_type"], table["subject"]))

    best: dict[tuple[str, str], float] = {}
    reasons: dict[tuple[str, str], set[str]] = {}
    for finding in findings:
        key = (finding.subject_type, finding.subject)
        best[key] = max(best.get(key, 0.0), finding.score)
        reasons.setdefault(key, set()).add(finding.reason)

    actions: dict[tuple[str, str], set[str]] = {}
    for decision in decisions:
        actions.setdefault((decision.subject_type, decision.subject), set()).add(decision.action)

    extra = np.array([5 * max(len(reasons.get(key, ())) - 1, 0) for key in keys], dtype=float)
    table["risk_score"] = np.minimum(np.array([best.get(key, 0.0) for key in keys]) + extra, 100.0)
    table["reasons"] = [sorted(reasons.get(key, ())) for key in keys]
    table["actions"] = [sorted(actions.get(key, ())) for key in keys]
    return table.sort_values(["risk_score", "requests"], ascending=False).reset_index(drop=True)
