"""Stream entries to events: payloads, parsing, and the dead-letter stream, shared by both stream workers.

An entry is ``(entry_id, fields)``, its fields a dict or Redis's flat list
of names and values. Its ``event`` field contains one JSON event. Entries
without one, with one longer than ``MAX_LINE_BYTES``, or whose event the
reader rejects, become dead letters: ``(entry_id, reason)`` pairs that
``dead_letter`` appends to the dead-letter stream. The workers acknowledge
them along with the rest of their batch, so the entries behind them are
processed.

An entry with a ``clock`` field instead is a clock tick: the epoch seconds
at which the hourly ``rescore_quiet_keys`` job appended it. A state worker
closes the anomaly days of a partition without recent events up to it
(``workers.state_consumer``); the window worker ignores ticks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import pandas as pd
import redis

from detector.readers import read_json_lines
from detector.readers.source import MAX_LINE_BYTES

logger = logging.getLogger(__name__)

EVENT_FIELD = b"event"
CLOCK_FIELD = b"clock"
# Redis returns a pending entry that was deleted or trimmed from its stream without its fields.
TRIMMED = (
    "the entry was deleted or trimmed from the stream before a worker acknowledged it, so its event is lost; "
    "keep the stream longer (the gateway's MAXLEN or MINID) than a minute of traffic"
)
# Entries kept in the dead-letter stream; older ones are trimmed.
DEAD_LETTER_MAXLEN = 100_000


@dataclass(slots=True)
class ParsedEntries:
    """The valid events of some entries, time-sorted with each ``request_id`` once, and the dead letters."""

    frame: pd.DataFrame
    dead: list[tuple[bytes, str]]
    # Events dropped because their request_id came earlier among the same entries.
    duplicates: int
    # The latest clock tick among the entries, in epoch seconds, or None without one.
    clock: float | None = None


def parse_entries(entries: list, stream: str) -> ParsedEntries:
    """Read the events of ``entries`` from ``stream`` with ``read_json_lines``; return them with the dead letters."""
    lines, line_ids, dead, ticks = _payloads(entries, stream)
    read = read_json_lines(lines, stream)
    for reject in read.rejects:
        entry_id = line_ids[reject.line - 1]
        dead.append((entry_id, f"{stream}:{entry_id.decode()}: {reject.field}: {reject.reason}"))
    clock = _latest_tick(ticks, stream, dead)
    return ParsedEntries(frame=read.frame, dead=dead, duplicates=read.duplicates, clock=clock)


def clock_tick(seconds: float) -> dict[bytes, bytes]:
    """Return the fields of a clock-tick entry for ``seconds`` since the epoch."""
    return {CLOCK_FIELD: repr(float(seconds)).encode()}


def dead_letter(client: redis.Redis, dead_stream: str, dead: list[tuple[bytes, str]], consumer: str) -> None:
    """Append each dead letter to ``dead_stream`` with its entry id and reason."""
    if not dead:
        return
    pipeline = client.pipeline(transaction=False)
    for entry_id, reason in dead:
        pipeline.xadd(dead_stream, {"entry": entry_id, "reason": reason}, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
    pipeline.execute()
    logger.warning("consumer %s: %d malformed entries moved to %s", consumer, len(dead), dead_stream)


def _payloads(entries, stream: str) -> tuple[list[bytes], list[bytes], list[tuple[bytes, str]], list[tuple[bytes, bytes]]]:
    """Return the event payloads with their entry ids, dead letters for entries without one, and the clock ticks."""
    lines: list[bytes] = []
    line_ids: list[bytes] = []
    dead: list[tuple[bytes, str]] = []
    ticks: list[tuple[bytes, bytes]] = []
    for entry_id, fields in entries:
        if fields is None:
            dead.append((entry_id, f"{stream}:{entry_id.decode()}: {TRIMMED}"))
            continue
        raw = event_field(fields)
        if raw is None and (tick := entry_field(fields, CLOCK_FIELD)) is not None:
            ticks.append((entry_id, tick))
            continue
        if not raw or raw.isspace():
            dead.append((entry_id, f"{stream}:{entry_id.decode()}: missing or empty 'event' field"))
            continue
        if len(raw) > MAX_LINE_BYTES:
            reason = (
                f"{stream}:{entry_id.decode()}: 'event' field of {len(raw):,} bytes "
                f"is longer than the limit of {MAX_LINE_BYTES:,} bytes; an event is a few hundred bytes"
            )
            dead.append((entry_id, reason))
            continue
        lines.append(raw)
        line_ids.append(entry_id)
    return lines, line_ids, dead, ticks


def _latest_tick(ticks: list[tuple[bytes, bytes]], stream: str, dead: list[tuple[bytes, str]]) -> float | None:
    """Return the latest valid tick in epoch seconds; an invalid one becomes a dead letter."""
    latest = None
    for entry_id, value in ticks:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            reason = (
                f"{stream}:{entry_id.decode()}: 'clock' field {value[:40]!r} is not epoch seconds; "
                "a clock tick holds the time it was appended, as workers.entries.clock_tick writes it"
            )
            dead.append((entry_id, reason))
            continue
        latest = seconds if latest is None else max(latest, seconds)
    return latest


def unparsed(response, **options):
    """Return a Redis reply as it came, for ``set_response_callback``."""
    return response


def unparsed_reader(client: redis.Redis) -> redis.Redis:
    """Return a client on ``client``'s connection pool whose XREADGROUP replies stay unparsed.

    redis-py's reply parser builds a dict per entry in Python. Without it,
    reading 10,000 entries took 20 instead of 27 ms (redis-py 8.2, hiredis 3.5).
    """
    reader = redis.Redis(connection_pool=client.connection_pool)
    reader.set_response_callback("XREADGROUP", unparsed)
    return reader


def stream_entries(response) -> list:
    """Return the entries of an unparsed one-stream XREADGROUP reply: a map in RESP3, a list of pairs in RESP2."""
    if not response:
        return []
    if isinstance(response, dict):
        return next(iter(response.values()))
    return response[0][1]


def event_field(fields: dict[bytes, bytes] | list[bytes] | None) -> bytes | None:
    """Return the ``event`` field of an entry, given as a dict or as Redis's flat list of names and values."""
    if fields and not isinstance(fields, dict) and fields[0] == EVENT_FIELD:
        return fields[1] if len(fields) > 1 else None
    return entry_field(fields, EVENT_FIELD)


def entry_field(fields: dict[bytes, bytes] | list[bytes] | None, name: bytes) -> bytes | None:
    """Return the field ``name`` of an entry, given as a dict or as Redis's flat list of names and values."""
    if isinstance(fields, dict):
        return fields.get(name)
    for index in range(0, len(fields or ()) - 1, 2):
        if fields[index] == name:
            return fields[index + 1]
    return None
