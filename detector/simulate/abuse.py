"""Abuse behaviour kinds. Each key behaves like a benign user until its abuse starts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from detector.simulate import network, people, timing
from detector.simulate.traffic import KeyContext, Part, abusive, benign, fill
from detector.simulate.usage import PRICES, RequestStyle, pick_style, price_requests

IMAGE_ONLY = (0.0, 0.0, 0.0, 1.0)

# People who use a shared key do so on most days, weekends included.
SHARER = timing.Persona(0.9, 0.8, 3.0, 7.0, 50.0, timing.EVERYDAY_HOURS)


def resold_key(ctx: KeyContext) -> list[Part]:
    """Generate a resold key: from the onset 15-50 end users in 3-8 countries use it, each from their own network."""
    rng = ctx.rng
    onset = ctx.at(rng.uniform(0.2, 0.5))
    owner = people.draw_person(rng, timing.CASUAL, ctx.start, onset)
    parts = [benign(rng, people.person_visits(rng, owner, ctx.start, onset), pick_style(rng))]

    countries: list[network.Country] = []
    for _ in range(int(rng.integers(3, 9))):
        countries.append(network.pick_country(rng, exclude=tuple(country.code for country in countries)))

    for user in range(int(rng.integers(15, 51))):
        country = countries[int(rng.integers(len(countries)))]
        offset = network.pick_offset(rng, country)
        place = people.home_place(rng, country, offset, onset, ctx.end)
        customer = people.Person(timing.CUSTOMER, place, network.pick_human_agents(rng, max_agents=1))
        joined = onset if user == 0 else min(onset + rng.uniform(0.0, 6.0) * timing.HOUR, ctx.end - 1.0)
        visits = people.person_visits(rng, customer, joined, ctx.end)
        parts.append(abusive(rng, visits, pick_style(rng)))
    return parts


def shared_key(ctx: KeyContext) -> list[Part]:
    """Generate a key the owner shares with 2-4 people in other cities or nearby countries, who use it daily."""
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    owner_place = people.home_place(rng, country, offset, ctx.start, ctx.end)
    owner = people.Person(SHARER, owner_place, network.pick_human_agents(rng))
    parts = [benign(rng, people.person_visits(rng, owner, ctx.start, ctx.end), pick_style(rng))]

    onset = ctx.at(rng.uniform(0.05, 0.4))
    for _ in range(int(rng.integers(2, 5))):
        if rng.random() < 0.6:
            friend_country, friend_offset = country, network.pick_offset(rng, country)
        else:
            friend_country, friend_offset = network.pick_nearby_country(rng, country, offset, max_hours=3.0)
        place = people.home_place(rng, friend_country, friend_offset, onset, ctx.end)
        friend = people.Person(SHARER, place, network.pick_human_agents(rng))
        visits = people.person_visits(rng, friend, onset, ctx.end)
        parts.append(abusive(rng, visits, pick_style(rng)))
    return parts


def bot(ctx: KeyContext) -> list[Part]:
    """Generate a script on a server that sends a request every few seconds for 5-10 hours, at 3-4.5x the plan's rate."""
    rng = ctx.rng
    owner = people.draw_person(rng, timing.CASUAL, ctx.start, ctx.end)
    parts = [benign(rng, people.person_visits(rng, owner, ctx.start, ctx.end), pick_style(rng))]

    onset = ctx.at(rng.uniform(0.1, 0.7))
    stop = min(ctx.end, onset + rng.uniform(5.0, 10.0) * timing.HOUR)
    rate = rng.uniform(3.0, 4.5) * ctx.plan.expected_rph
    period = float(np.clip(timing.HOUR / rate, 1.5, 10.0))
    ts = timing.regular_cadence(rng, onset, stop, period, jitter_share=0.03)

    server_country = network.pick_country(rng)
    place = people.server_place(rng, server_country, network.pick_offset(rng, server_country))
    style = RequestStyle(
        models=("gpt-4o-mini", "gpt-4.1-mini"),
        model_weights=(0.8, 0.2),
        endpoint_weights=(1.0, 0.0, 0.0, 0.0),
        prompt_median=float(rng.uniform(300, 1200)),
        prompt_sigma=0.15,
        completion_median=float(rng.uniform(100, 400)),
        completion_sigma=0.3,
        stream_share=0.0,
        repeat_share=0.0,
        rate_limited_share=0.03,
    )
    agent = network.pick_agent(rng, network.SCRIPT_AGENTS)
    parts.append(abusive(rng, people.place_visits(place, ts, agent), style))
    return parts


def concurrency_flood(ctx: KeyContext) -> list[Part]:
    """Generate an integration that fans out: 2-3 bursts of 8-15 minutes, each a wave of 20-40 parallel requests every 8-15 s."""
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    place = people.server_place(rng, country, offset)
    agent = network.pick_agent(rng, network.SDK_AGENTS + network.SCRIPT_AGENTS)
    style = RequestStyle(
        models=("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o"),
        model_weights=(0.6, 0.3, 0.1),
        endpoint_weights=(0.8, 0.1, 0.1, 0.0),
        prompt_median=float(rng.uniform(500, 2000)),
        completion_median=float(rng.uniform(100, 400)),
        stream_share=0.0,
        repeat_share=0.02,
    )

    rates = timing.office_rates(ctx.start, ctx.end, offset, float(rng.uniform(5, 15)), 8, 19)
    steady = timing.poisson_hours(rng, ctx.start, ctx.end, rates)
    parts = [benign(rng, people.place_visits(place, steady, agent), style)]

    onset = ctx.at(rng.uniform(0.1, 0.5))
    later = np.sort(rng.uniform(onset + 2 * timing.HOUR, ctx.end, int(rng.integers(1, 3))))
    burst_style = replace(style, rate_limited_share=0.25)
    for burst_start in [onset, *later[later < ctx.end - 60.0].tolist()]:
        duration = min(rng.uniform(8.0, 15.0) * 60.0, ctx.end - burst_start)
        ts = timing.parallel_waves(rng, burst_start, duration, float(rng.uniform(8.0, 15.0)), (20, 40))
        ts = ts[ts < ctx.end]
        parts.append(abusive(rng, people.place_visits(place, ts, agent), burst_style))
    return parts


def cost_spike(ctx: KeyContext) -> list[Part]:
    """Generate a stolen key: for 2-6 hours, huge prompts to an expensive model at 20-100x the owner's spend rate.

    The thief's hourly spend is at least 2-5 times the plan's hourly budget as
    well, so that owners who spend almost nothing still show a real breach.
    """
    rng = ctx.rng
    persona = timing.CASUAL if rng.random() < 0.5 else timing.WORKER
    owner = people.draw_person(rng, persona, ctx.start, ctx.end)
    owner_part = benign(rng, people.person_visits(rng, owner, ctx.start, ctx.end), pick_style(rng))

    onset = ctx.at(rng.uniform(0.3, 0.8))
    stop = min(ctx.end, onset + rng.uniform(2.0, 6.0) * timing.HOUR)
    baseline = _active_hour_spend(owner_part.columns, before=onset)
    target_per_hour = max(rng.uniform(20.0, 100.0) * baseline, rng.uniform(2.0, 5.0) * ctx.plan.hourly_budget)
    style, rate = _thief_style(rng, target_per_hour)

    ts = timing.poisson_hours(rng, onset, stop, np.full(int(np.ceil((stop - onset) / timing.HOUR)), rate))
    if ts.size == 0:
        ts = np.array([onset])

    if rng.random() < 0.75:
        elsewhere = network.pick_country(rng)
        place = people.server_place(rng, elsewhere, network.pick_offset(rng, elsewhere))
        agent = network.pick_agent(rng, network.SCRIPT_AGENTS)
    else:
        place, agent = owner.place, owner.agents[0]
    return [owner_part, abusive(rng, people.place_visits(place, ts, agent), style)]


def _active_hour_spend(columns: dict[str, np.ndarray], before: float) -> float:
    """Return the owner's mean spend per hour with any request, before ``before``; 0.05 without history."""
    early = columns["ts"] < before
    hours = np.unique(np.floor(columns["ts"][early] / timing.HOUR))
    if hours.size == 0:
        return 0.05
    return max(float(columns["cost"][early].sum()) / hours.size, 0.001)


def _thief_style(rng: np.random.Generator, target_per_hour: float) -> tuple[RequestStyle, float]:
    """Return a style with huge prompts on an expensive model, and the hourly rate reaching the target."""
    model = "o1" if rng.random() < 0.7 else "gpt-4.1"
    price = PRICES[model]
    completion = float(rng.uniform(1500, 4000))
    rate = float(rng.uniform(20, 60))
    needed_prompt = (target_per_hour / rate - completion * price.completion / 1000.0) / price.prompt * 1000.0
    prompt = float(np.clip(needed_prompt, 8000, 150000))
    per_request = prompt * price.prompt / 1000.0 + completion * price.completion / 1000.0
    rate = float(np.clip(target_per_hour / per_request, 10, 120))

    style = RequestStyle(
        models=(model,),
        model_weights=(1.0,),
        endpoint_weights=(1.0, 0.0, 0.0, 0.0),
        prompt_median=prompt,
        prompt_sigma=0.3,
        completion_median=completion,
        completion_sigma=0.3,
        stream_share=0.3,
        repeat_share=0.0,
    )
    return style, rate


def runaway_loop(ctx: KeyContext) -> list[Part]:
    """Generate an agent stuck in a loop: the same prompt every 1-3 seconds, back to back, for 1-2 hours."""
    rng = ctx.rng
    owner = people.draw_person(rng, timing.WORKER, ctx.start, ctx.end)
    owner_style = pick_style(rng, ctx.token_scale())
    parts = [benign(rng, people.person_visits(rng, owner, ctx.start, ctx.end), owner_style)]

    onset = ctx.at(rng.uniform(0.1, 0.8))
    stop = min(ctx.end, onset + rng.uniform(1.0, 2.0) * timing.HOUR)
    ts = timing.back_to_back(rng, onset, stop, 1.0, 3.0)
    if rng.random() < 0.6:
        place = owner.place
    else:
        place = people.server_place(rng, network.COUNTRY_BY_CODE[owner.place.country], owner.place.utc_offset)

    style = replace(
        owner_style,
        endpoint_weights=(0.8, 0.2, 0.0, 0.0),
        completion_median=float(rng.uniform(60, 200)),
        completion_sigma=0.15,
        stream_share=0.0,
        fixed_prompts=1,
        rate_limited_share=0.02,
    )
    loop = fill(rng, people.place_visits(place, ts, network.pick_agent(rng, network.SDK_AGENTS)), style)
    loop["latency_ms"] = _finish_before_next(rng, loop["ts"], loop["latency_ms"])
    return [*parts, Part(loop, abusive=True)]


def _finish_before_next(rng: np.random.Generator, ts: np.ndarray, latency_ms: np.ndarray) -> np.ndarray:
    """Cap each latency below the gap to the next request, because a loop sends the next request after the response."""
    gaps_ms = np.diff(ts, append=ts[-1] + 3.0) * 1000.0 if ts.size else np.empty(0)
    return np.round(np.minimum(latency_ms, gaps_ms * rng.uniform(0.6, 0.9, ts.size)), 1)


def image_overuse(ctx: KeyContext) -> list[Part]:
    """Generate a text-plan key that makes 30-200 images over the week, far past the weekly image window."""
    rng = ctx.rng
    owner = people.draw_person(rng, timing.CASUAL, ctx.start, ctx.end)
    parts = [benign(rng, people.person_visits(rng, owner, ctx.start, ctx.end), pick_style(rng))]

    batches = _image_batches(rng, int(rng.integers(30, 201)))
    first = ctx.at(rng.uniform(0.05, 0.4))
    last_start = max(first + 1.0, ctx.end - 2 * timing.HOUR)
    starts = timing.session_starts(rng, timing.CASUAL, first, last_start, owner.place.utc_offset, min_sessions=3)
    starts = np.concatenate([[first], starts])
    ts = timing.spread_in_sessions(rng, batches.size, starts, gap_median_s=45.0)
    ts = ts[ts < ctx.end]

    style = RequestStyle(
        models=("gpt-4o",),
        model_weights=(1.0,),
        endpoint_weights=IMAGE_ONLY,
        image_model=str(rng.choice(["dall-e-3", "gpt-image-1"])),
        rate_limited_share=0.0,
        server_error_share=0.0,
    )
    images = fill(rng, people.place_visits(owner.place, ts, owner.agents[0]), style)
    images["images"] = batches[: ts.size]
    images["cost"] = price_requests(images)
    return [*parts, Part(images, abusive=True)]


def _image_batches(rng: np.random.Generator, total: int) -> np.ndarray:
    """Split ``total`` images into requests of 1, 2 or 4 images that add up to exactly ``total``."""
    sizes = rng.choice([1, 1, 2, 4], size=total)
    covered = np.cumsum(sizes)
    count = int(np.searchsorted(covered, total)) + 1
    sizes = sizes[:count].astype(np.int64)
    sizes[-1] -= int(covered[count - 1]) - total
    return sizes
