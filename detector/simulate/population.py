"""Behaviour kinds of the simulated keys, their mix, and the plans and accounts the keys get."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEXT_PLANS: tuple[str, ...] = ("document", "text", "coding", "openai-stable")
TEXT_PLAN_WEIGHTS: tuple[float, ...] = (0.3, 0.3, 0.25, 0.15)
IMAGE_PLANS: tuple[str, ...] = ("image-basic", "image-pro")

# Keys per account and how often each size occurs.
ACCOUNT_SIZES = (1, 2, 3)
ACCOUNT_SIZE_WEIGHTS = (0.85, 0.1, 0.05)

# From this many keys on, every kind gets at least one key.
ALL_KINDS_FROM = 50


@dataclass(frozen=True, slots=True)
class Kind:
    """A behaviour kind, its share of keys and the reason code that should catch it (empty if benign)."""

    name: str
    share: float
    reason: str = ""
    plans: tuple[str, ...] = TEXT_PLANS
    plan_weights: tuple[float, ...] = TEXT_PLAN_WEIGHTS

    @property
    def is_abuse(self) -> bool:
        return bool(self.reason)


# Benign kinds take 85% of keys and abuse kinds 15%. The three high-volume
# automation kinds get the minimum of 8 keys per 500, because each of their
# keys sends thousands of requests, and the other abuse kinds share the rest.
KINDS: tuple[Kind, ...] = (
    Kind("normal", 0.29),
    Kind("heavy_user", 0.05),
    Kind("team_nat", 0.05),
    Kind("mobile", 0.08),
    Kind("traveller", 0.04),
    Kind("cron_job", 0.04),
    Kind("batch_pipeline", 0.03),
    Kind("steady_growth", 0.04),
    Kind("image_light", 0.06),
    Kind("image_package", 0.07, plans=IMAGE_PLANS, plan_weights=(0.6, 0.4)),
    Kind("new_key", 0.06),
    Kind("phone_and_laptop", 0.02),
    Kind("ci_developer", 0.02),
    Kind("resold_key", 0.0255, "key_sharing"),
    Kind("shared_key", 0.0255, "key_sharing"),
    Kind("bot", 0.016, "automation", plan_weights=(0.45, 0.45, 0.05, 0.05)),
    Kind("concurrency_flood", 0.016, "automation"),
    Kind("cost_spike", 0.0255, "abnormal_cost"),
    Kind("runaway_loop", 0.016, "automation", plan_weights=(0.15, 0.15, 0.45, 0.25)),
    Kind("image_overuse", 0.0255, "image_quota"),
)

KIND_BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}


@dataclass(frozen=True, slots=True)
class KeyProfile:
    """One simulated API key: ids, plan and behaviour kind."""

    index: int
    key_id: str
    account_id: str
    plan: str
    kind: str


def count_kinds(keys: int) -> dict[str, int]:
    """Split ``keys`` over the kinds by share, largest remainders first.

    From ALL_KINDS_FROM keys on, every kind gets at least one key; the keys
    for that come from the kinds with the most keys.
    """
    shares = np.array([kind.share for kind in KINDS])
    exact = shares / shares.sum() * keys
    counts = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - counts), kind="stable")
    counts[remainder_order[: keys - int(counts.sum())]] += 1

    if keys >= ALL_KINDS_FROM:
        for index in np.flatnonzero(counts == 0):
            counts[int(np.argmax(counts))] -= 1
            counts[index] += 1

    return {kind.name: int(count) for kind, count in zip(KINDS, counts)}


def build_population(rng: np.random.Generator, keys: int) -> list[KeyProfile]:
    """Assign every key a kind, a plan and an account; most accounts own one key, some two or three."""
    counts = count_kinds(keys)
    kinds = np.repeat(np.array(list(counts), dtype=object), list(counts.values()))
    kinds = kinds[rng.permutation(keys)]

    sizes = rng.choice(ACCOUNT_SIZES, size=keys, p=ACCOUNT_SIZE_WEIGHTS)
    account_of_key = np.repeat(np.arange(keys), sizes)[:keys]

    profiles = []
    for index in range(keys):
        kind = KIND_BY_NAME[str(kinds[index])]
        plan = kind.plans[int(rng.choice(len(kind.plans), p=np.array(kind.plan_weights) / sum(kind.plan_weights)))]
        profiles.append(
            KeyProfile(
                index=index,
                key_id=f"key-{index + 1:06d}",
                account_id=f"acct-{int(account_of_key[index]) + 1:06d}",
                plan=plan,
                kind=kind.name,
            )
        )
    return profiles
