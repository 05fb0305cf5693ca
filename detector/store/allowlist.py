"""The staff allowlist: subjects that policy may send to review but never throttle or suspend.

Entries are written by staff actions (``detector.review.actions``) and end by
expiring or by being removed; this module reads them for scoring and listing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Engine, select, tuple_
from sqlalchemy.orm import Session

from detector.store.review_models import AllowlistRow

_CHUNK = 500


def is_active(entry: AllowlistRow, at: datetime) -> bool:
    """Return whether ``entry`` is in force at ``at``."""
    return entry.removed_at is None and entry.created_at <= at < entry.expires_at


class StaffAllowlist:
    """Reads of the staff allowlist."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def entries(self, *, at: datetime | None = None, include_ended: bool = False) -> list[AllowlistRow]:
        """Return entries in force at ``at`` (now by default), newest first; with ``include_ended``, every entry."""
        at = at or datetime.now(UTC)
        query = select(AllowlistRow).order_by(AllowlistRow.created_at.desc(), AllowlistRow.id.desc())
        if not include_ended:
            query = query.where(
                AllowlistRow.removed_at.is_(None), AllowlistRow.created_at <= at, AllowlistRow.expires_at > at
            )
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(query))

    def active_among(self, subjects: Iterable[tuple[str, str]], at: datetime | None = None) -> set[tuple[str, str]]:
        """Return the (subject_type, subject) pairs of ``subjects`` allowlisted at ``at`` (now by default).

        Scoring passes this to policy, which then makes reviews at most for them.
        """
        at = at or datetime.now(UTC)
        # Identifiers are stored with NUL replaced, as PostgreSQL text cannot contain it.
        stored_as = {(kind, name.replace("\x00", "\ufffd")): (kind, name) for kind, name in subjects}
        pairs = sorted(stored_as)
        found: set[tuple[str, str]] = set()
        with Session(self.engine) as session:
            for start in range(0, len(pairs), _CHUNK):
                query = select(AllowlistRow.subject_type, AllowlistRow.subject).where(
                    tuple_(AllowlistRow.subject_type, AllowlistRow.subject).in_(pairs[start : start + _CHUNK]),
                    AllowlistRow.removed_at.is_(None),
                    AllowlistRow.created_at <= at,
                    AllowlistRow.expires_at > at,
                )
                # MariaDB compares text case-insensitively by default; keep exact matches only.
                found.update(stored_as[tuple(pair)] for pair in session.execute(query) if tuple(pair) in stored_as)
        return found
