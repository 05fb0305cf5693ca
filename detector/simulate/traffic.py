"""Turn one key's clients into event columns, and keep benign use inside the plan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.plans import Plan
from detector.simulate.people import Visits
from detector.simulate.timing import DAY, HOUR
from detector.simulate.usage import RequestStyle, fill_requests

# Event columns each key produces, besides the key-level account_id, key_id and plan.
EVENT_COLUMNS: tuple[str, ...] = (
    "ts",
    "endpoint",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "images",
    "cost",
    "ip",
    "user_agent",
    "status",
    "latency_ms",
    "stream",
    "prompt_hash",
    "country",
)

# Benign traffic is thinned until every rolling hour and day stays below this
# share of the plan's expected rate and budgets, so benign kinds never exceed
# the plan however their random draws fall.
BENIGN_PLAN_SHARE = 0.8

Columns = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class KeyContext:
    """Inputs of a behaviour for one key: random generator, plan and time window."""

    rng: np.random.Generator
    plan: Plan
    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start

    def at(self, share: float) -> float:
        """Return the time ``share`` of the way through the window."""
        return self.start + share * self.length

    def token_scale(self) -> float:
        """Return how much larger requests are on this plan than on the 15-credit daily plans."""
        return self.plan.daily_budget / 15.0


@dataclass(frozen=True, slots=True)
class Part:
    """Events from one client of a key; ``abusive`` marks the events that make the key abusive."""

    columns: Columns
    abusive: bool = False


@dataclass(frozen=True, slots=True)
class KeyTraffic:
    """All events of one key in time order, and the time of its first abusive event (None if benign)."""

    columns: Columns
    onset: float | None


def fill(rng: np.random.Generator, visits: Visits, style: RequestStyle) -> Columns:
    """Give each visit request content and return the event columns."""
    columns = fill_requests(rng, visits.size, style)
    columns["ts"] = visits.ts
    columns["ip"] = visits.ip
    columns["user_agent"] = visits.user_agent
    columns["country"] = visits.country
    return columns


def benign(rng: np.random.Generator, visits: Visits, style: RequestStyle) -> Part:
    """Return a benign part."""
    return Part(fill(rng, visits, style))


def abusive(rng: np.random.Generator, visits: Visits, style: RequestStyle) -> Part:
    """Return an abusive part."""
    return Part(fill(rng, visits, style), abusive=True)


def assemble_key(ctx: KeyContext, parts: list[Part]) -> KeyTraffic:
    """Merge a key's parts, thin the benign ones to the plan, and find the onset of abuse.

    Raises ValueError when a behaviour marked parts abusive but they contain
    no event, because the label would then have no onset.
    """
    benign_columns = sort_columns(concat_columns([part.columns for part in parts if not part.abusive]))
    benign_columns = fit_within_plan(ctx.rng, benign_columns, ctx.plan, BENIGN_PLAN_SHARE)

    abusive_parts = [part.columns for part in parts if part.abusive]
    if not abusive_parts:
        return KeyTraffic(benign_columns, None)

    abusive_columns = concat_columns(abusive_parts)
    if abusive_columns["ts"].size == 0:
        raise ValueError("abusive parts contain no events; the behaviour must start its abuse inside the window")
    events = sort_columns(concat_columns([benign_columns, abusive_columns]))
    return KeyTraffic(events, float(abusive_columns["ts"].min()))


def concat_columns(parts: list[Columns]) -> Columns:
    """Concatenate event columns; an empty list gives empty columns."""
    if not parts:
        return empty_columns()
    return {name: np.concatenate([part[name] for part in parts]) for name in EVENT_COLUMNS}


def empty_columns() -> Columns:
    """Return event columns with no rows."""
    dtypes = {"ts": float, "cost": float, "latency_ms": float, "stream": bool, "prompt_hash": "S64"}
    integer = {"prompt_tokens", "completion_tokens", "images", "status"}
    return {
        name: np.empty(0, dtype=dtypes.get(name, np.int64 if name in integer else object)) for name in EVENT_COLUMNS
    }


def sort_columns(columns: Columns) -> Columns:
    """Return the columns ordered by time; ties keep their order."""
    order = np.argsort(columns["ts"], kind="stable")
    return {name: values[order] for name, values in columns.items()}


def select(columns: Columns, mask: np.ndarray) -> Columns:
    """Return the rows where ``mask`` is true."""
    return {name: values[mask] for name, values in columns.items()}


def fit_within_plan(rng: np.random.Generator, columns: Columns, plan: Plan, share: float) -> Columns:
    """Drop requests at random until every rolling window stays under ``share`` of the plan.

    Windows are the trailing hour (requests and spend) and the trailing day
    (spend). Each round drops about half of the requests that end an
    over-limit window, so bursts get thinner rather than cut off.
    """
    for _ in range(64):
        over = _ends_over_limit_window(columns, plan, share)
        if not over.any():
            return columns
        drop = over & (rng.random(over.size) < 0.5)
        if not drop.any():
            drop = over
        columns = select(columns, ~drop)

    over = _ends_over_limit_window(columns, plan, share)
    while over.any():
        columns = select(columns, ~over)
        over = _ends_over_limit_window(columns, plan, share)
    return columns


def _ends_over_limit_window(columns: Columns, plan: Plan, share: float) -> np.ndarray:
    ts = columns["ts"]
    position = np.arange(ts.size)
    spent = np.concatenate([[0.0], np.cumsum(columns["cost"])])

    hour_start = np.searchsorted(ts, ts - HOUR, side="right")
    day_start = np.searchsorted(ts, ts - DAY, side="right")
    hour_requests = position - hour_start + 1
    hour_spend = spent[position + 1] - spent[hour_start]
    day_spend = spent[position + 1] - spent[day_start]

    return (
        (hour_requests > share * plan.expected_rph)
        | (hour_spend > share * plan.hourly_budget)
        | (day_spend > share * plan.daily_budget)
    )
