"""Per-subject event windows in Redis, shared by every stream worker.

Each subject's recent events live in a sorted set,
``{prefix}:window:{subject_type}:{subject}``, scored by event time, one member
per request (the canonical event as one JSON line, so storing a request twice
keeps one member). Every write trims events older than ``window_seconds`` before the
newest event, caps the set at ``max_events`` members and sets the key to
expire ``window_seconds`` plus a day after the write, so no window outlives its
data.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.json as pajson
import redis

from detector.events import COLUMNS, empty_frame

WEEK = 7 * 86400

# Members are read back with the canonical types, so Arrow never takes an id
# such as "2026-11-23T10:00:00" for a timestamp and respells it.
_ARROW_TYPES = {"str": pa.string(), "float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_()}
_PARSE_OPTIONS = pajson.ParseOptions(
    explicit_schema=pa.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in COLUMNS.items()])
)


class EventWindows:
    """Read and extend the Redis windows of the subjects in a micro-batch."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "fairuse",
        window_seconds: int = WEEK,
        max_events: int = 20_000,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.window_seconds = window_seconds
        self.max_events = max_events

    def key(self, subject_type: str, subject: str) -> str:
        return f"{self.prefix}:window:{subject_type}:{subject}"

    def load(self, subjects: Iterable[tuple[str, str]], newest: float) -> pd.DataFrame:
        """Return the stored events of ``subjects`` from the window ending at ``newest``."""
        subjects = list(subjects)
        pipeline = self.client.pipeline(transaction=False)
        for subject_type, subject in subjects:
            pipeline.zrangebyscore(self.key(subject_type, subject), newest - self.window_seconds, "+inf")
        members = [member for result in pipeline.execute() for member in result]
        if not members:
            return empty_frame()
        table = pajson.read_json(pa.py_buffer(b"\n".join(members)), parse_options=_PARSE_OPTIONS)
        return table.to_pandas().reindex(columns=list(COLUMNS)).astype(COLUMNS)

    def extend(self, frame: pd.DataFrame) -> None:
        """Add ``frame``'s events to their subjects' windows, trim them and refresh their expiry."""
        if frame.empty:
            return
        pipeline = self.client.pipeline(transaction=True)
        ttl = self.window_seconds + 86400
        # One member per request: the same row always serialises to the same bytes,
        # so storing a redelivered request again keeps a single member.
        members = frame[list(COLUMNS)].to_json(orient="records", lines=True, double_precision=15).encode().splitlines()
        keys = [self.key(kind, subject) for kind, subject in zip(frame["subject_type"], frame["key_id"])]
        by_key: dict[str, dict[bytes, float]] = {}
        for key, member, ts in zip(keys, members, frame["ts"].to_numpy().tolist()):
            by_key.setdefault(key, {})[member] = ts

        for key, members in by_key.items():
            newest = max(members.values())
            pipeline.zadd(key, members)
            pipeline.zremrangebyscore(key, "-inf", f"({newest - self.window_seconds}")
            pipeline.zremrangebyrank(key, 0, -self.max_events - 1)
            pipeline.expire(key, ttl)
        pipeline.execute()

