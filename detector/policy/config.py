"""Load and check the policy file."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from detector.decisions import ACTIONS, SCOPES, SUBJECT_TYPES
from detector.plans import ConfigError, _read_toml
from detector.readers.checks import normalize_ip

REASONS = ("abnormal_cost", "key_sharing", "automation", "image_quota", "anomaly")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MAX_DURATION_SECONDS = 10 * 365 * 86400


@dataclass(frozen=True, slots=True)
class Rule:
    """Findings of ``reason`` at or above both minimums get ``action`` for ``duration``."""

    name: str
    reason: str
    min_score: float
    min_impact: float
    action: str
    duration: timedelta
    scope: str = "all"
    limit_rpm: int | None = None
    kind: str | None = None

    def matches(self, reason: str, score: float, impact: float, kind: str | None = None) -> bool:
        """Return whether a finding with these values falls under this rule."""
        if self.kind is not None and kind != self.kind:
            return False
        return reason == self.reason and score >= self.min_score and impact >= self.min_impact


@dataclass(frozen=True, slots=True)
class Policy:
    """Rules in priority order and the limits that apply across them."""

    name: str
    version: str
    rules: tuple[Rule, ...]
    simulation: bool = False
    max_auto_suspensions_per_hour: int = 20
    repeat_factor: float = 2.0
    max_duration: timedelta = timedelta(days=30)
    merge_window: timedelta = timedelta(hours=1)
    allowlist: frozenset[str] = field(default_factory=frozenset)

    @property
    def origin(self) -> str:
        return f"policy/{self.name}-{self.version}"

    def rule_for(self, reason: str, score: float, impact: float, kind: str | None = None) -> Rule | None:
        """Return the first rule that matches, or None."""
        for rule in self.rules:
            if rule.matches(reason, score, impact, kind):
                return rule
        return None

    def is_allowlisted(self, subject_type: str, subject: str) -> bool:
        return f"{subject_type}:{subject}" in self.allowlist

    def with_allowlisted(self, subjects: Iterable[tuple[str, str]]) -> "Policy":
        """Return a copy whose allowlist also contains ``subjects``, given as (subject_type, subject) pairs."""
        extra = {f"{subject_type}:{subject}" for subject_type, subject in subjects}
        return replace(self, allowlist=self.allowlist | extra) if extra else self


def parse_duration(text: str, where: str = "duration") -> timedelta:
    """Parse ``30m``, ``6h``, ``7d`` or ``2w`` into a timedelta.

    >>> parse_duration("90m")
    datetime.timedelta(seconds=5400)
    """
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"{where}: invalid duration {text!r}; write a number and s, m, h, d or w, like '6h'")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > _MAX_DURATION_SECONDS:
        raise ConfigError(f"{where}: duration {text!r} is longer than 10 years; use a shorter one")
    return timedelta(seconds=seconds)


def load_policy(path: str | Path | None = None) -> Policy:
    """Load a policy from TOML; without ``path``, from ``$FAIRUSE_POLICY`` or the shipped one."""
    source, document = _read_toml(path, "policy.toml")
    settings = _table(document, "policy", source)
    entries = document.get("rules", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ConfigError(f"{source}: rules: expected [[rules]] tables, got {entries!r:.60}")
    rules = tuple(_parse_rule(source, index, entry) for index, entry in enumerate(entries))
    if not rules:
        raise ConfigError(f"{source}: no [[rules]] found; a policy needs at least one rule")

    allowlist = _table(document, "allowlist", source).get("subjects", [])
    if not isinstance(allowlist, list):
        raise ConfigError(f"{source}: allowlist.subjects: expected a list of \"TYPE:ID\" strings")
    entries = []
    for entry in allowlist:
        kind, _, subject = str(entry).partition(":")
        if kind not in SUBJECT_TYPES or not subject:
            raise ConfigError(
                f"{source}: allowlist.subjects: invalid entry {entry!r}; write TYPE:ID with TYPE one of {SUBJECT_TYPES}"
            )
        if kind == "ip":
            # Spelled as the readers spell addresses (IPv4-mapped IPv6 as IPv4), so entries match.
            canonical = normalize_ip(subject)
            if canonical is None:
                raise ConfigError(
                    f"{source}: allowlist.subjects: {entry!r}: not an IPv4 or IPv6 address; "
                    "write ip:ADDRESS, e.g. ip:198.51.100.7"
                )
            subject = canonical
        entries.append(f"{kind}:{subject}")

    cap = settings.get("max_auto_suspensions_per_hour", 20)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise ConfigError(f"{source}: policy.max_auto_suspensions_per_hour: expected an integer ≥ 0, got {cap!r}")
    repeat_factor = _number(settings, "repeat_factor", 2.0, f"{source}: policy", minimum=1.0)

    return Policy(
        name=str(settings.get("name", Path(source).stem)),
        version=str(settings.get("version", "1")),
        rules=rules,
        simulation=bool(settings.get("simulation", False)),
        max_auto_suspensions_per_hour=cap,
        repeat_factor=repeat_factor,
        max_duration=parse_duration(settings.get("max_duration", "30d"), f"{source}: policy.max_duration"),
        merge_window=parse_duration(settings.get("merge_window", "1h"), f"{source}: policy.merge_window"),
        allowlist=frozenset(entries),
    )



def _parse_rule(source: str, index: int, entry: dict) -> Rule:
    where = f"{source}: rules[{index}]"
    reason = entry.get("reason")
    if reason not in REASONS:
        raise ConfigError(f"{where}.reason: expected one of {REASONS}, got {reason!r}")
    action = entry.get("action")
    if action not in ACTIONS:
        raise ConfigError(f"{where}.action: expected one of {ACTIONS}, got {action!r}")
    scope = entry.get("scope", "all")
    if scope not in SCOPES:
        raise ConfigError(f"{where}.scope: expected one of {SCOPES}, got {scope!r}")

    limit = entry.get("limit_rpm")
    if action == "throttle" and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"{where}.limit_rpm: a throttle needs a whole number of requests per minute ≥ 1, got {limit!r}")

    return Rule(
        name=str(entry.get("name", f"rule {index}")),
        reason=reason,
        min_score=_number(entry, "min_score", 0.0, where),
        min_impact=_number(entry, "min_impact", 0.0, where),
        action=action,
        duration=parse_duration(entry.get("duration", "1h"), f"{where}.duration"),
        scope=scope,
        limit_rpm=limit if action == "throttle" else None,
        kind=str(entry["kind"]) if "kind" in entry else None,
    )


def _table(document: dict, name: str, source: str) -> dict:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {name}: expected a [{name}] table, got {value!r:.60}")
    return value


def _number(table: dict, name: str, default: float, where: str, minimum: float = 0.0) -> float:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{where}.{name}: expected a number ≥ {minimum:g}, got {value!r}")
    return float(value)
