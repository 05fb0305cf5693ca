"""LiteLLM: block keys while suspensions are in force, and lower their rpm_limit while throttled.

Endpoints (litellm 1.110.2, ``proxy/management_endpoints/key_management_endpoints.py``):
``POST /key/block`` and ``POST /key/unblock`` with ``{"key": ...}``, and
``POST /key/update`` with ``{"key": ..., "rpm_limit": N}``, where an explicit
``null`` clears the limit. ``key`` may be the hashed token, which is what the
spend logs and fairuse's key ids hold. The master key goes in
``Authorization: Bearer``. A blocked key is rejected with HTTP 401. Current
values come from ``LiteLLM_VerificationToken`` (``blocked``, ``rpm_limit``).

An account decision applies to every key of that LiteLLM user or team. Only
throttles of all endpoints are mirrored: ``rpm_limit`` covers every route, so
an image-only throttle would also slow text requests.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, column, or_, select, table

from detector.decisions import Decision
from workers.enforce.client import AdminClient
from workers.enforce.targets import Target

_keys = table("LiteLLM_VerificationToken", column("token"), column("user_id"), column("team_id"),
              column("blocked"), column("rpm_limit"))


class LiteLLMAdapter:
    """Mirror suspensions as blocked keys and throttles as a key's rpm_limit."""

    def __init__(self, name: str, client: AdminClient, engine: Engine) -> None:
        self.name = name
        self.client = client
        self.engine = engine

    def targets(self, decision: Decision) -> list[tuple[Target, int | None]]:
        if decision.action == "suspend":
            return [(Target("key", key, "block"), None) for key in self.keys_of(decision)]
        if decision.action == "throttle" and decision.scope == "all" and decision.limit_rpm is not None:
            return [(Target("key", key, "rpm_limit"), int(decision.limit_rpm)) for key in self.keys_of(decision)]
        return []

    def keys_of(self, decision: Decision) -> list[str]:
        """Return the hashed keys a decision's subject stands for in this proxy's database."""
        if decision.subject_type == "key":
            condition = _keys.c.token == decision.subject
        elif decision.subject_type == "account":
            condition = or_(_keys.c.user_id == decision.subject, _keys.c.team_id == decision.subject)
        else:
            return []
        with self.engine.connect() as connection:
            return list(connection.scalars(select(_keys.c.token).where(condition).order_by(_keys.c.token)))

    def read(self, target: Target) -> dict[str, Any]:
        query = select(_keys.c.blocked, _keys.c.rpm_limit).where(_keys.c.token == target.target)
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        if row is None:
            raise LookupError(f"key {target.target[:12]}... not found in {self.name}'s LiteLLM_VerificationToken")
        rpm_limit = row["rpm_limit"]
        return {"blocked": bool(row["blocked"]), "rpm_limit": int(rpm_limit) if rpm_limit is not None else None}

    def already_restricted(self, target: Target, current: dict[str, Any], value: int | None) -> bool:
        if target.action == "block":
            return current["blocked"]
        return current["rpm_limit"] is not None and current["rpm_limit"] <= value

    def still_applied(self, target: Target, current: dict[str, Any], value: int | None) -> bool:
        if target.action == "block":
            return current["blocked"]
        return current["rpm_limit"] == value

    def apply(self, target: Target, value: int | None, decision_ids: list[str]) -> None:
        if target.action == "block":
            self.client.call("POST", "/key/block", {"key": target.target}, decision_ids)
        else:
            self.client.call("POST", "/key/update", {"key": target.target, "rpm_limit": value}, decision_ids)

    def undo(self, target: Target, previous: dict[str, Any], decision_ids: list[str]) -> None:
        if target.action == "block":
            self.client.call("POST", "/key/unblock", {"key": target.target}, decision_ids)
        else:
            self.client.call("POST", "/key/update", {"key": target.target, "rpm_limit": previous.get("rpm_limit")},
                             decision_ids)
