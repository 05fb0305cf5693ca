"""The plan catalogue: what each plan entitles a key to."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_PLAN = "default"


class ConfigError(ValueError):
    """A plans or policy file that cannot be used, with the file and the field at fault."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Entitlements of one plan; money is in plan credits."""

    name: str
    kind: str
    weekly_images: int
    hourly_budget: float
    daily_budget: float
    expected_rph: float


@dataclass(frozen=True, slots=True)
class PlanCatalogue:
    """All plans by name, with a ``default`` plan for names not listed."""

    plans: dict[str, Plan]

    def resolve(self, name: str) -> Plan:
        """Return the plan called ``name``, or the default plan."""
        return self.plans.get(name, self.plans[DEFAULT_PLAN])

    def unknown(self, names: pd.Series) -> list[str]:
        """Return the plan names in ``names`` that fall back to the default plan."""
        return sorted(set(names.unique()) - set(self.plans))

    def columns(self, plan_names: pd.Series) -> pd.DataFrame:
        """Return one row of entitlements per value of ``plan_names``, aligned with it."""
        codes, uniques = pd.factorize(plan_names)
        resolved = [self.resolve(name) for name in uniques]
        table = pd.DataFrame(
            {
                "is_text_plan": [plan.kind == "text" for plan in resolved],
                "weekly_images": [plan.weekly_images for plan in resolved],
                "hourly_budget": [plan.hourly_budget for plan in resolved],
                "daily_budget": [plan.daily_budget for plan in resolved],
                "expected_rph": [plan.expected_rph for plan in resolved],
            }
        )
        if len(plan_names) == 0:
            return table.iloc[0:0].reset_index(drop=True)
        return table.iloc[np.asarray(codes)].reset_index(drop=True).set_axis(plan_names.index)


_PLAN_FIELDS = {
    "kind": str,
    "weekly_images": int,
    "hourly_budget": float,
    "daily_budget": float,
    "expected_rph": float,
}


def load_plans(path: str | Path | None = None) -> PlanCatalogue:
    """Load a plan catalogue from TOML; without ``path``, from ``$FAIRUSE_PLANS`` or the shipped one."""
    source, document = _read_toml(path, "plans.toml")
    entries = document.get("plans")
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{source}: no [plans.NAME] tables found; see the shipped plans.toml")

    plans = {name: _parse_plan(source, name, entry) for name, entry in entries.items()}
    if DEFAULT_PLAN not in plans:
        raise ConfigError(
            f"{source}: plan 'default' is missing; add [plans.default] for plan names not listed"
        )
    return PlanCatalogue(plans)


def _parse_plan(source: str, name: str, entry: object) -> Plan:
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: plans.{name}: expected a table")

    values: dict[str, object] = {}
    for field, kind in _PLAN_FIELDS.items():
        if field not in entry:
            raise ConfigError(f"{source}: plans.{name}.{field}: missing")
        value = entry[field]
        if kind is str:
            if not isinstance(value, str):
                raise ConfigError(f"{source}: plans.{name}.{field}: expected a string, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"{source}: plans.{name}.{field}: expected a number ≥ 0, got {value!r}"
            )
        values[field] = kind(value)

    if values["kind"] not in ("text", "image"):
        raise ConfigError(
            f"{source}: plans.{name}.kind: expected 'text' or 'image', got {values['kind']!r}"
        )
    return Plan(name=name, **values)  # type: ignore[arg-type]


# Files used when no path is given: workers and RQ jobs take their configuration from these.
CONFIG_ENV = {"plans.toml": "FAIRUSE_PLANS", "policy.toml": "FAIRUSE_POLICY"}


def _read_toml(path: str | Path | None, shipped_name: str) -> tuple[str, dict]:
    """Read a TOML file; when ``path`` is None, the file named by its environment
    variable (``CONFIG_ENV``), else the copy shipped in ``detector/config``."""
    if path is None and shipped_name in CONFIG_ENV:
        path = os.environ.get(CONFIG_ENV[shipped_name]) or None
    if path is None:
        text = resources.files("detector.config").joinpath(shipped_name).read_text("utf-8")
        source = f"shipped {shipped_name}"
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror}") from error
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8 TOML") from error
        source = str(path)

    try:
        return source, tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: invalid TOML: {error}") from error
