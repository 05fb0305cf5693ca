"""Subjects split into partitions, each owned by one worker at a time.

Per-subject state is read, changed and written back, so two workers that
apply events of one subject at once would lose one of the updates. Each
event therefore belongs to a partition, chosen by a hash of its account id
(of its key id where the account id is blank), and a worker consumes only
the partitions it holds a lease on. A lease is a Redis key with a TTL that
its owner renews. A worker that dies stops renewing, and another worker
takes the partition over when the key expires. docs/streaming-state.md
("Several workers") gives the design, and ``workers.state_consumer`` uses it.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterable

import numpy as np
import redis

from fairuse_gateway.partitions import MAX_PARTITIONS

# Renews the leases this worker still owns and returns the positions of the others in KEYS, from 0.
_RENEW_SCRIPT = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    table.insert(lost, i - 1)
  end
end
return lost
"""

# Deletes the leases this worker still owns, leaving those another worker took over.
_RELEASE_SCRIPT = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
  end
end
return 0
"""

# Notes this worker as alive until ARGV[2] (epoch ms), drops workers past theirs, and returns how many remain.
_HEARTBEAT_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
"""


def partition_of(account_ids: Iterable[str], key_ids: Iterable[str], partitions: int) -> np.ndarray:
    """Return each event's partition: the CRC-32 of its account id, or of its key id where that is blank, modulo ``partitions``.

    CRC-32 (IEEE, as ``zlib.crc32`` and Go's ``hash/crc32`` compute it) of the
    UTF-8 bytes, so a gateway in any language can append to the partition's
    stream itself.
    """
    owners = (account if account.strip() else key for account, key in zip(account_ids, key_ids))
    hashes = np.fromiter((zlib.crc32(owner.encode("utf-8")) for owner in owners), np.int64)
    return hashes % partitions


class PartitionLeases:
    """The partitions one worker owns, as Redis keys with a TTL that it renews.

    The worker calls ``rebalance`` on every loop, and at least once per
    ``ttl_ms``. It notes the worker as alive, renews its leases, and then takes
    free partitions or gives up its own until it holds its fair share: the
    partitions divided by the live workers, rounded up. A worker must write
    its partitions' state before it gives them up (``release``).
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str, partitions: int, owner: str, ttl_ms: int = 10_000
    ) -> None:
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be from 1 to {MAX_PARTITIONS}, not {partitions}")
        self.client = client
        self.prefix = prefix
        self.partitions = partitions
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.owned: set[int] = set()
        self._renew = client.register_script(_RENEW_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)
        self._heartbeat = client.register_script(_HEARTBEAT_SCRIPT)

    def key(self, partition: int) -> str:
        return f"{self.prefix}:lease:{partition}"

    @property
    def workers_key(self) -> str:
        return f"{self.prefix}:workers"

    def rebalance(self, before_release: Callable[[set[int]], None] | None = None) -> tuple[set[int], set[int]]:
        """Renew, then take or give up partitions towards the fair share; return the partitions gained and lost.

        The lost ones include those whose lease another worker took over
        after this one failed to renew it in time. ``before_release`` is
        called with the partitions this worker is about to give up, so that
        it can write their state first.
        """
        share = self._fair_share(self._live_workers())
        lost = self.renew()
        gained: set[int] = set()
        if len(self.owned) > share:
            extra = set(sorted(self.owned)[share:])
            if before_release is not None:
                before_release(extra)
            self.release(extra)
            lost |= extra
        elif len(self.owned) < share:
            gained = self._claim(share - len(self.owned))
        return gained, lost

    def renew(self) -> set[int]:
        """Extend the leases still owned; forget and return those another worker owns now or that expired."""
        owned = sorted(self.owned)
        if not owned:
            return set()
        positions = self._renew(keys=[self.key(number) for number in owned], args=[self.owner, self.ttl_ms])
        lost = {owned[position] for position in positions}
        self.owned -= lost
        return lost

    def release(self, partitions: Iterable[int]) -> None:
        """Give up ``partitions``, deleting each lease only while this worker still owns it."""
        released = sorted(set(partitions) & self.owned)
        if released:
            self._release(keys=[self.key(number) for number in released], args=[self.owner])
        self.owned -= set(released)

    def stop(self) -> None:
        """Give up every partition and leave the live workers, so that the others take over at once."""
        self.release(set(self.owned))
        self.client.zrem(self.workers_key, self.owner)

    def _claim(self, count: int) -> set[int]:
        gained: set[int] = set()
        for number in range(self.partitions):
            if len(gained) == count:
                break
            if number in self.owned:
                continue
            if self.client.set(self.key(number), self.owner, nx=True, px=self.ttl_ms):
                gained.add(number)
        self.owned |= gained
        return gained

    def _live_workers(self) -> int:
        now_ms = int(time.time() * 1000)
        alive_until = now_ms + self.ttl_ms
        return int(self._heartbeat(keys=[self.workers_key], args=[self.owner, alive_until, now_ms, self.ttl_ms]))

    def _fair_share(self, workers: int) -> int:
        return math.ceil(self.partitions / max(workers, 1))
