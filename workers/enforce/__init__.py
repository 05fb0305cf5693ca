"""Enforcement inside gateways: decisions mirrored through new-api's, one-api's and LiteLLM's admin APIs.

``build_enforcer`` turns a ``[gateways.NAME]`` table with an ``enforce``
sub-table (docs/gateway.md) into an ``Enforcer``. The admin secret is read
from the environment variable the table names, never from the file.
"""

from __future__ import annotations

import os

import httpx
from sqlalchemy import create_engine

from detector.plans import ConfigError
from detector.readers.gateways import GatewaySettings
from detector.store import DecisionStore
from workers.enforce.client import AdminClient, GatewayRejected, GatewayUnavailable, RetrySettings
from workers.enforce.enforcer import EnforcementReport, Enforcer
from workers.enforce.litellm import LiteLLMAdapter
from workers.enforce.newapi import NewApiAdapter, OneApiAdapter

_SECRET_ENV = {"newapi": "access_token_env", "oneapi": "access_token_env", "litellm": "master_key_env"}


def build_enforcer(settings: GatewaySettings, store: DecisionStore, *, dry_run: bool | None = None,
                   transport: httpx.BaseTransport | None = None) -> Enforcer:
    """Return the enforcer of one gateway; ``dry_run`` overrides the table's ``dry_run``."""
    config = settings.enforce
    where = f"[gateways.{settings.name}.enforce]"
    if not config.get("api_url"):
        raise ConfigError(f"{where}: api_url is missing; set the gateway's base URL, e.g. http://127.0.0.1:3000")
    if not settings.database_url:
        raise ConfigError(f"[gateways.{settings.name}]: database_url is missing; the enforcer reads current statuses there")
    secret = _secret(settings, where)
    dry_run = bool(config.get("dry_run", False)) if dry_run is None else dry_run
    retry = RetrySettings(
        attempts=int(config.get("attempts", 4)),
        backoff_seconds=float(config.get("backoff_seconds", 0.5)),
        timeout_seconds=float(config.get("timeout_seconds", 5.0)),
    )

    if settings.kind == "litellm":
        headers = {"Authorization": f"Bearer {secret}"}
    else:
        headers = {"Authorization": secret}
    if settings.kind == "newapi":
        if "admin_user_id" not in config:
            raise ConfigError(f"{where}: admin_user_id is missing; new-api wants the access token owner's id in New-Api-User")
        headers["New-Api-User"] = str(int(config["admin_user_id"]))

    client = AdminClient(settings.name, str(config["api_url"]), headers, store.engine, dry_run=dry_run, retry=retry,
                         success_field=settings.kind != "litellm", transport=transport)
    adapter_class = {"newapi": NewApiAdapter, "oneapi": OneApiAdapter, "litellm": LiteLLMAdapter}[settings.kind]
    adapter = adapter_class(settings.name, client, create_engine(settings.database_url, pool_pre_ping=True))
    return Enforcer(adapter, store, dry_run=dry_run)


def _secret(settings: GatewaySettings, where: str) -> str:
    name_field = _SECRET_ENV[settings.kind]
    variable = settings.enforce.get(name_field)
    if not variable:
        raise ConfigError(f"{where}: {name_field} is missing; name the environment variable that contains the admin secret")
    secret = os.environ.get(str(variable))
    if not secret:
        raise ConfigError(f"{where}: environment variable {variable} is not set; export the gateway's admin secret there")
    return secret


__all__ = [
    "AdminClient",
    "EnforcementReport",
    "Enforcer",
    "GatewayRejected",
    "GatewayUnavailable",
    "RetrySettings",
    "build_enforcer",
]
