"""Targets of enforcement inside a gateway, and the values the decisions in force request there."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from detector.decisions import Decision

logger = logging.getLogger(__name__)


class MalformedSubject(ValueError):
    """A decision's subject belongs to this gateway but its id cannot name a token or user."""


def ascii_id(subject: str, text: str) -> str:
    """Return ``text`` when it is a whole number in ASCII digits; raise MalformedSubject naming ``subject``."""
    if not (text.isascii() and text.isdigit()):
        raise MalformedSubject(f"subject {subject!r}: {text!r} is not an id in the digits 0-9, so it names no target")
    return text


@dataclass(frozen=True, slots=True, order=True)
class Target:
    """One thing in a gateway: a ``token`` or ``user`` (new-api, one-api) or a ``key`` (LiteLLM), and the change."""

    target_type: str
    target: str
    # "disable" (new-api, one-api), "block" or "rpm_limit" (LiteLLM).
    action: str


@dataclass(slots=True)
class Wanted:
    """The value the decisions in force want on a target (the limit for ``rpm_limit``), and those decisions."""

    value: int | None = None
    decision_ids: list[str] = field(default_factory=list)


class Adapter(Protocol):
    """One gateway's admin API and the database it reads current values from."""

    name: str

    def targets(self, decision: Decision) -> list[tuple[Target, int | None]]:
        """Return the targets ``decision`` changes in this gateway: [] when its subject is not in this gateway."""

    def read(self, target: Target) -> dict[str, Any]:
        """Return the target's current value from the gateway's database; raise LookupError when it is gone."""

    def already_restricted(self, target: Target, current: dict[str, Any], value: int | None) -> bool:
        """Return True when the target is already at least as restricted as wanted, without this enforcer."""

    def still_applied(self, target: Target, current: dict[str, Any], value: int | None) -> bool:
        """Return True when the target still carries this enforcer's change."""

    def apply(self, target: Target, value: int | None, decision_ids: list[str]) -> None:
        """Make the change through the admin API."""

    def undo(self, target: Target, previous: dict[str, Any], decision_ids: list[str]) -> None:
        """Put back the value the target had before the change."""


def wanted_targets(adapter: Adapter, decisions: list[Decision]) -> tuple[dict[Target, Wanted], list[str]]:
    """Return every target the decisions in force want changed (the strictest value first), and malformed subjects.

    A decision whose subject is malformed is skipped with a warning naming it; the others are enforced.
    """
    wanted: dict[Target, Wanted] = {}
    malformed: list[str] = []
    for decision in sorted(decisions, key=lambda decision: decision.id):
        if decision.simulated:
            continue
        try:
            targets = adapter.targets(decision)
        except MalformedSubject as error:
            logger.warning("gateway %s: decision %s skipped: %s", adapter.name, decision.id, error)
            malformed.append(decision.subject)
            continue
        for target, value in targets:
            entry = wanted.setdefault(target, Wanted(value=value))
            if value is not None and (entry.value is None or value < entry.value):
                entry.value = value
            entry.decision_ids.append(decision.id)
    return wanted, malformed
