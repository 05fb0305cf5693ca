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

# Candidate tokens; each is confirmed by ``ipaddress`` before it is masked.
_IPV4 = r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]|/\d)"
_IPV6 = r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]{0,15}(?![\w:]|/\d)"
_ADDRESS = re.compile(f"{_IPV4}|{_IPV6}")


def pseudonym(address: str, key: bytes) -> str:
    """Return the 6-hex-digit pseudonym of ``address``.

    >>> pseudonym("203.0.113.77", b"k")
    'b84d0e'
    """
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:6]


def mask_address(address: str, key: bytes) -> str:
    """Return ``address`` as ``NETWORK ~PSEUDONYM``, or unchanged when it is not an address.

    >>> mask_address("203.0.113.77", b"k")
    '203.0.113.0/24 ~b84d0e'
    >>> mask_address("key-1", b"k")
    'key-1'
    """
    network = network_of(address)
    if not network:
        return address
    return f"{network} ~{pseudonym(str(ipaddress.ip_address(address)), key)}"


def mask_text(text: str, key: bytes) -> str:
    """Mask every address inside ``text``; networks written with a prefix length stay as they are.

    >>> mask_text("seen from 203.0.113.77 and 203.0.113.0/24", b"k")
    'seen from 203.0.113.0/24 ~b84d0e and 203.0.113.0/24'
    """
    return _ADDRESS.sub(lambda match: mask_address(match.group(0), key), text)


def mask_values(value: Any, key: bytes) -> Any:
    """Return a copy of a JSON-like value with every address in its strings and keys masked."""
    if isinstance(value, str):
        return mask_text(value, key)
    if isinstance(value, dict):
        return {mask_text(str(name), key): mask_values(item, key) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_values(item, key) for item in value]
    return value
