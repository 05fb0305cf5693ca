"""Import cursors kept in the fairuse store, so a rerun reads only rows it has not read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from detector.store.gateway_sync import GatewayCursorRow


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last row read: its id (new-api, one-api) or its time and key (LiteLLM)."""

    last_id: int | None = None
    last_time: datetime | None = None
    last_key: str | None = None
    rows_read: int = 0


def load_cursor(engine: Engine, name: str) -> Cursor:
    """Return the stored cursor of ``name``, or an empty one before its first run."""
    with Session(engine) as session:
        row = session.get(GatewayCursorRow, name)
        if row is None:
            return Cursor()
        return Cursor(row.last_id, row.last_time, row.last_key, row.rows_read)


def save_cursor(engine: Engine, name: str, kind: str, cursor: Cursor) -> None:
    """Store ``cursor`` as the position of ``name``."""
    with Session(engine) as session, session.begin():
        row = session.get(GatewayCursorRow, name)
        if row is None:
            row = GatewayCursorRow(name=name, kind=kind)
            session.add(row)
        row.last_id = cursor.last_id
        row.last_time = cursor.last_time
        row.last_key = cursor.last_key
        row.rows_read = cursor.rows_read
        row.updated_at = datetime.now(UTC)
