"""Reads of the audit trail that staff actions write (``detector.review.actions``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from detector.store.review_models import AuditRow


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def records(
        self, *, staff: str | None = None, subject: str | None = None, case_id: int | None = None,
        since: datetime | None = None, limit: int = 200,
    ) -> list[AuditRow]:
        """Return audit records, newest first, optionally only one member's, subject's or case's."""
        query = select(AuditRow).order_by(AuditRow.created_at.desc(), AuditRow.id.desc()).limit(limit)
        if staff:
            query = query.where(AuditRow.staff == staff)
        if subject:
            query = query.where(AuditRow.subject == subject)
        if case_id is not None:
            query = query.where(AuditRow.case_id == case_id)
        if since is not None:
            query = query.where(AuditRow.created_at >= since)
        with Session(self.engine, expire_on_commit=False) as session:
            records = list(session.scalars(query))
        # MariaDB compares text case-insensitively by default; keep exact matches only.
        return [record for record in records if not subject or record.subject == subject]
