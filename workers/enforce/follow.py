"""Keep enforcers running: a pass now, then one after every decision change or ``interval`` seconds.

The decisions change stream (``PREFIX:decisions``, written by the
publisher) only wakes the loop early. The store stays the source of truth,
so a missed or trimmed entry delays a change but never loses it.
Publishers write Redis just before they store, so the pass an entry wakes
can miss its decision. Until the store shows it, another pass follows
after ``UNSETTLED_RETRY`` seconds, at most ``UNSETTLED_PASSES`` times. The last entry
seen is stored as the cursor ``enforce:PREFIX:decisions``, so a restarted
loop does not wait for entries it has already acted on.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from collections.abc import Callable, Sequence

import orjson
import redis
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from detector.readers.gateways.cursor import Cursor, load_cursor, save_cursor
from detector.store.models import DecisionRow
from workers.enforce.enforcer import EnforcementReport, Enforcer

logger = logging.getLogger(__name__)
# Seconds before another pass while a changed decision is not in the store yet, and at most how many such passes.
UNSETTLED_RETRY = 1.0
UNSETTLED_PASSES = 10


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
    # Changed decisions that the store did not show when a pass started, with their kind and the passes
    # left for them. Publishers write Redis just before they commit, so a woken pass can come too early.
    unsettled: dict[str, tuple[str, int]] = {}
    while not stop.is_set():
        unsettled = _unsettled(store_engine, unsettled)
        reports = run_passes(enforcers)
        if on_pass:
            on_pass(reports)
        unsettled = {decision_id: (kind, left - 1) for decision_id, (kind, left) in unsettled.items() if left > 1}
        wait = UNSETTLED_RETRY if unsettled else interval
        if client is None:
            stop.wait(wait)
            continue
        try:
            answer = client.xread({stream: position}, count=1000, block=int(wait * 1000))
        except redis.RedisError as error:
            logger.warning("decisions change stream %s unreadable, polling every %.0f s: %s", stream, interval, error)
            stop.wait(interval)
            continue
        if answer:
            position = answer[0][1][-1][0].decode()
            save_cursor(store_engine, cursor_name, "enforce", Cursor(last_key=position))
            for decision_id, kind in _changed_decisions(answer[0][1]).items():
                unsettled[decision_id] = (kind, UNSETTLED_PASSES)


def _changed_decisions(entries) -> dict[str, str]:
    """Return the decision ids of change entries with their kind (``new`` or ``deleted``); skip malformed entries."""
    changed = {}
    for _, fields in entries:
        try:
            change = orjson.loads(fields[b"change"])
            changed[str(change["id"])] = str(change["kind"])
        except (KeyError, TypeError, ValueError):
            continue
    return changed


def _unsettled(engine: Engine, changed: dict[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    """Return the changes the store does not show yet: new decisions not stored, lifted ones still in force."""
    if not changed:
        return {}
    now = datetime.now(UTC)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(DecisionRow.id, DecisionRow.expires_at).where(DecisionRow.id.in_(list(changed)))
            ).all()
    except SQLAlchemyError as error:
        # The pass reports the store's failure too; these changes then wait for the next change or interval.
        logger.warning("failed to check %d changed decisions in the store: %s", len(changed), error)
        return {}
    expires = {decision_id: expires_at for decision_id, expires_at in rows}
    return {
        decision_id: (kind, left) for decision_id, (kind, left) in changed.items()
        if decision_id not in expires or (kind == "deleted" and expires[decision_id] > now)
    }


def _stream_end(client: redis.Redis | None, stream: str) -> str:
    """Return the id of the newest entry, so a change made during the first pass still wakes the loop."""
    if client is None:
        return "$"
    try:
        newest = client.xrevrange(stream, count=1)
    except redis.RedisError:
        return "$"
    return newest[0][0].decode() if newest else "0-0"
