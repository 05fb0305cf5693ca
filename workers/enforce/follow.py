"""Keep enforcers running: a pass now, then one after every decision change or ``interval`` seconds.

The decisions change stream (``PREFIX:decisions``, written by the
publisher) only wakes the loop early. The store stays the source of truth,
so a missed or trimmed entry delays a change but never loses it. The last entry
seen is stored as the cursor ``enforce:PREFIX:decisions``, so a restarted
loop does not wait for entries it has already acted on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import redis
from sqlalchemy import Engine

from detector.readers.gateways.cursor import Cursor, load_cursor, save_cursor
from workers.enforce.enforcer import EnforcementReport, Enforcer

logger = logging.getLogger(__name__)


def run_passes(enforcers: Sequence[Enforcer]) -> list[EnforcementReport]:
    """Reconcile every gateway once; one gateway's failure never stops the others."""
    reports = []
    for enforcer in enforcers:
        try:
            reports.append(enforcer.reconcile())
        except Exception as error:  # noqa: BLE001 - a broken gateway config must not block the others
            logger.exception("gateway %s: enforcement pass failed", enforcer.adapter.name)
            reports.append(EnforcementReport(enforcer.adapter.name, errors=[str(error)]))
    return reports


def follow(enforcers: Sequence[Enforcer], stop: threading.Event, *, store_engine: Engine,
           client: redis.Redis | None, prefix: str, interval: float,
           on_pass: Callable[[list[EnforcementReport]], None] | None = None) -> None:
    """Run passes until ``stop`` is set, waking early on entries of the decisions change stream."""
    stream = f"{prefix}:decisions"
    cursor_name = f"enforce:{stream}"
    position = load_cursor(store_engine, cursor_name).last_key or _stream_end(client, stream)
    while not stop.is_set():
        reports = run_passes(enforcers)
        if on_pass:
            on_pass(reports)
        if client is None:
            stop.wait(interval)
            continue
        try:
            answer = client.xread({stream: position}, count=1000, block=int(interval * 1000))
        except redis.RedisError as error:
            logger.warning("decisions change stream %s unreadable, polling every %.0f s: %s", stream, interval, error)
            stop.wait(interval)
            continue
        if answer:
            position = answer[0][1][-1][0].decode()
            save_cursor(store_engine, cursor_name, "enforce", Cursor(last_key=position))


def _stream_end(client: redis.Redis | None, stream: str) -> str:
    """Return the id of the newest entry, so a change made during the first pass still wakes the loop."""
    if client is None:
        return "$"
    try:
        newest = client.xrevrange(stream, count=1)
    except redis.RedisError:
        return "$"
    return newest[0][0].decode() if newest else "0-0"
