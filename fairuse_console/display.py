"""Formatting of subjects, evidence and times for the staff member reading a page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from detector.review.privacy import mask_address, mask_text, mask_values
from detector.review.staff import StaffMember


@dataclass(frozen=True, slots=True)
class Display:
    """Formatting for one member: viewers see every address as network plus pseudonym.

    Reviewers and admins see addresses in full, because they act on them (an
    allowlist entry for an ``ip`` subject needs the exact address).
    """

    member: StaffMember | None
    pseudonym_key: bytes

    @property
    def masks(self) -> bool:
        return self.member is None or self.member.role == "viewer"

    def subject(self, subject_type: str, subject: str) -> str:
        """Return a subject id as this member may see it; addresses inside any id are masked too."""
        if not self.masks:
            return subject
        if subject_type == "ip":
            return mask_address(subject, self.pseudonym_key)
        return mask_text(subject, self.pseudonym_key)

    def json(self, value: Any) -> str:
        """Return ``value`` as indented JSON, with addresses masked for viewers."""
        shown = mask_values(value, self.pseudonym_key) if self.masks else value
        return json.dumps(shown, indent=2, sort_keys=True, ensure_ascii=False, default=str)

    def text(self, value: str) -> str:
        return mask_values(value, self.pseudonym_key) if self.masks else value


def when(moment: datetime | None) -> str:
    """Return a UTC time as ``YYYY-MM-DD HH:MM UTC``, or a dash."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "–"


def age_hours(moment: datetime) -> float:
    return (datetime.now(UTC) - moment).total_seconds() / 3600


def in_force(decision, at: datetime | None = None) -> bool:
    """Return whether gateways apply the decision at ``at``, counting from its storing when it was detected later."""
    at = at or datetime.now(UTC)
    return not decision.simulated and decision.in_force_at(at)
