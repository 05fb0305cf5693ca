"""Readers of the ``logs`` table that new-api and one-api share, with a cursor on the row id.

Both gateways write one row per request (and rows for top-ups, admin actions
and system messages) with an auto-increment ``id`` and ``created_at`` in epoch
seconds. Rows are read in id order. Rows written in the last
``settle_seconds`` are left for the next read, because a row with a lower id
can still be committed after one with a higher id. A row dated more than
``FUTURE_TOLERANCE_SECONDS`` ahead of the clock is rejected rather than
waited for, so one row from a gateway with a wrong clock cannot hold back
every row after it.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, select

from detector.readers.gateways.base import LogBatch, Mapped, collect, reflect_table
from detector.readers.gateways.cursor import Cursor
from detector.readers.gateways.settings import GatewaySettings

# How far ahead of the clock a row's created_at may be and still be waited for.
FUTURE_TOLERANCE_SECONDS = 3600.0


class LogsTableReader:
    """Read a new-api or one-api ``logs`` table after an id; subclasses map rows to events."""

    kind = ""
    required: tuple[str, ...] = ("id", "created_at", "type", "user_id", "model_name", "quota",
                                 "prompt_tokens", "completion_tokens")
    optional: tuple[str, ...] = ()
    hint = ""

    def __init__(self, engine: Engine, settings: GatewaySettings) -> None:
        self.engine = engine
        self.settings = settings
        self.table = reflect_table(engine, "logs", self.required, self.hint)
        names = [*self.required, *(name for name in self.optional if name in self.table.c)]
        self.columns = [self.table.c[name] for name in names]
        self.source = f"{settings.name}/logs"
        # Rows dated after this (epoch s) are rejected; set by each read_after.
        self.future_after = float("inf")

    def read_after(self, cursor: Cursor, *, limit: int, settled_before: float, now: float | None = None) -> LogBatch:
        """Map up to ``limit`` rows after ``cursor`` that were written before ``settled_before`` (epoch s).

        Rows dated far ahead of ``now`` (the clock by default) are passed to ``to_record`` too,
        which rejects them, instead of stopping the read as unsettled rows do.
        """
        self.future_after = (time.time() if now is None else now) + FUTURE_TOLERANCE_SECONDS
        query = select(*self.columns).order_by(self.table.c.id).limit(limit)
        if cursor.last_id is not None:
            query = query.where(self.table.c.id > cursor.last_id)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()

        settled = []
        for row in rows:
            created = row["created_at"]
            if created is not None and settled_before < created <= self.future_after:
                break
            settled.append(row)
        self.prepare(settled)

        batch = collect(LogBatch(), self.source, ((row["id"], row) for row in settled), self.to_record)
        last_id = settled[-1]["id"] if settled else cursor.last_id
        batch.cursor = Cursor(last_id=last_id, rows_read=cursor.rows_read + len(settled))
        return batch

    def read_before(self, cursor: Cursor, since: float) -> LogBatch:
        """Map the rows already read (up to ``cursor``) written from ``since`` on, as context for scoring."""
        if cursor.last_id is None:
            return LogBatch(cursor=cursor)
        query = (
            select(*self.columns)
            .where(self.table.c.id <= cursor.last_id, self.table.c.created_at >= int(since))
            .order_by(self.table.c.id)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        self.prepare(rows)
        return collect(LogBatch(cursor=cursor), self.source, ((row["id"], row) for row in rows), self.to_record)

    def prepare(self, rows: list[Any]) -> None:
        """Load what mapping ``rows`` needs from other tables; nothing by default."""

    def to_record(self, row: Any) -> Mapped:
        raise NotImplementedError

    def unusable(self, row: Any) -> tuple[str, str] | None:
        """Return (field, reason) when a request row has no user or a time far in the future, else None."""
        if row["user_id"] is None:
            return ("account_id", "user_id is empty: the row names no user, so it has no account")
        created = row["created_at"]
        if created is not None and created > self.future_after:
            ahead = created - self.future_after + FUTURE_TOLERANCE_SECONDS
            return ("ts", f"created_at {created} is {ahead:.0f} s ahead of this machine's clock; "
                          "fix the gateway's clock (rows dated in the future are not waited for)")
        return None

    def common_fields(self, row: Any) -> dict[str, Any]:
        """Return the fields both gateways fill the same way."""
        return {
            "request_id": f"{self.settings.name}:{row['id']}",
            "ts": row["created_at"],
            "account_id": f"{self.settings.name}:user:{row['user_id']}",
            "model": row["model_name"] or "",
            "prompt_tokens": row["prompt_tokens"] or 0,
            "completion_tokens": row["completion_tokens"] or 0,
            "cost": (row["quota"] or 0) / self.settings.quota_per_usd * self.settings.credits_per_usd,
            "user_agent": "",
        }
