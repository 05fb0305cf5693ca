"""Gateways that may read decisions over HTTP, each with its own API key."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from detector.store.models import GatewayRow

KEY_PREFIX = "fug_"


class GatewayError(ValueError):
    """A gateway name that is taken, missing or invalid."""


@dataclass(frozen=True, slots=True)
class Gateway:
    name: str
    created_at: datetime
    revoked_at: datetime | None
    last_pull_at: datetime | None


def hash_key(api_key: str) -> str:
    """Return the stored form of an API key. Keys are 256-bit random, so SHA-256 suffices."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


class GatewayRegistry:
    """Issue, check and revoke gateway API keys; only their hashes are stored."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, name: str) -> str:
        """Register ``name`` and return its new API key, which is not stored and cannot be shown again."""
        if not name or len(name) > 128 or not name.replace("-", "").replace("_", "").isalnum():
            raise GatewayError(f"invalid gateway name {name!r}: use 1-128 letters, digits, '-' or '_'")
        api_key = KEY_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        try:
            with Session(self.engine) as session, session.begin():
                row = session.scalars(select(GatewayRow).where(GatewayRow.name == name)).first()
                if row is not None and row.revoked_at is None:
                    raise GatewayError(f"gateway {name!r} already has an active key; revoke it first to issue a new one")
                if row is None:
                    session.add(GatewayRow(name=name, key_hash=hash_key(api_key), created_at=now))
                else:
                    # A revoked gateway gets a new key under its old name.
                    row.key_hash, row.created_at, row.revoked_at, row.last_pull_at = hash_key(api_key), now, None, None
        except IntegrityError as error:
            raise GatewayError(f"gateway {name!r} could not be added: {error.orig}") from error
        return api_key

    def authenticate(self, api_key: str | None) -> Gateway | None:
        """Return the active gateway that owns ``api_key``, or None."""
        if not api_key:
            return None
        digest = hash_key(api_key)
        with Session(self.engine) as session:
            row = session.scalars(select(GatewayRow).where(GatewayRow.key_hash == digest)).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return _to_gateway(row)

    def revoke(self, name: str) -> None:
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(GatewayRow).where(GatewayRow.name == name, GatewayRow.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        if result.rowcount == 0:
            raise GatewayError(f"no active gateway named {name!r}; see 'fairuse gateways list'")

    def list(self) -> list[Gateway]:
        with Session(self.engine) as session:
            return [_to_gateway(row) for row in session.scalars(select(GatewayRow).order_by(GatewayRow.name))]

    def mark_pulled(self, name: str, at: datetime) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(update(GatewayRow).where(GatewayRow.name == name).values(last_pull_at=at))


def _to_gateway(row: GatewayRow) -> Gateway:
    return Gateway(name=row.name, created_at=row.created_at, revoked_at=row.revoked_at, last_pull_at=row.last_pull_at)
