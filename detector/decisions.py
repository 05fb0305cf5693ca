"""The decision record: what the gateway enforces, and why."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

ACTIONS = ("review", "throttle", "suspend")
# Higher ranks override lower ones on the same subject.
ACTION_RANK = {"review": 0, "throttle": 1, "suspend": 2}
SUBJECT_TYPES = ("key", "account", "ip")
SCOPES = ("all", "images")
# The largest request rate, per minute, that a throttle may allow.
MAX_LIMIT_RPM = 1_000_000
# The ``extra`` entry, with the time, of a decision that staff ended early (lifted or dismissed).
LIFTED = "lifted_at"

_ID_NAMESPACE = uuid.UUID("5d2f2b0e-7c1a-4d9b-9a57-3f0a6a1c2e44")


@dataclass(frozen=True, slots=True)
class Decision:
    """One throttle, review or suspend of one subject, immutable once written.

    A decision ends by expiring, or by a later record that lifts it. It is
    never edited. ``limit_rpm`` is set on throttles only, and ``scope`` tells
    whether a throttle covers every endpoint or only image endpoints.
    """

    id: str
    subject_type: str
    subject: str
    action: str
    reasons: list[str]
    score: float
    evidence: dict[str, Any]
    detected_at: datetime
    created_at: datetime
    expires_at: datetime
    origin: str
    simulated: bool = False
    scope: str = "all"
    limit_rpm: int | None = None
    account_id: str = ""
    plan: str = ""
    rule: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_force_from(self) -> datetime:
        """Return when the decision starts to apply: its detection, or its storing if that came first.

        An event stamped by a gateway whose clock runs ahead is detected "in
        the future"; its decision applies from the moment it is stored.
        """
        return min(self.detected_at, self.created_at)

    def in_force_at(self, moment: datetime) -> bool:
        """Return whether the decision applies at ``moment``."""
        return self.in_force_from <= moment < self.expires_at

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as JSON-ready values (times as RFC 3339 UTC)."""
        values = asdict(self)
        for name in ("detected_at", "created_at", "expires_at"):
            values[name] = values[name].isoformat().replace("+00:00", "Z")
        return values


def decision_id(
    subject_type: str, subject: str, action: str, scope: str, detected_at: datetime, origin: str,
    simulated: bool,
) -> str:
    """Return a stable id, so scoring the same input twice yields the same decisions."""
    # NOTE: the throttle limit is not part of the key. A stricter throttle found at the same millisecond as a
    # stored one gets the stored one's id and is dropped on insert. Adding the limit would change every
    # stored throttle's id, so re-scoring an old input would store its throttles twice.
    key = "|".join(
        [subject_type, subject, action, scope, f"{detected_at.timestamp():.3f}", origin, str(simulated)]
    )
    return str(uuid.uuid5(_ID_NAMESPACE, key))
