"""Publish decisions to Redis, where gateways read them.

Each subject has one key, ``{prefix}:decision:{subject_type}:{subject}``,
whose value lists the subject's decisions in force (enforced ones only,
never simulated) and which expires when the last of them does. Readers pick
the strongest decision still in force at read time, so when two decisions
overlap, the end of the shorter one never lifts the longer one. Every change
is also appended to the change stream ``{prefix}:decisions``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

import orjson
import redis

from detector.decisions import Decision

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "fairuse"
# Entries kept in the change stream; gateways that fall further behind take a snapshot.
CHANGE_STREAM_LENGTH = 100_000

# Merge decisions into a subject's key atomically, drop the ones that ended,
# and set the key to expire with the last decision still in force.
# KEYS[1]: subject key. ARGV[1]: now (ms). ARGV[2]: JSON array to add. ARGV[3]: JSON array of ids to remove.
_MERGE_SCRIPT = """
local now = tonumber(ARGV[1])
local removed = {}
for _, id in ipairs(cjson.decode(ARGV[3])) do removed[id] = true end
local kept, seen = {}, {}
-- A value that is not a string of the published JSON (written by something else) is replaced, not kept.
local current = redis.pcall('GET', KEYS[1])
local ok, decoded = false, nil
if type(current) == 'string' then ok, decoded = pcall(cjson.decode, current) end
if ok and type(decoded) == 'table' and type(decoded['active']) == 'table' then
  for _, entry in ipairs(decoded['active']) do
    if type(entry) == 'table' and type(entry['expires_ms']) == 'number' and entry['id'] ~= nil
        and entry['expires_ms'] > now and not removed[entry['id']] then
      kept[#kept + 1] = entry
      seen[entry['id']] = true
    end
  end
end
for _, entry in ipairs(cjson.decode(ARGV[2])) do
  if entry['expires_ms'] > now and not removed[entry['id']] and not seen[entry['id']] then
    kept[#kept + 1] = entry
    seen[entry['id']] = true
  end
end
if #kept == 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
local last = 0
for _, entry in ipairs(kept) do
  if entry['expires_ms'] > last then last = entry['expires_ms'] end
end
redis.call('SET', KEYS[1], cjson.encode({active = kept}), 'PXAT', last)
return #kept
"""


def subject_key(prefix: str, subject_type: str, subject: str) -> str:
    """Return the Redis key holding a subject's decisions in force."""
    return f"{prefix}:decision:{subject_type}:{subject}"


def published_entry(decision: Decision) -> dict:
    """Return the compact form a gateway reads: no evidence, times in epoch milliseconds."""
    return {
        "id": decision.id,
        "action": decision.action,
        "scope": decision.scope,
        "limit_rpm": decision.limit_rpm,
        "reasons": decision.reasons,
        "score": decision.score,
        "detected_ms": int(decision.in_force_from.timestamp() * 1000),
        "expires_ms": int(decision.expires_at.timestamp() * 1000),
    }


class DecisionPublisher:
    """Write decisions in force to Redis and log every change to the change stream."""

    def __init__(self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._merge = client.register_script(_MERGE_SCRIPT)

    @property
    def change_stream(self) -> str:
        return f"{self.prefix}:decisions"

    def publish(self, decisions: Iterable[Decision], *, now: datetime | None = None) -> int:
        """Publish the enforced decisions still in force at ``now``; return how many."""
        published, _ = self.apply(decisions, (), now=now)
        return published

    def delete(self, decisions: Iterable[Decision], *, now: datetime | None = None) -> int:
        """Withdraw lifted decisions from their subjects' keys; return how many."""
        _, withdrawn = self.apply((), decisions, now=now)
        return withdrawn

    def apply(
        self, new: Iterable[Decision], lifted: Iterable[Decision], *, now: datetime | None = None
    ) -> tuple[int, int]:
        """Publish ``new`` decisions in force at ``now`` and withdraw ``lifted`` ones; return how many of each.

        Everything goes in one MULTI/EXEC, so a connection lost on the way
        leaves Redis as it was, never with part of the change.
        """
        now = now or datetime.now(UTC)
        chosen = [decision for decision in new if not decision.simulated and decision.in_force_at(now)]
        lifted = list(lifted)
        if not chosen and not lifted:
            return 0, 0

        pipeline = self.client.pipeline(transaction=True)
        self._queue_new(pipeline, chosen, now)
        self._queue_lifted(pipeline, lifted, now)
        pipeline.execute()
        logger.debug("published %d decisions", len(chosen))
        if lifted:
            logger.info("withdrew %d decisions", len(lifted))
        return len(chosen), len(lifted)

    def _queue_new(self, pipeline, decisions: list[Decision], now: datetime) -> None:
        by_subject: dict[tuple[str, str], list[Decision]] = defaultdict(list)
        for decision in decisions:
            by_subject[(decision.subject_type, decision.subject)].append(decision)
        for (subject_type, subject), group in by_subject.items():
            entries = [published_entry(decision) for decision in group]
            self._merge(
                keys=[subject_key(self.prefix, subject_type, subject)],
                args=[_ms(now), orjson.dumps(entries), b"[]"],
                client=pipeline,
            )
            for decision in group:
                self._append_change(pipeline, "new", decision)

    def _queue_lifted(self, pipeline, decisions: list[Decision], now: datetime) -> None:
        for decision in decisions:
            self._merge(
                keys=[subject_key(self.prefix, decision.subject_type, decision.subject)],
                args=[_ms(now), b"[]", orjson.dumps([decision.id])],
                client=pipeline,
            )
            self._append_change(pipeline, "deleted", decision)

    def republish(self, store, *, now: datetime | None = None) -> int:
        """Publish every enforced decision in force from the SQL store, e.g. after Redis lost its data."""
        now = now or datetime.now(UTC)
        return self.publish(store.active_decisions(now), now=now)

    def _append_change(self, pipeline, kind: str, decision: Decision) -> None:
        entry = {"kind": kind, "subject_type": decision.subject_type, "subject": decision.subject, **published_entry(decision)}
        pipeline.xadd(
            self.change_stream,
            {"change": orjson.dumps(entry)},
            maxlen=CHANGE_STREAM_LENGTH,
            approximate=True,
        )


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
