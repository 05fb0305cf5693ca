"""LiteLLM's ``LiteLLM_SpendLogs`` table as events, read after an (endTime, request_id) cursor.

Column layout from LiteLLM's ``litellm/proxy/schema.prisma`` (model
``LiteLLM_SpendLogs``, as shipped in litellm 1.110.2): ``api_key`` contains the
SHA-256 of the virtual key, never the key; ``status`` is ``success`` or
``failure``, with the HTTP code in ``metadata.error_information.error_code``.
Prisma stores ``DateTime`` as ``timestamp(3)`` without a time zone, in UTC.
Only the named fields of the JSON columns are read, never the stored
messages or response.

The proxy writes a spend-log row when the request ends, and in batches, so
the cursor and the settle wait go by ``endTime`` (``startTime`` where it is
empty), not by ``startTime``: a request that ran for ten minutes is written
ten minutes after it started, and a startTime cursor would have passed it.
Rows that ended in the last ``settle_seconds`` are left for the next read,
since a batch can commit a row after rows that ended later.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, literal, select, tuple_

from detector.events import IMAGE_ENDPOINTS
from detector.readers.base import ReaderError
from detector.readers.gateways.base import LogBatch, Mapped, collect, reflect_table, whole_number
from detector.readers.gateways.cursor import Cursor
from detector.readers.gateways.settings import GatewaySettings
from fairuse_gateway.litellm_endpoints import ENDPOINTS

TABLE = "LiteLLM_SpendLogs"
REQUIRED = ("request_id", "call_type", "api_key", "spend", "prompt_tokens", "completion_tokens",
            "startTime", "endTime", "model", "user", "team_id", "requester_ip_address", "status", "metadata")
# (name in the query, JSON column, path inside it)
JSON_FIELDS = (
    ("team_alias", "metadata", ("user_api_key_team_alias",)),
    ("user_agent", "metadata", ("user_agent",)),
    ("error_code", "metadata", ("error_information", "error_code")),
    ("stream", "proxy_server_request", ("stream",)),
)


class LiteLLMReader:
    """Map LiteLLM spend-log rows: the hashed key is the key, the user or team the account."""

    kind = "litellm"

    def __init__(self, engine: Engine, settings: GatewaySettings) -> None:
        if engine.dialect.name != "postgresql":
            raise ReaderError(f"LiteLLM keeps its spend logs in PostgreSQL; --from names a {engine.dialect.name} database")
        self.engine = engine
        self.settings = settings
        self.table = reflect_table(engine, TABLE, REQUIRED, "point --from at the LiteLLM proxy's DATABASE_URL")
        self.source = f"{settings.name}/{TABLE}"
        self.naive_times = not getattr(self.table.c.startTime.type, "timezone", False)

        columns = self.table.c
        selected = [columns[name] for name in REQUIRED]
        if "request_duration_ms" in columns:
            selected.append(columns.request_duration_ms)
        for label, json_column, path in JSON_FIELDS:
            if json_column in columns:
                selected.append(columns[json_column][path].astext.label(label))
        self.selected = [*selected, self._ended().label("written")]

    def read_after(self, cursor: Cursor, *, limit: int, settled_before: float, now: float | None = None) -> LogBatch:
        """Map up to ``limit`` rows after ``cursor`` that ended before ``settled_before`` (epoch s)."""
        ended, key = self._ended(), self.table.c.request_id
        query = select(*self.selected).where(ended <= self._time(settled_before)).order_by(ended, key).limit(limit)
        if cursor.last_time is not None:
            query = query.where(tuple_(ended, key) > self._position(cursor))
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()

        numbered = ((cursor.rows_read + index + 1, row) for index, row in enumerate(rows))
        batch = collect(LogBatch(), self.source, numbered, self.to_record)
        if rows:
            last_row = rows[-1]
            batch.cursor = Cursor(last_time=datetime.fromtimestamp(_epoch(last_row["written"]), UTC),
                                  last_key=last_row["request_id"], rows_read=cursor.rows_read + len(rows))
        else:
            batch.cursor = cursor
        return batch

    def read_before(self, cursor: Cursor, since: float) -> LogBatch:
        """Map the rows already read (up to ``cursor``) that started from ``since`` on."""
        if cursor.last_time is None:
            return LogBatch(cursor=cursor)
        start, ended, key = self.table.c.startTime, self._ended(), self.table.c.request_id
        query = (select(*self.selected).where(start >= self._time(since), tuple_(ended, key) <= self._position(cursor))
                 .order_by(ended, key))
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return collect(LogBatch(cursor=cursor), self.source, enumerate(rows, 1), self.to_record)

    def to_record(self, row: Any) -> Mapped:
        started = _epoch(row["startTime"])
        ended = _epoch(row["endTime"]) if row["endTime"] is not None else started
        duration = row.get("request_duration_ms")
        endpoint = ENDPOINTS.get(row["call_type"] or "", f"/v1/{row['call_type'] or 'unknown'}")
        status = _status(row["status"], row.get("error_code"))
        key = row["api_key"] or ""
        if not key:
            return ("key_id", "api_key is empty: the request used no virtual key")
        return {
            "request_id": row["request_id"],
            "ts": started,
            "account_id": row["user"] or row["team_id"] or key,
            "key_id": key,
            "plan": self.settings.plan_of(row.get("team_alias")),
            "endpoint": endpoint,
            "model": row["model"] or "",
            "prompt_tokens": whole_number(row["prompt_tokens"]),
            "completion_tokens": whole_number(row["completion_tokens"]),
            # The spend log has no image count: a request to an image endpoint counts as at least one.
            "images": 1 if endpoint in IMAGE_ENDPOINTS and status < 400 else 0,
            "cost": float(row["spend"] or 0.0) * self.settings.credits_per_usd,
            "ip": row["requester_ip_address"] or "",
            "user_agent": row.get("user_agent") or "",
            "status": status,
            "latency_ms": float(duration) if duration is not None else max(ended - started, 0.0) * 1000,
            "stream": (row.get("stream") or "").lower() == "true",
        }

    def _ended(self):
        """Return the time the proxy wrote a row: its endTime, else its startTime."""
        return func.coalesce(self.table.c.endTime, self.table.c.startTime)

    def _position(self, cursor: Cursor):
        return tuple_(literal(self._time(cursor.last_time.timestamp())), literal(cursor.last_key or ""))

    def _time(self, epoch: float) -> datetime:
        moment = datetime.fromtimestamp(epoch, UTC)
        return moment.replace(tzinfo=None) if self.naive_times else moment


def _epoch(moment: datetime) -> float:
    """Return a stored time as epoch seconds; a time without a zone is UTC, as Prisma writes it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _status(status: str | None, error_code: str | None) -> int:
    if (status or "success") != "failure":
        return 200
    if error_code and error_code.isdigit() and 400 <= int(error_code) <= 599:
        return int(error_code)
    return 500
