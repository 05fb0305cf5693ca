"""Show network addresses as their network plus a short pseudonym.

The pseudonym is the first 6 hex digits of HMAC-SHA256 over the address,
keyed with a secret the console keeps in its database. The same address
always gets the same pseudonym, so staff can tell addresses apart and match
them across pages, but cannot read the address back.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from typing import Any

from detector.features.network import network_of
from detector.readers.checks import normalize_ip

# Candidate tokens; each is confirmed by ``ipaddress`` before it is masked. An
# IPv6 candidate may end in a dotted IPv4 part; a run of dotted numbers may
# hold an IPv4 address inside a longer token ("v1.198.51.100.26"). Either may
# carry a prefix length. A trailing period is sentence punctuation, not part
# of the address. An IPv6 candidate starts with a hex group or "::", and may
# follow a word and one colon ("ip:2001:db8::1"), but never starts inside a
# run of hex groups. A hex word of five or more digits is no group, so a
# candidate may follow it and a colon ("deadbeef:2001:db8::1").
_IPV6 = (
    r"(?:(?<![0-9A-Fa-f.])(?<![0-9A-Fa-f:.]:)|(?<=[0-9A-Fa-f]{5}:))"
    r"(?:[0-9A-Fa-f]{1,4}:|:(?=:))(?:[0-9A-Fa-f]{0,4}:){1,6}"
    r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?:/\d{1,3})?"
)
_DOTTED = r"(?<![\d.])\d+(?:\.\d+)+(?:/\d{1,3})?"
_ADDRESS = re.compile(f"(?P<v6>{_IPV6})|(?P<dotted>{_DOTTED})")


def pseudonym(address: str, key: bytes) -> str:
    """Return the 6-hex-digit pseudonym of ``address``.

    >>> pseudonym("203.0.113.77", b"k")
    'b84d0e'
    """
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:6]


def mask_address(address: str, key: bytes) -> str:
    """Return ``address`` as ``NETWORK ~PSEUDONYM``, or unchanged when it is not an address.

    Every spelling of one address (upper case, uncompressed, IPv4-mapped) gets the same pseudonym.

    >>> mask_address("203.0.113.77", b"k")
    '203.0.113.0/24 ~b84d0e'
    >>> mask_address("key-1", b"k")
    'key-1'
    """
    network = network_of(address)
    if not network:
        return address
    return f"{network} ~{pseudonym(normalize_ip(address), key)}"


def mask_text(text: str, key: bytes) -> str:
    """Mask every address inside ``text``, however it is written.

    Networks no narrower than the masked network (/24, /48) stay as they are;
    a longer prefix such as /32 names a host, so it is masked.

    >>> mask_text("seen from 203.0.113.77 and 203.0.113.0/24", b"k")
    'seen from 203.0.113.0/24 ~b84d0e and 203.0.113.0/24'
    >>> mask_text("host 203.0.113.77/32, build v1.203.0.113.77.", b"k")
    'host 203.0.113.0/24 ~b84d0e, build v1.203.0.113.0/24 ~b84d0e.'
    """
    return _ADDRESS.sub(lambda match: _mask_token(match, key), text)


def _mask_token(match: re.Match[str], key: bytes) -> str:
    if match.group("v6"):
        return _mask_with_prefix(match.group("v6"), key)
    return _mask_dotted(match.group("dotted"), key)


def _mask_with_prefix(token: str, key: bytes) -> str:
    """Mask one candidate address, written with or without a prefix length."""
    address, _slash, prefix = token.partition("/")
    if network_of(address) == "":
        return token
    if prefix and _is_wide_network(token):
        return token
    return mask_address(address, key)


def _is_wide_network(token: str) -> bool:
    """Tell whether ``token`` is an exact network no narrower than the masked network, which names no host."""
    try:
        network = ipaddress.ip_network(token, strict=True)
    except ValueError:
        return False
    return network.prefixlen <= int(network_of(str(network.network_address)).partition("/")[2])


def _mask_dotted(token: str, key: bytes) -> str:
    """Mask every IPv4 address inside a run of dotted numbers, taking four numbers at a time from the right."""
    run, slash, prefix = token.partition("/")
    parts = run.split(".")
    tail = f"/{prefix}" if slash else ""
    pieces: list[str] = []
    end = len(parts)
    while end >= 4:
        window = _dotted_quad(parts[end - 4:end])
        if window is None:
            pieces.insert(0, parts[end - 1])
            end -= 1
            continue
        if end == len(parts):
            window, tail = window + tail, ""
        pieces.insert(0, _mask_with_prefix(window, key))
        end -= 4
    return ".".join(parts[:end] + pieces) + tail


def _dotted_quad(parts: list[str]) -> str | None:
    """Return four numbers as an IPv4 address, reading leading zeros as decimal, or None when one is out of range.

    ``ipaddress`` rejects "198.51.100.025", but other software reads it as an
    address, so the mask treats it as 198.51.100.25.
    """
    if any(len(part) > 3 or int(part) > 255 for part in parts):
        return None
    return ".".join(str(int(part)) for part in parts)


def mask_values(value: Any, key: bytes) -> Any:
    """Return a copy of a JSON-like value with every address in its strings and keys masked."""
    if isinstance(value, str):
        return mask_text(value, key)
    if isinstance(value, dict):
        return {mask_text(str(name), key): mask_values(item, key) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_values(item, key) for item in value]
    return value
