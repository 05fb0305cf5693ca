"""Settings of one gateway integration, from the command line or a TOML file.

One file can describe several gateways, each in a ``[gateways.NAME]`` table::

    [gateways.newapi]
    kind = "newapi"                       # newapi, oneapi or litellm
    database_url = "mysql+pymysql://reader@127.0.0.1/new-api"
    quota_per_usd = 500000                # gateway quota units per US dollar
    credits_per_usd = 1.0                 # fairuse plan credits per US dollar

    [gateways.newapi.plans]               # gateway group -> fairuse plan
    vip = "coding"

    [gateways.newapi.enforce]             # read by ``fairuse enforce``
    api_url = "http://127.0.0.1:3000"
    access_token_env = "NEWAPI_ACCESS_TOKEN"
    admin_user_id = 1

``NAME`` prefixes the ids an import writes (``newapi:token:17``), so two
gateways of one kind never share a subject, and it names the import cursor.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.plans import ConfigError
from detector.readers.gateways.checks import GATEWAY_KEYS, check_enforce, known_keys, plan_names, positive_number

KINDS = ("newapi", "oneapi", "litellm")

# new-api and one-api count spend in quota units: 500,000 make one US dollar by
# default (QuotaPerUnit, in new-api's common/constants.go and one-api's
# common/config/config.go).
DEFAULT_QUOTA_PER_USD = 500_000.0
DEFAULT_ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How to read one gateway's request log and turn its rows into events."""

    name: str
    kind: str
    database_url: str | None = None
    quota_per_usd: float = DEFAULT_QUOTA_PER_USD
    credits_per_usd: float = 1.0
    plans: dict[str, str] = field(default_factory=dict)
    default_endpoint: str = DEFAULT_ENDPOINT
    enforce: dict[str, Any] = field(default_factory=dict)

    def plan_of(self, group: str | None) -> str:
        """Return the fairuse plan for a gateway group: mapped, else the group itself, else ``default``."""
        group = (group or "").strip()
        return self.plans.get(group, group or "default")


def load_gateways(path: str | Path) -> dict[str, GatewaySettings]:
    """Read every ``[gateways.NAME]`` table of a TOML file."""
    source = Path(path)
    try:
        document = tomllib.loads(source.read_text("utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"{source}: file not found; pass the gateway config with --config FILE") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: invalid TOML: {error}") from error

    tables = document.get("gateways")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{source}: no [gateways.NAME] tables found; see docs/gateway.md")
    return {name: _gateway(source, name, table) for name, table in tables.items()}


def gateway_settings(kind: str, name: str | None, config: str | Path | None, **overrides: Any) -> GatewaySettings:
    """Return the settings of one gateway: its table in ``config`` when given, then ``overrides`` on top."""
    if kind not in KINDS:
        raise ConfigError(f"unknown gateway kind {kind!r}; use one of {', '.join(KINDS)}")
    name = name or kind
    values: dict[str, Any] = {"name": name, "kind": kind}
    if config is not None:
        gateways = load_gateways(config)
        if name not in gateways:
            raise ConfigError(f"{config}: no [gateways.{name}] table; add one or pass --name with a listed one")
        found = gateways[name]
        if found.kind != kind:
            raise ConfigError(f"{config}: [gateways.{name}] has kind = {found.kind!r}, not {kind!r}")
        values.update({key: getattr(found, key) for key in GatewaySettings.__slots__})
    values.update({key: value for key, value in overrides.items() if value is not None})
    return _checked(str(config or "command line"), GatewaySettings(**values))


def _gateway(source: Path, name: str, table: Any) -> GatewaySettings:
    where = f"{source}: [gateways.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} is not a table")
    kind = table.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind = {kind!r}; use one of {', '.join(KINDS)}")
    known_keys(where, table, GATEWAY_KEYS)

    enforce = table.get("enforce", {})
    if not isinstance(enforce, dict):
        raise ConfigError(f"{where}.enforce must be a table")
    database_url = table.get("database_url")
    if database_url is not None and not (isinstance(database_url, str) and database_url):
        raise ConfigError(f"{where}: database_url = {database_url!r} is not a database URL; "
                          'e.g. database_url = "mysql+pymysql://reader@127.0.0.1/new-api"')
    settings = GatewaySettings(
        name=name,
        kind=kind,
        database_url=database_url,
        quota_per_usd=positive_number(where, "quota_per_usd", table.get("quota_per_usd", DEFAULT_QUOTA_PER_USD)),
        credits_per_usd=positive_number(where, "credits_per_usd", table.get("credits_per_usd", 1.0)),
        plans=plan_names(where, table.get("plans", {})),
        default_endpoint=str(table.get("default_endpoint", DEFAULT_ENDPOINT)),
        enforce=dict(enforce),
    )
    return _checked(where, settings)


def _checked(where: str, settings: GatewaySettings) -> GatewaySettings:
    if not settings.name or ":" in settings.name:
        raise ConfigError(f"{where}: gateway name {settings.name!r} must be non-empty and contain no ':'")
    positive_number(where, "quota_per_usd", settings.quota_per_usd)
    positive_number(where, "credits_per_usd", settings.credits_per_usd)
    plan_names(where, settings.plans)
    if not settings.default_endpoint.startswith("/"):
        raise ConfigError(f"{where}: default_endpoint must be a path such as /v1/chat/completions")
    check_enforce(where, settings.kind, settings.enforce)
    return settings
