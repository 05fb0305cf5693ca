"""Checks of the values in a gateway file: each problem is a ConfigError naming the place, key, value and fix."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from detector.plans import ConfigError

GATEWAY_KEYS = ("kind", "database_url", "quota_per_usd", "credits_per_usd", "plans", "default_endpoint", "enforce")
_ENFORCE_COMMON = ("api_url", "dry_run", "attempts", "backoff_seconds", "timeout_seconds")
ENFORCE_KEYS = {
    "newapi": (*_ENFORCE_COMMON, "access_token_env", "admin_user_id"),
    "oneapi": (*_ENFORCE_COMMON, "access_token_env"),
    "litellm": (*_ENFORCE_COMMON, "master_key_env"),
}


def known_keys(where: str, table: dict[str, Any], valid: Iterable[str]) -> None:
    """Raise for the first key of ``table`` not in ``valid``, suggesting the closest valid key."""
    valid = list(valid)
    for key in table:
        if key in valid:
            continue
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{where}: unknown key {key!r}; {hint}valid keys: {', '.join(valid)}")


def positive_number(where: str, key: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float when it is a finite number above 0 (or at 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {key} = {value!r} is not a number; write a number without quotes, e.g. {key} = 2")
    bound_ok = value >= 0 if allow_zero else value > 0
    if not math.isfinite(value) or not bound_ok:
        least = "0 or above" if allow_zero else "above 0"
        raise ConfigError(f"{where}: {key} must be a finite number {least}, got {value!r}")
    return float(value)


def plan_names(where: str, plans: Any) -> dict[str, str]:
    """Return the group -> plan table when every plan name is a non-empty string."""
    example = 'vip = "coding"'
    if not isinstance(plans, dict):
        raise ConfigError(f"{where}.plans must map gateway groups to plan names, e.g. {example}")
    for group, plan in plans.items():
        if not isinstance(plan, str):
            raise ConfigError(f"{where}.plans must map gateway groups to plan names, e.g. {example}; "
                              f"{group} = {plan!r} is no name")
        if not plan.strip():
            raise ConfigError(f"{where}.plans: {group} = {plan!r} is empty; name a plan of the catalogue, e.g. {example}")
    return dict(plans)


def check_enforce(where: str, kind: str, enforce: dict[str, Any]) -> None:
    """Raise for an unknown key or an unusable value in an ``enforce`` table; a missing key is left to its user."""
    where = f"{where}.enforce"
    known_keys(where, enforce, ENFORCE_KEYS[kind])
    if "api_url" in enforce:
        _http_url(where, enforce["api_url"])
    if "attempts" in enforce:
        attempts = enforce["attempts"]
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigError(f"{where}: attempts must be a whole number of 1 or more, got {attempts!r}; e.g. attempts = 4")
    if "backoff_seconds" in enforce:
        positive_number(where, "backoff_seconds", enforce["backoff_seconds"], allow_zero=True)
    if "timeout_seconds" in enforce:
        positive_number(where, "timeout_seconds", enforce["timeout_seconds"])
    if "admin_user_id" in enforce:
        user_id = enforce["admin_user_id"]
        if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
            raise ConfigError(f"{where}: admin_user_id must be the admin's numeric user id, got {user_id!r}; "
                              "e.g. admin_user_id = 1")
    if "dry_run" in enforce and not isinstance(enforce["dry_run"], bool):
        raise ConfigError(f"{where}: dry_run must be true or false, got {enforce['dry_run']!r}")
    for key in ("access_token_env", "master_key_env"):
        if key in enforce and not (isinstance(enforce[key], str) and enforce[key]):
            raise ConfigError(f"{where}: {key} must name an environment variable, got {enforce[key]!r}")


def _http_url(where: str, url: Any) -> None:
    parts = urlsplit(url) if isinstance(url, str) else None
    try:
        usable = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        usable = False
    if not usable:
        raise ConfigError(f"{where}: api_url = {url!r} is not an http:// or https:// address with a host; "
                          'e.g. api_url = "http://127.0.0.1:3000"')
