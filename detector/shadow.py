"""Shadow runs: a candidate model or policy scores beside the active one, and only records.

Shadow decisions are stored as simulated, with an origin starting ``shadow/``,
so they never cover, extend or replace an enforced decision. The publisher
skips simulated decisions, so none of them reaches Redis or a gateway.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import pandas as pd

from detector.decision_diff import DecisionDiff, diff_decisions
from detector.decisions import Decision, decision_id
from detector.detectors import Detector
from detector.features import PreparedEvents
from detector.pipeline import score_events
from detector.plans import PlanCatalogue
from detector.policy import Policy
from detector.store import DecisionStore

SHADOW_PREFIX = "shadow/"


class ShadowRun(NamedTuple):
    """The decisions of one shadow pass, and how many of them the store did not have yet."""

    decisions: list[Decision]
    stored: int


@dataclass(frozen=True, slots=True)
class Shadow:
    """A candidate's detectors and policy, named by ``label`` in the decisions it stores."""

    label: str
    detectors: Sequence[Detector]
    policy: Policy

    def score(
        self, frame: pd.DataFrame | PreparedEvents, *, plans: PlanCatalogue, store: DecisionStore,
        now: datetime | None = None, since: float | None = None,
    ) -> ShadowRun:
        """Score ``frame`` with the candidate and store its decisions as simulated.

        Return the decisions this pass made, and how many of them were not stored yet.
        ``frame`` and ``since`` are passed to ``score_events``.
        """
        events = frame.events if isinstance(frame, PreparedEvents) else frame
        if events.empty:
            return ShadowRun([], 0)
        result = score_events(
            frame,
            plans=plans,
            policy=self.policy,
            detectors=self.detectors,
            prior=lambda subjects: shadow_decisions(store.decisions_for(subjects)),
            now=now,
            simulated=True,
            since=since,
        )
        decisions = [as_shadow(decision, self.label) for decision in result.decisions]
        return ShadowRun(decisions, store.save_decisions(decisions))



def as_shadow(decision: Decision, label: str) -> Decision:
    """Return ``decision`` as a simulated shadow decision with its own id and a ``shadow/LABEL:`` origin."""
    # The origin column is 256 characters long; a long policy name must not make the insert fail.
    origin = f"{SHADOW_PREFIX}{label}:{decision.origin}"[:256]
    return dataclasses.replace(
        decision,
        id=decision_id(
            decision.subject_type, decision.subject, decision.action, decision.scope, decision.detected_at,
            origin, True,
        ),
        origin=origin,
        simulated=True,
        extra={**decision.extra, "shadow": label},
    )


def is_shadow(decision: Decision) -> bool:
    return decision.simulated and decision.origin.startswith(SHADOW_PREFIX)


def shadow_decisions(decisions: Iterable[Decision]) -> list[Decision]:
    """Keep the shadow decisions; the policy engine's ``prior`` for a shadow run."""
    return [decision for decision in decisions if is_shadow(decision)]


def compare_with_enforced(
    decisions: Sequence[Decision], span_seconds: float, started_at: datetime | None = None
) -> dict[str, DecisionDiff]:
    """Diff enforced decisions against each shadow's, over the last ``span_seconds`` before the newest decision.

    With ``started_at``, only decisions created from then on count, so
    enforced decisions made before the shadow ran are not reported as gone.
    Returns one diff per shadow label found in the window.
    """
    if started_at is not None:
        decisions = [decision for decision in decisions if decision.created_at >= started_at]
    if not decisions:
        return {}
    newest = max(decision.detected_at for decision in decisions).timestamp()
    recent = [decision for decision in decisions if decision.detected_at.timestamp() >= newest - span_seconds]
    enforced = [decision for decision in recent if not decision.simulated]
    by_label: dict[str, list[Decision]] = {}
    for decision in recent:
        if is_shadow(decision):
            by_label.setdefault(str(decision.extra.get("shadow", "")), []).append(decision)
    return {label: diff_decisions(enforced, shadowed) for label, shadowed in sorted(by_label.items())}


def without_shadow(decisions: Iterable[Decision]) -> list[Decision]:
    """Drop shadow decisions, so they never cover a finding of an enforced or ``--simulate`` run."""
    return [decision for decision in decisions if not is_shadow(decision)]


def prior_without_shadow(store: DecisionStore):
    """Return a ``prior`` lookup for ``score_events`` that leaves shadow decisions out."""
    return lambda subjects: without_shadow(store.decisions_for(subjects))


def decided_without_shadow(store: DecisionStore, subjects: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Return those of ``subjects`` with a stored decision that is not a shadow decision."""
    return store.subjects_with_decisions(subjects, ignored_simulated_origin=SHADOW_PREFIX)
