"""Partitions of subjects and the leases by which one worker at a time owns each, against a real Redis."""

from __future__ import annotations

import zlib

import pytest

from tests.factories import wait_until
from workers.partitions import PartitionLeases, partition_of


def _leases(client, prefix, owner, partitions=8, ttl_ms=10_000):
    return PartitionLeases(client, prefix=prefix, partitions=partitions, owner=owner, ttl_ms=ttl_ms)


def test_partition_is_crc32_of_account():
    partitions = partition_of(["acct-1", "acct-1"], ["key-a", "key-b"], 16)

    assert partitions.tolist() == [zlib.crc32(b"acct-1") % 16] * 2


def test_partition_falls_back_to_key_for_blank_account():
    partitions = partition_of(["", "  "], ["key-a", "key-b"], 16)

    assert partitions.tolist() == [zlib.crc32(b"key-a") % 16, zlib.crc32(b"key-b") % 16]


def test_partition_is_standard_crc32():
    """0xCBF43926 is CRC-32's published check value for "123456789", which any gateway's library gives."""
    assert partition_of(["123456789"], ["k"], 2**32).tolist() == [0xCBF43926]
    assert partition_of(["账户-7"], ["k"], 1000).tolist() == [0xF997C323 % 1000]


def test_lone_worker_takes_every_partition(redis_client, redis_prefix):
    leases = _leases(redis_client, redis_prefix, "worker-a")

    gained, lost = leases.rebalance()

    assert gained == set(range(8))
    assert lost == set()


def test_two_workers_split_partitions(redis_client, redis_prefix):
    first = _leases(redis_client, redis_prefix, "worker-a")
    second = _leases(redis_client, redis_prefix, "worker-b")
    first.rebalance()

    second.rebalance()
    _, given_up = first.rebalance()
    gained, _ = second.rebalance()

    assert len(first.owned) == 4
    assert gained == given_up
    assert first.owned | second.owned == set(range(8))
    assert first.owned & second.owned == set()


def test_dead_worker_partitions_taken_over(redis_client, redis_prefix):
    dead = _leases(redis_client, redis_prefix, "worker-a", ttl_ms=300)
    alive = _leases(redis_client, redis_prefix, "worker-b", ttl_ms=300)
    dead.rebalance()

    def taken_over() -> bool:
        alive.rebalance()
        return alive.owned == set(range(8))

    assert wait_until(taken_over, 10)


def test_renew_extends_lease(redis_client, redis_prefix):
    leases = _leases(redis_client, redis_prefix, "worker-a")
    leases.rebalance()
    redis_client.pexpire(leases.key(2), 50)

    assert leases.renew() == set()
    assert redis_client.pttl(leases.key(2)) > 1000


def test_renew_after_takeover_reports_lost(redis_client, redis_prefix):
    slow = _leases(redis_client, redis_prefix, "worker-a")
    slow.rebalance()
    redis_client.set(slow.key(3), "worker-b")

    lost = slow.renew()

    assert lost == {3}
    assert 3 not in slow.owned


def test_release_leaves_another_owners_lease(redis_client, redis_prefix):
    leases = _leases(redis_client, redis_prefix, "worker-a")
    leases.rebalance()
    redis_client.set(leases.key(5), "worker-b")

    leases.release({5, 6})

    assert redis_client.get(leases.key(5)) == b"worker-b"
    assert redis_client.get(leases.key(6)) is None


def test_stopped_worker_hands_over_at_once(redis_client, redis_prefix):
    first = _leases(redis_client, redis_prefix, "worker-a")
    second = _leases(redis_client, redis_prefix, "worker-b")
    first.rebalance()
    second.rebalance()

    first.stop()
    second.rebalance()

    assert second.owned == set(range(8))


def test_every_lease_key_has_ttl(redis_client, redis_prefix):
    leases = _leases(redis_client, redis_prefix, "worker-a")
    leases.rebalance()

    keys = list(redis_client.scan_iter(match=f"{redis_prefix}:*"))

    assert len(keys) == 9
    assert all(0 < redis_client.pttl(key) <= 10_000 for key in keys)


def test_zero_partitions_rejected(redis_client, redis_prefix):
    with pytest.raises(ValueError, match="from 1 to 1024, not 0"):
        _leases(redis_client, redis_prefix, "worker-a", partitions=0)
