"""The stream a gateway appends an event to when the event stream is partitioned.

With one partition, every event goes to the stream itself (``fairuse:events``).
With N partitions, an event goes to ``{stream}:{n}``, where n is the
CRC-32 (IEEE, as ``zlib.crc32`` and Go's ``hash/crc32`` compute it) of the
UTF-8 bytes of its ``account_id``, or of its ``key_id`` where the account
id is blank, modulo N. ``workers.partitions.partition_of`` computes the same
for a whole batch, and every gateway and worker must use the same N.
"""

from __future__ import annotations

import zlib

# Each owned partition keeps a state (about 110 kB even empty) and a lease renewed in one script call, and
# a worker takes free partitions over one by one within a lease TTL. 100,000 partitions took 1.6 GB for the
# first 15,000 states, and every lease expired before the first round ended.
MAX_PARTITIONS = 1024


def partition_of_event(account_id: str, key_id: str, partitions: int) -> int:
    """Return the partition of one event: see the module docstring."""
    owner = account_id if account_id.strip() else key_id
    return zlib.crc32(owner.encode("utf-8")) % partitions


def partition_stream(stream: str, partition: int, partitions: int) -> str:
    """Return the name of ``partition``'s stream: ``stream`` itself with one partition, else ``{stream}:{partition}``."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    return stream if partitions == 1 else f"{stream}:{partition}"


def event_stream(stream: str, account_id: str, key_id: str, partitions: int) -> str:
    """Return the stream to append an event of ``account_id`` and ``key_id`` to."""
    if partitions == 1:
        return stream
    return partition_stream(stream, partition_of_event(account_id, key_id, partitions), partitions)
