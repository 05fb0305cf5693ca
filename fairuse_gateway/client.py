"""A per-request decision check for gateways, reading the keys ``workers.publish`` writes.

The check is one Redis ``MGET`` for the subjects not in the local cache.
Results are cached for at most ``cache_seconds`` (1 s by default), so a new
decision reaches the gateway within that time. When Redis does not reply
within ``timeout`` seconds, replies with an error, or stores a value that is not
the published JSON, the check fails open: it allows the request, logs a
warning at most once per ``log_interval`` seconds and counts the failure in
``failures``. A malformed value or entry is skipped, so decisions on the
request's other subjects still apply. Pass ``fail_open=False`` to raise instead.
After a timeout or a refused connection, checks that need Redis fail open
at once for ``retry_after`` seconds (1 s). So while Redis is down, requests
wait ``timeout`` about once per ``retry_after`` instead of on every check.
While Redis cannot be queried, a decision still cached on one of the request's
subjects applies. Only when none is cached does the check fail open.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import redis

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "fairuse"
# Strength of what a gateway enforces; reviews are for staff and allow the request.
_STRENGTH = {("suspend", "all"): 3, ("suspend", "images"): 3, ("throttle", "all"): 2, ("throttle", "images"): 1}
# The endpoints a decision of scope "images" applies to.
IMAGE_ENDPOINTS = frozenset({"/v1/images/generations", "/v1/images/edits", "/v1/images/variations"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verdict for one request.

    ``action`` is ``allow``, ``throttle`` or ``suspend``. A throttle carries
    ``limit_rpm`` and ``scope`` (``all`` endpoints or only ``images``).
    ``expires_at`` is in epoch seconds. ``fail_open`` marks an allow given
    because Redis did not reply in time.
    """

    action: str
    subject_type: str = ""
    subject: str = ""
    reasons: tuple[str, ...] = ()
    limit_rpm: int | None = None
    scope: str = "all"
    expires_at: float | None = None
    decision_id: str = ""
    fail_open: bool = False


ALLOW = Verdict(action="allow")


class RedisUnreachable(redis.ConnectionError):
    """Raised instead of asking Redis while it is treated as down (see ``DecisionClient.retry_after``)."""


class DecisionClient:
    """Check requests against published decisions, with a short local cache."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        cache_seconds: float = 1.0,
        timeout: float = 0.05,
        fail_open: bool = True,
        log_interval: float = 10.0,
        retry_after: float = 1.0,
        client: redis.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client or redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.prefix = prefix
        self.cache_seconds = cache_seconds
        self.fail_open = fail_open
        self.log_interval = log_interval
        self.failures = 0
        # After Redis timed out or refused the connection, checks fail open at once for ``retry_after``
        # seconds. The first check after that queries Redis again.
        self.retry_after = retry_after
        self._clock = clock
        self._unreachable_until = float("-inf")
        self._cache: dict[str, tuple[float, bytes | None]] = {}
        self._lock = threading.Lock()
        self._last_log = float("-inf")

    def check(
        self, key_id: str | None = None, account_id: str | None = None, ip: str | None = None,
        endpoint: str | None = None,
    ) -> Verdict:
        """Return the strongest decision in force on the key, the account or the address.

        With ``endpoint``, only decisions that apply to it count: an image-only
        throttle is left out for a chat request, and for an image request the
        lowest limit of every throttle in force wins, whatever its scope.
        """
        if ip and ":" in ip:
            ip = canonical_ipv6(ip)
        if endpoint is not None:
            endpoint = request_path(endpoint)
        subjects = [
            (kind, value)
            for kind, value in (("key", key_id), ("account", account_id), ("ip", ip))
            if value
        ]
        if not subjects:
            return ALLOW

        keys = [f"{self.prefix}:decision:{kind}:{value}" for kind, value in subjects]
        try:
            values = self._values(keys)
        except RedisUnreachable as error:
            # Not restarting the pause: checks arriving more often than retry_after would keep it going for good.
            return self._on_redis_failure(error, subjects, keys, endpoint)
        except (redis.TimeoutError, redis.ConnectionError) as error:
            self._unreachable_until = self._clock() + self.retry_after
            return self._on_redis_failure(error, subjects, keys, endpoint)
        except redis.RedisError as error:
            # Error replies such as MASTERDOWN or NOPERM come back at once, so they pause nothing.
            return self._on_redis_failure(error, subjects, keys, endpoint)

        best, unreadable = _strongest(subjects, keys, values, endpoint)
        if unreadable is not None and best is ALLOW:
            return self._on_failure(unreadable)
        if unreadable is not None:
            self._count_failure(unreadable)
        return best

    def _on_redis_failure(
        self, error: Exception, subjects: list[tuple[str, str]], keys: list[str], endpoint: str | None
    ) -> Verdict:
        """Return the strongest decision among the subjects still cached, or fail open when there is none.

        A request's key can be cached while its address is new, and the
        key's suspension must not lapse because Redis cannot be asked about the address.
        """
        if not self.fail_open:
            return self._on_failure(error)
        best, _ = _strongest(subjects, keys, self._cached_values(keys), endpoint)
        if best is ALLOW:
            return self._on_failure(error)
        self._count_failure(error)
        return best

    def _cached_values(self, keys: list[str]) -> list[bytes | None]:
        """Return the values cached for ``keys`` within ``cache_seconds``, None for the others."""
        now = time.monotonic()
        with self._lock:
            cached = [self._cache.get(key) for key in keys]
        return [hit[1] if hit is not None and now - hit[0] <= self.cache_seconds else None for hit in cached]

    def _values(self, keys: list[str]) -> list[bytes | None]:
        now = time.monotonic()
        with self._lock:
            cached = {key: self._cache.get(key) for key in keys}
        missing = [key for key, hit in cached.items() if hit is None or now - hit[0] > self.cache_seconds]

        if missing and self._clock() < self._unreachable_until:
            raise RedisUnreachable(f"Redis timed out or refused the connection; asking again in at most {self.retry_after:g} s")
        if missing:
            fetched = self.client.mget(missing)
            with self._lock:
                for key, value in zip(missing, fetched):
                    self._cache[key] = (now, value)
                    cached[key] = (now, value)
                if len(self._cache) > 100_000:
                    self._cache.clear()
        return [cached[key][1] for key in keys]

    def _on_failure(self, error: Exception) -> Verdict:
        if not self.fail_open:
            self.failures += 1
            raise error
        self._count_failure(error)
        return Verdict(action="allow", fail_open=True)

    def _count_failure(self, error: Exception) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._last_log >= self.log_interval:
            logger.warning("decision check failed open (%d failures so far): %s", self.failures, error)
            self._last_log = now


def _strongest(
    subjects: list[tuple[str, str]], keys: list[str], values: list[bytes | None], endpoint: str | None
) -> tuple[Verdict, Exception | None]:
    """Return the strongest decision in force among the values of ``keys``, and an error if one was malformed."""
    now_ms = time.time() * 1000
    best = ALLOW
    best_strength: tuple[int, int] = (0, 0)
    unreadable: Exception | None = None
    for (kind, value), key, raw in zip(subjects, keys, values):
        if raw is None:
            continue
        try:
            entries = orjson.loads(raw)["active"]
            if not isinstance(entries, list):
                raise TypeError(f"'active' is {type(entries).__name__}, not a list")
        except (ValueError, KeyError, TypeError) as error:
            unreadable = ValueError(f"invalid decision value at {key!r}: {error}")
            continue
        # A malformed entry skips only itself, so the subject's other decisions still apply.
        for entry in entries:
            try:
                in_force = entry["detected_ms"] <= now_ms < entry["expires_ms"]
                strength = _strength(entry, endpoint)
                if in_force and strength[0] > 0 and strength > best_strength:
                    best, best_strength = _verdict(kind, value, entry), strength
            except (ValueError, KeyError, TypeError) as error:
                unreadable = ValueError(f"invalid decision entry at {key!r}: {error!r}")
    return best, unreadable


def _strength(entry: dict, endpoint: str | None) -> tuple[int, int]:
    """Return how strongly a published decision limits a request to ``endpoint`` (0: not at all).

    Among throttles that count the same, the lower limit is the stronger one.
    """
    action, scope = entry["action"], entry["scope"]
    limit = -(entry["limit_rpm"] or 0)
    if endpoint is None:
        return _STRENGTH.get((action, scope), 0), limit
    if scope == "images" and endpoint not in IMAGE_ENDPOINTS:
        return 0, 0
    # Both scopes apply to this request, so only the action and the limit tell them apart.
    return _STRENGTH.get((action, "all"), 0), limit


def _verdict(kind: str, value: str, entry: dict) -> Verdict:
    return Verdict(
        action=entry["action"],
        subject_type=kind,
        subject=value,
        reasons=tuple(entry["reasons"]),
        limit_rpm=entry["limit_rpm"],
        scope=entry["scope"],
        expires_at=entry["expires_ms"] / 1000,
        decision_id=entry["id"],
    )


def request_path(endpoint: str) -> str:
    """Return an endpoint as ``IMAGE_ENDPOINTS`` spells it: no query, no repeated or trailing slashes.

    Routers commonly serve ``/v1/images/generations/`` and ``//v1/images/generations``
    like ``/v1/images/generations``, so those spellings must not escape an image-only decision.
    """
    path = endpoint.split("?", 1)[0].split("#", 1)[0]
    if "//" in path:
        path = re.sub("/{2,}", "/", path)
    if len(path) > 1:
        path = path.rstrip("/")
    return path


def canonical_ipv6(text: str) -> str:
    """Return an IPv6 address as fairuse stores it: compressed, without a zone id, and IPv4-mapped ones as IPv4.

    Text that is no address comes back unchanged, to find nothing.
    """
    try:
        address = ipaddress.IPv6Address(int(ipaddress.IPv6Address(text)))
    except ValueError:
        return text
    return str(address.ipv4_mapped) if address.ipv4_mapped is not None else str(address)
