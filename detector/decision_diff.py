"""Differences between two sets of decisions: new ones and vanished ones, by reason and action."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table

from detector.decisions import Decision

EXAMPLES = 3

# A decision is matched by subject, action and its main reason, so a change of
# duration, score or detection minute alone is not reported as a change.
DecisionKey = tuple[str, str, str, str]


@dataclass(slots=True)
class ChangeGroup:
    """Subjects that gain or lose decisions with one reason and action."""

    change: str
    reason: str
    action: str
    subjects: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.subjects)

    @property
    def examples(self) -> list[str]:
        return self.subjects[:EXAMPLES]


@dataclass(slots=True)
class DecisionDiff:
    """Decisions only the candidate makes (new), only the baseline makes (gone), and both make."""

    new: list[ChangeGroup]
    gone: list[ChangeGroup]
    unchanged: int
    baseline_total: int
    candidate_total: int

    @property
    def changed(self) -> bool:
        return bool(self.new or self.gone)

    def to_dict(self) -> dict:
        """Return the diff as JSON-ready values."""
        return {
            "unchanged": self.unchanged,
            "baseline_decisions": self.baseline_total,
            "candidate_decisions": self.candidate_total,
            "changes": [
                {"change": group.change, "reason": group.reason, "action": group.action, "subjects": group.count,
                 "examples": group.examples}
                for group in (*self.new, *self.gone)
            ],
        }


def diff_decisions(baseline: Iterable[Decision], candidate: Iterable[Decision]) -> DecisionDiff:
    """Compare two decision sets by (subject, action, main reason)."""
    before = _keys(baseline)
    after = _keys(candidate)
    return DecisionDiff(
        new=_groups("new", after - before),
        gone=_groups("gone", before - after),
        unchanged=len(before & after),
        baseline_total=len(before),
        candidate_total=len(after),
    )


def render_diff(diff: DecisionDiff, *, baseline: str, candidate: str) -> Group:
    """Return a rich table of the changes, with a totals line."""
    table = Table(title=f"Changes from {baseline} to {candidate}")
    if not diff.changed:
        table.caption = "no decision would change"
    for header in ("change", "reason", "action", "subjects", "examples"):
        table.add_column(header, justify="right" if header == "subjects" else "left")
    for group in (*diff.new, *diff.gone):
        table.add_row(group.change, group.reason, group.action, str(group.count), ", ".join(group.examples))
    totals = Table(show_header=False, box=None)
    totals.add_row("decisions (subject, action, reason) before", str(diff.baseline_total))
    totals.add_row("decisions after", str(diff.candidate_total))
    totals.add_row("unchanged", str(diff.unchanged))
    totals.add_row("new", str(sum(group.count for group in diff.new)))
    totals.add_row("gone", str(sum(group.count for group in diff.gone)))
    return Group(table, totals)


def _keys(decisions: Iterable[Decision]) -> set[DecisionKey]:
    return {
        (decision.subject_type, decision.subject, decision.action, decision.reasons[0] if decision.reasons else "")
        for decision in decisions
    }


def _groups(change: str, keys: set[DecisionKey]) -> list[ChangeGroup]:
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for subject_type, subject, action, reason in keys:
        grouped[(reason, action)].append(f"{subject_type}:{subject}")
    groups = [
        ChangeGroup(change=change, reason=reason, action=action, subjects=sorted(subjects))
        for (reason, action), subjects in grouped.items()
    ]
    return sorted(groups, key=lambda group: (-group.count, group.reason, group.action))
