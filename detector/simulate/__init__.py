"""Simulate gateway traffic with known abuse, for testing and tuning the detectors.

``simulate_traffic`` writes ``events.jsonl`` (the event contract of
detector/events.py, sorted by ``ts``) and ``labels.csv`` (the behaviour kind
and, for abuse, the reason code that should catch it and when it starts).
The output depends only on the arguments: the same seed gives the same bytes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from detector.plans import Plan, load_plans
from detector.simulate import abuse, benign, devices, output
from detector.simulate.network import CLOUD, NETWORKS
from detector.simulate.population import KIND_BY_NAME, KeyProfile, build_population
from detector.simulate.timing import DAY
from detector.simulate.traffic import Columns, KeyContext, KeyTraffic, assemble_key, concat_columns

__all__ = ["SimulationResult", "simulate_traffic", "BEHAVIOURS"]

BEHAVIOURS = {
    "normal": benign.normal,
    "heavy_user": benign.heavy_user,
    "team_nat": benign.team_nat,
    "mobile": benign.mobile,
    "traveller": benign.traveller,
    "cron_job": benign.cron_job,
    "batch_pipeline": benign.batch_pipeline,
    "steady_growth": benign.steady_growth,
    "image_light": benign.image_light,
    "image_package": benign.image_package,
    "new_key": benign.new_key,
    "phone_and_laptop": devices.phone_and_laptop,
    "ci_developer": devices.ci_developer,
    "resold_key": abuse.resold_key,
    "shared_key": abuse.shared_key,
    "bot": abuse.bot,
    "concurrency_flood": abuse.concurrency_flood,
    "cost_spike": abuse.cost_spike,
    "runaway_loop": abuse.runaway_loop,
    "image_overuse": abuse.image_overuse,
}

# Independent random streams derived from the seed.
POPULATION_STREAM = 0
KEY_STREAM = 1


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """Paths of the files written, with the counts of events, keys and keys per kind."""

    events_path: Path
    labels_path: Path
    events: int
    keys: int
    kinds: dict[str, int] = field(default_factory=dict)
    # The simulated cloud providers' ranges, for FAIRUSE_HOSTING_NETWORKS.
    hosting_path: Path | None = None


def simulate_traffic(
    out_dir: Path,
    keys: int,
    days: int,
    seed: int,
    start: datetime = datetime(2026, 11, 23, tzinfo=UTC),
    compress: bool = False,
) -> SimulationResult:
    """Simulate ``keys`` keys for ``days`` days from ``start`` and write events and labels to ``out_dir``.

    Raises ValueError for fewer than one key or day, a negative seed, or a
    ``start`` without a time zone.
    """
    _validate(keys, days, seed, start)
    window_start = start.timestamp()
    window_end = window_start + days * DAY

    plans = load_plans().plans
    profiles = build_population(np.random.default_rng([seed, POPULATION_STREAM]), keys)
    traffic = [
        _simulate_key(profile, plans[profile.plan], seed, window_start, window_end) for profile in profiles
    ]

    columns, key_index = _merge_keys(traffic)
    out_dir.mkdir(parents=True, exist_ok=True)
    events_path = out_dir / ("events.jsonl.gz" if compress else "events.jsonl")
    labels_path = out_dir / "labels.csv"
    key_fields = [{"account_id": p.account_id, "key_id": p.key_id, "plan": p.plan} for p in profiles]
    output.write_events(events_path, columns, key_index, key_fields, f"sim-{seed}-", compress)
    output.write_labels(labels_path, [_label_row(profile, key.onset) for profile, key in zip(profiles, traffic)])
    hosting_path = out_dir / "hosting-networks.txt"
    output.write_hosting_networks(hosting_path, cloud_networks())

    return SimulationResult(
        events_path=events_path,
        labels_path=labels_path,
        events=int(key_index.size),
        keys=keys,
        kinds=dict(Counter(profile.kind for profile in profiles)),
        hosting_path=hosting_path,
    )


def cloud_networks() -> list[tuple[str, str]]:
    """Return the IPv4 and IPv6 prefixes of every simulated cloud provider network."""
    return [
        (provider.ipv4_prefix, provider.ipv6_prefix)
        for (_, kind), providers in sorted(NETWORKS.items())
        if kind == CLOUD
        for provider in providers
    ]


def _validate(keys: int, days: int, seed: int, start: datetime) -> None:
    if keys < 1:
        raise ValueError(f"keys must be at least 1, got {keys}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if seed < 0:
        raise ValueError(f"seed must be zero or positive, got {seed}")
    if start.tzinfo is None:
        raise ValueError(f"start must carry a time zone, got naive {start.isoformat()}; use tzinfo=UTC")


def _simulate_key(profile: KeyProfile, plan: Plan, seed: int, window_start: float, window_end: float) -> KeyTraffic:
    rng = np.random.default_rng([seed, KEY_STREAM, profile.index])
    ctx = KeyContext(rng, plan, window_start, window_end)
    return assemble_key(ctx, BEHAVIOURS[profile.kind](ctx))


def _merge_keys(traffic: list[KeyTraffic]) -> tuple[Columns, np.ndarray]:
    """Concatenate all keys' events and order them by millisecond timestamp, then key, then key order."""
    columns = concat_columns([key.columns for key in traffic])
    sizes = [key.columns["ts"].size for key in traffic]
    key_index = np.repeat(np.arange(len(traffic)), sizes)

    columns["ts"] = np.rint(columns["ts"] * 1000.0) / 1000.0
    order = np.lexsort((key_index, columns["ts"]))
    return {name: values[order] for name, values in columns.items()}, key_index[order]


def _label_row(profile: KeyProfile, onset: float | None) -> dict[str, str]:
    kind = KIND_BY_NAME[profile.kind]
    return {
        "key_id": profile.key_id,
        "account_id": profile.account_id,
        "plan": profile.plan,
        "kind": profile.kind,
        "is_abuse": "1" if kind.is_abuse else "0",
        "expected_reason": kind.reason,
        "onset": "" if onset is None else str(output.format_times(np.array([onset]))[0]),
    }
