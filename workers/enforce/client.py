"""Calls to a gateway's admin API: retried with backoff, every attempt audited, optionally dry.

A rejected call (a 4xx status, or new-api/one-api's ``{"success": false}``
response, which they send with status 200) raises ``GatewayRejected`` at once.
A gateway that cannot be reached, responds with 5xx or 429, or responds with a
success status and a body that is not a JSON object (a proxy's error page) is
retried with exponential backoff and then raises ``GatewayUnavailable``. The
enforcer keeps the change pending and tries again on its next pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from detector.store.gateway_sync import GatewayCallRow

logger = logging.getLogger(__name__)


class GatewayUnavailable(RuntimeError):
    """The gateway could not be reached, or kept failing, after every retry."""


class GatewayRejected(RuntimeError):
    """The gateway responded and rejected the call; retrying will not help."""


class _Transient(RuntimeError):
    """One attempt failed in a way worth retrying."""


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Attempts per call and the backoff between them (doubling from ``backoff_seconds``)."""

    attempts: int = 4
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 5.0


class AdminClient:
    """Send admin API calls to one gateway and record each attempt in ``gateway_calls``."""

    def __init__(
        self,
        gateway: str,
        base_url: str,
        headers: dict[str, str],
        store_engine: Engine,
        *,
        dry_run: bool = False,
        retry: RetrySettings = RetrySettings(),
        success_field: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.gateway = gateway
        self.store_engine = store_engine
        self.dry_run = dry_run
        self.retry = retry
        self.success_field = success_field
        self.sleep = sleep
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=retry.timeout_seconds, transport=transport)

    def call(self, method: str, path: str, body: dict[str, Any], decision_ids: list[str]) -> dict[str, Any]:
        """Send one call and return the gateway's JSON response ({} in a dry run)."""
        if self.dry_run:
            self._audit(method, path, body, 1, None, "dry_run", "", decision_ids)
            logger.info("gateway %s: dry run, would call %s %s %s", self.gateway, method, path, body)
            return {}

        attempts = Retrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_exponential(multiplier=self.retry.backoff_seconds, max=self.retry.max_backoff_seconds),
            retry=retry_if_exception_type(_Transient),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            for attempt in attempts:
                with attempt:
                    return self._attempt(method, path, body, attempt.retry_state.attempt_number, decision_ids)
        except _Transient as error:
            raise GatewayUnavailable(f"gateway {self.gateway}: {method} {path} failed {self.retry.attempts} times: {error}") from error
        raise AssertionError("unreachable: tenacity either returns or raises")

    def close(self) -> None:
        self.http.close()

    def _attempt(self, method: str, path: str, body: dict[str, Any], number: int, decision_ids: list[str]) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, json=body)
        except httpx.TransportError as error:
            self._audit(method, path, body, number, None, "unreachable", str(error), decision_ids)
            logger.warning("gateway %s: %s %s attempt %d: unreachable: %s", self.gateway, method, path, number, error)
            raise _Transient(str(error)) from error

        status = response.status_code
        if status >= 500 or status == 429:
            self._audit(method, path, body, number, status, "error", response.text[:500], decision_ids)
            logger.warning("gateway %s: %s %s attempt %d: HTTP %d", self.gateway, method, path, number, status)
            raise _Transient(f"HTTP {status}")

        payload = _json(response)
        if payload is None and status < 400:
            self._audit(method, path, body, number, status, "error", response.text[:500], decision_ids)
            logger.warning("gateway %s: %s %s attempt %d: HTTP %d with a body that is not a JSON object",
                           self.gateway, method, path, number, status)
            raise _Transient(f"HTTP {status} with a body that is not a JSON object")

        payload = payload or {}
        rejected = status >= 400 or (self.success_field and payload.get("success") is not True)
        if rejected:
            message = str(payload.get("message") or payload.get("detail") or payload.get("error") or response.text[:500])
            self._audit(method, path, body, number, status, "rejected", message, decision_ids)
            logger.warning("gateway %s: %s %s rejected (HTTP %d): %s", self.gateway, method, path, status, message)
            raise GatewayRejected(f"gateway {self.gateway} rejected {method} {path}: {message}")

        self._audit(method, path, body, number, status, "ok", "", decision_ids)
        logger.info("gateway %s: %s %s %s: HTTP %d", self.gateway, method, path, body, status)
        return payload

    def _audit(self, method, path, body, attempt, status, outcome, error, decision_ids) -> None:
        with Session(self.store_engine) as session, session.begin():
            session.add(GatewayCallRow(
                gateway=self.gateway, method=method, path=path, body=body, attempt=attempt, status_code=status,
                outcome=outcome, error=error, dry_run=self.dry_run, decision_ids=list(decision_ids),
                created_at=datetime.now(UTC),
            ))


def _json(response: httpx.Response) -> dict[str, Any] | None:
    """Return the response's JSON object, or None when the body is not one."""
    try:
        payload = response.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
