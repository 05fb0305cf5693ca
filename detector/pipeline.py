"""One scoring code path: events in, findings, risk scores and decisions out.

The batch command and the stream workers both call ``score_events``; neither
has detection or policy logic of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from detector.decisions import Decision
from detector.detectors import (
    AbnormalCostDetector,
    AnomalyDetector,
    AutomationDetector,
    Detector,
    Finding,
    ImageQuotaDetector,
    KeySharingDetector,
)
from detector.features import PreparedEvents, prepare_events
from detector.model_registry import AnomalyModel
from detector.plans import PlanCatalogue
from detector.policy import Policy, PolicyOutcome, decide

logger = logging.getLogger(__name__)

PriorLookup = Callable[[Iterable[tuple[str, str]]], list[Decision]]
AllowlistLookup = Callable[[Iterable[tuple[str, str]]], set[tuple[str, str]]]


@dataclass(slots=True)
class ScoringResult:
    """Everything one scoring pass produced."""

    findings: list[Finding]
    subjects: pd.DataFrame
    outcome: PolicyOutcome
    prepared: PreparedEvents

    @property
    def decisions(self) -> list[Decision]:
        return self.outcome.decisions


def default_detectors(model: AnomalyModel | None = None) -> list[Detector]:
    """Return the shipped detectors; the anomaly detector only when a model is given."""
    detectors: list[Detector] = [
        AbnormalCostDetector(),
        KeySharingDetector(),
        AutomationDetector(),
        ImageQuotaDetector(),
    ]
    if model is not None:
        detectors.append(AnomalyDetector(model))
    return detectors


def score_events(
    frame: pd.DataFrame,
    *,
    plans: PlanCatalogue,
    policy: Policy,
    detectors: Sequence[Detector],
    prior: PriorLookup | None = None,
    allowlisted: AllowlistLookup | None = None,
    now: datetime | None = None,
    simulated: bool | None = None,
) -> ScoringResult:
    """Run every detector over ``frame``, score subjects, and apply ``policy``.

    ``prior`` returns the stored decisions of the subjects involved, so that
    decisions already in force are not made again. ``allowlisted`` returns
    those of the given subjects that staff allowlisted, which policy treats
    like its own allowlist. ``simulated`` overrides the policy's simulation
    setting.
    """
    prepared = prepare_events(frame, plans)

    findings: list[Finding] = []
    for detector in detectors:
        found = detector.detect(prepared)
        logger.debug("detector %s found %d", detector.reason, len(found))
        findings.extend(found)

    flagged = {(finding.subject_type, finding.subject) for finding in findings}
    existing = prior(flagged) if prior and flagged else []
    if allowlisted and flagged:
        policy = policy.with_allowlisted(allowlisted(flagged))
    outcome = decide(findings, policy, existing, now=now, simulated=simulated)
    subjects = risk_table(prepared, findings, outcome.decisions)
    return ScoringResult(findings=findings, subjects=subjects, outcome=outcome, prepared=prepared)


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
