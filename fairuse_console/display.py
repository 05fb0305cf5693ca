"""Formatting of subjects, evidence and times for the staff member reading a page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


def when(moment: datetime | None, zone: tzinfo = UTC) -> str:
    """Return a time in ``zone`` as ``YYYY-MM-DD HH:MM`` and its offset (``UTC``, ``UTC+8``), or a dash."""
    if moment is None:
        return "–"
    local = moment.astimezone(zone)
    return local.strftime("%Y-%m-%d %H:%M ") + offset_label(local)


def offset_label(moment: datetime) -> str:
    """Return the UTC offset of an aware time as ``UTC``, ``UTC+8`` or ``UTC-3:30``."""
    minutes = int((moment.utcoffset() or timedelta()).total_seconds() // 60)
    if minutes == 0:
        return "UTC"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{'+' if minutes > 0 else '-'}{hours}" + (f":{rest:02d}" if rest else "")


def display_zone(name: str) -> tzinfo:
    """Return the time zone with the IANA name ``name`` (such as ``Asia/Shanghai``); ``UTC`` or "" is UTC."""
    if name in ("", "UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; give an IANA name such as Asia/Shanghai, or UTC") from None


def age_hours(moment: datetime) -> float:
    return (datetime.now(UTC) - moment).total_seconds() / 3600


def in_force(decision, at: datetime | None = None) -> bool:
    """Return whether gateways apply the decision at ``at``, counting from its storing when it was detected later."""
    at = at or datetime.now(UTC)
    return not decision.simulated and decision.in_force_at(at)
