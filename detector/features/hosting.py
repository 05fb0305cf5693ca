"""Hosting networks: address ranges of cloud and server providers, which key-sharing detection leaves out.

Cloud providers publish their address ranges (for example AWS's
``ip-ranges.json`` and Google Cloud's ``cloud.json``). A request from one of
them comes from a server, such as a CI runner or the customer's own backend,
not from a second person's device. The operator writes the ranges into a
text file, one CIDR per line, and names it in ``FAIRUSE_HOSTING_NETWORKS``.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from detector.plans import ConfigError

ENVIRONMENT_VARIABLE = "FAIRUSE_HOSTING_NETWORKS"
# A range with a shorter prefix than these (a /7 is 1/128 of IPv4) is far wider
# than a provider range is expected to be, so it is more likely a mistake and is warned about.
BROADEST_PREFIX = {4: 8, 6: 16}

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HostingNetworks:
    """Sorted, merged address ranges per IP version: their first and last addresses as integers."""

    # (IP version, first addresses, last addresses), one entry per version.
    ranges: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]
    source: str = ""

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str) -> HostingNetworks:
        """Parse one CIDR or address per line; ``#`` starts a comment. Raises ConfigError naming the line."""
        ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{source}:{number}: not an IPv4 or IPv6 network: {text[:80]!r}; "
                    "write one CIDR per line, such as 203.0.113.0/24 or 2001:db8::/32"
                ) from None
            if network.prefixlen < BROADEST_PREFIX[network.version]:
                logger.warning(
                    "%s:%d: %s covers %s of the address space, so key sharing ignores most devices; "
                    "check that the line is a provider range", source, number, network, _share(network),
                )
            ranges[network.version].append((int(network.network_address), int(network.broadcast_address)))
        merged = {version: _merge(found) for version, found in ranges.items()}
        return cls(
            ranges=tuple(
                (version, tuple(start for start, _ in spans), tuple(end for _, end in spans))
                for version, spans in merged.items()
            ),
            source=source,
        )

    @classmethod
    def load(cls, path: str | Path) -> HostingNetworks:
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"cannot read the hosting networks file {str(path)!r}: {error}; check {ENVIRONMENT_VARIABLE}"
            ) from None
        return cls.from_lines(text.splitlines(), str(path))

    def __len__(self) -> int:
        return sum(len(starts) for _, starts, _ in self.ranges)

    def contains(self, network: str) -> bool:
        """Return whether ``network`` (a CIDR or an address) overlaps a hosting range.

        Events are grouped into /24 and /48 networks, and a provider's range
        can be narrower than that, so a range inside the network counts as
        well as one around it.
        """
        try:
            parsed = ipaddress.ip_network(network, strict=False)
        except ValueError:
            return False
        first, last = int(parsed.network_address), int(parsed.broadcast_address)
        for version, starts, ends in self.ranges:
            if version == parsed.version:
                # The merged ranges are disjoint, so only the last one starting at or before ``last`` can overlap.
                index = bisect.bisect_right(starts, last) - 1
                return index >= 0 and ends[index] >= first
        return False

    def mask(self, networks: Sequence[str]) -> np.ndarray:
        """Return, for each network string (empty when unknown), whether it is a hosting network."""
        return np.array([bool(network) and self.contains(network) for network in networks], dtype=bool)


def _share(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return f"1/{2 ** network.prefixlen:,}" if network.prefixlen else "all"


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def hosting_from_environment() -> HostingNetworks | None:
    """Return the ranges in the file ``FAIRUSE_HOSTING_NETWORKS`` names, or None when it names none."""
    path = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not path:
        return None
    resolved = Path(path)
    try:
        changed = resolved.stat().st_mtime_ns
    except OSError:
        changed = 0
    return _load_cached(str(resolved), changed)


@lru_cache(maxsize=4)
def _load_cached(path: str, _changed: int) -> HostingNetworks:
    return HostingNetworks.load(path)
