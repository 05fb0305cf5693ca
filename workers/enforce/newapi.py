"""new-api and one-api: disable tokens and users through the admin API, and enable them again.

Endpoints (QuantumNous/new-api ``router/api-router.go`` at commit d420198f,
``controller/token.go`` and ``controller/user.go``; songquanpeng/one-api
``controller/token.go`` and ``controller/user.go``):

- ``PUT /api/token/?status_only=true`` with ``{"id": ID, "status": 2}``
  disables a token and ``"status": 1`` enables it again.
- ``POST /api/user/manage`` with ``{"id": ID, "action": "disable"}`` (new-api)
  or ``{"username": NAME, "action": "disable"}`` (one-api), and ``"enable"``.

Both respond with HTTP 200 and ``{"success": ..., "message": ...}``. The admin
access token goes in ``Authorization``; new-api also wants the admin's user id
in ``New-Api-User``. Current statuses are read from the gateway's ``tokens``
and ``users`` tables: 1 is enabled, 2 disabled, and tokens also have 3
(expired) and 4 (exhausted).

Throttles are not mirrored: neither gateway has a per-token request rate in
these endpoints, so gateways check throttles through the decisions API.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, column, select, table

from detector.decisions import Decision
from workers.enforce.client import AdminClient
from workers.enforce.targets import MalformedSubject, Target, ascii_id

ENABLED = 1
DISABLED = 2

_tokens = table("tokens", column("id"), column("user_id"), column("name"), column("status"))
_users = table("users", column("id"), column("username"), column("status"))


class NewApiAdapter:
    """Disable new-api tokens (key decisions) and users (account decisions) while suspensions are in force."""

    def __init__(self, name: str, client: AdminClient, engine: Engine) -> None:
        self.name = name
        self.client = client
        self.engine = engine

    def targets(self, decision: Decision) -> list[tuple[Target, int | None]]:
        if decision.action != "suspend" or not decision.subject.startswith(f"{self.name}:"):
            return []
        kind, _, rest = decision.subject.removeprefix(f"{self.name}:").partition(":")
        if decision.subject_type == "account" and kind == "user":
            return [(Target("user", ascii_id(decision.subject, rest), "disable"), None)]
        if decision.subject_type == "key" and kind == "token":
            return [(Target("token", token_id, "disable"), None) for token_id in self.token_ids(decision.subject, rest)]
        return []

    def token_ids(self, subject: str, key: str) -> list[str]:
        """Return the token ids behind a key subject: new-api names the token id itself."""
        return [ascii_id(subject, key)]

    def read(self, target: Target) -> dict[str, Any]:
        source = _tokens if target.target_type == "token" else _users
        with self.engine.connect() as connection:
            row = connection.execute(select(source).where(source.c.id == int(target.target))).mappings().first()
        if row is None:
            raise LookupError(f"{target.target_type} {target.target} not found in {self.name}'s database")
        return {key: row[key] for key in ("status", "username") if key in row}

    def already_restricted(self, target: Target, current: dict[str, Any], value: int | None) -> bool:
        return current["status"] != ENABLED

    def still_applied(self, target: Target, current: dict[str, Any], value: int | None) -> bool:
        return current["status"] == DISABLED

    def apply(self, target: Target, value: int | None, decision_ids: list[str]) -> None:
        self._set(target, DISABLED, decision_ids)

    def undo(self, target: Target, previous: dict[str, Any], decision_ids: list[str]) -> None:
        self._set(target, int(previous.get("status", ENABLED)), decision_ids)

    def _set(self, target: Target, status: int, decision_ids: list[str]) -> None:
        if target.target_type == "token":
            body = {"id": int(target.target), "status": status}
            self.client.call("PUT", "/api/token/?status_only=true", body, decision_ids)
            return
        action = "disable" if status == DISABLED else "enable"
        self.client.call("POST", "/api/user/manage", {**self.account(target), "action": action}, decision_ids)

    def account(self, target: Target) -> dict[str, Any]:
        """Return how the manage endpoint names the user: new-api by id."""
        return {"id": int(target.target)}


class OneApiAdapter(NewApiAdapter):
    """one-api: the key is a user id and token name, and the manage endpoint names users by username."""

    def token_ids(self, subject: str, key: str) -> list[str]:
        user_id, _, token_name = key.partition(":")
        ascii_id(subject, user_id)
        if not token_name:
            raise MalformedSubject(f"subject {subject!r} has no token name after the user id")
        query = select(_tokens.c.id).where(_tokens.c.user_id == int(user_id), _tokens.c.name == token_name)
        with self.engine.connect() as connection:
            return [str(token_id) for token_id in connection.scalars(query.order_by(_tokens.c.id))]

    def account(self, target: Target) -> dict[str, Any]:
        return {"username": self.read(target)["username"]}
