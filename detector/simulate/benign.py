"""Benign behaviour kinds: fair use that detectors must leave alone, including the look-alikes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from detector.simulate import network, people, timing
from detector.simulate.people import Visits
from detector.simulate.traffic import KeyContext, Part, benign
from detector.simulate.usage import RequestStyle, pick_style, scale_style_cost

IMAGE_ONLY = (0.0, 0.0, 0.0, 1.0)


def normal(ctx: KeyContext) -> list[Part]:
    """Generate light human use: a few to a few dozen requests on active days."""
    person = people.draw_person(ctx.rng, timing.CASUAL, ctx.start, ctx.end)
    visits = people.person_visits(ctx.rng, person, ctx.start, ctx.end)
    return [benign(ctx.rng, visits, pick_style(ctx.rng))]


def heavy_user(ctx: KeyContext) -> list[Part]:
    """Generate a power user in office hours with large prompts, near but under the plan's budget and rate.

    Prompt sizes are set so that a typical busy day would cost 60-75% of the
    daily budget. The plan guard in traffic.py then trims the busiest hours.
    """
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    if rng.random() < 0.5:
        place = people.office_place(rng, country, offset)
    else:
        place = people.home_place(rng, country, offset, ctx.start, ctx.end)

    person = people.Person(timing.POWER, place, network.pick_human_agents(rng))
    visits = people.person_visits(rng, person, ctx.start, ctx.end)
    style = replace(
        pick_style(rng),
        models=("gpt-4o", "gpt-4.1", "o3-mini"),
        model_weights=(0.5, 0.35, 0.15),
        prompt_median=8000.0,
        completion_median=700.0,
    )
    busy_day_requests = timing.POWER.sessions_per_day * timing.POWER.requests_per_session
    target_day_spend = float(rng.uniform(0.6, 0.75)) * ctx.plan.daily_budget
    style = scale_style_cost(rng, style, target_day_spend / busy_day_requests)
    return [benign(rng, visits, style)]


def team_nat(ctx: KeyContext) -> list[Part]:
    """Generate a team of 4-10 people sharing one key behind one office NAT address, each with their own client."""
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    office = people.office_place(rng, country, offset)

    parts = []
    for _ in range(int(rng.integers(4, 11))):
        member = people.Person(timing.WORKER, office, network.pick_human_agents(rng, max_agents=1))
        visits = people.person_visits(rng, member, ctx.start, ctx.end)
        parts.append(benign(rng, visits, pick_style(rng)))
    return parts


def mobile(ctx: KeyContext) -> list[Part]:
    """Generate one person on a phone: each session comes from one of a few /24s of one carrier, or from home wifi."""
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    carrier = network.pick_network(rng, country.code, network.MOBILE)
    carrier_subnets = network.draw_subnets(rng, carrier, int(rng.integers(3, 7)))
    home = people.home_place(rng, country, offset, ctx.start, ctx.end)
    agents = (network.pick_agent(rng, network.MOBILE_AGENTS),)

    starts = timing.session_starts(rng, timing.PHONE, ctx.start, ctx.end, offset)
    ts, session = timing.session_arrivals(rng, timing.PHONE, starts)
    session_ips = _mobile_session_addresses(rng, starts, carrier_subnets, home)

    visits = Visits(
        ts,
        session_ips[session],
        np.full(ts.size, agents[0], dtype=object),
        np.full(ts.size, country.code, dtype=object),
    )
    visits = people.clip_visits(visits, ctx.start, ctx.end)
    return [benign(rng, visits, replace(pick_style(rng), stream_share=0.9))]


def _mobile_session_addresses(
    rng: np.random.Generator, starts: np.ndarray, carrier_subnets: list[str], home: people.Place
) -> np.ndarray:
    """Return one address per session: home wifi 30% of the time, else a fresh carrier address."""
    at_home = rng.random(starts.size) < 0.3
    subnet_index = rng.integers(0, len(carrier_subnets), starts.size)
    hosts = rng.integers(2, 255, starts.size)
    carrier_ips = np.array(
        [f"{carrier_subnets[index]}.{host}" for index, host in zip(subnet_index.tolist(), hosts.tolist())],
        dtype=object,
    )
    return np.where(at_home, home.addresses_at(starts), carrier_ips)


def traveller(ctx: KeyContext) -> list[Part]:
    """Generate one person who flies to another country once and keeps working from there."""
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    persona = timing.CASUAL if rng.random() < 0.5 else timing.WORKER
    agents = network.pick_human_agents(rng)
    home = people.home_place(rng, country, offset, ctx.start, ctx.end)

    departure = ctx.at(rng.uniform(0.3, 0.6))
    arrival = min(departure + rng.uniform(6, 14) * timing.HOUR, (departure + ctx.end) / 2)
    destination = network.pick_country(rng, exclude=(country.code,))
    hotel = people.office_place(rng, destination, network.pick_offset(rng, destination))

    before = people.person_visits(rng, people.Person(persona, home, agents), ctx.start, departure)
    after = people.person_visits(rng, people.Person(persona, hotel, agents), arrival, ctx.end)
    style = pick_style(rng)
    return [benign(rng, before, style), benign(rng, after, style)]


def cron_job(ctx: KeyContext) -> list[Part]:
    """Generate a scheduled job: every hour on the hour, round the clock, the same 1-4 small prompts."""
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    place = people.server_place(rng, country, offset) if rng.random() < 0.7 else people.office_place(rng, country, offset)
    per_run = int(rng.integers(1, 5))

    runs = timing.hourly_runs(rng, ctx.start, ctx.end, jitter_s=3.0)
    steps = rng.uniform(0.8, 4.0, size=(runs.size, per_run))
    steps[:, 0] = 0.0
    ts = (runs[:, None] + np.cumsum(steps, axis=1)).ravel()
    ts = ts[ts < ctx.end]

    agent = network.pick_agent(rng, network.SCRIPT_AGENTS + ("curl/8.5.0",))
    style = RequestStyle(
        models=("gpt-4o-mini", "gpt-4.1-mini"),
        model_weights=(0.7, 0.3) if rng.random() < 0.5 else (0.0, 1.0),
        endpoint_weights=(1.0, 0.0, 0.0, 0.0),
        prompt_median=float(rng.uniform(300, 1500)),
        completion_median=float(rng.uniform(50, 300)),
        completion_sigma=0.3,
        stream_share=0.0,
        fixed_prompts=per_run,
    )
    return [benign(rng, people.place_visits(place, ts, agent), style)]


def batch_pipeline(ctx: KeyContext) -> list[Part]:
    """Generate an integration on a server: 20-60 requests an hour in local business hours, with varied prompts."""
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    place = people.server_place(rng, country, offset)

    rates = timing.office_rates(ctx.start, ctx.end, offset, float(rng.uniform(20, 60)), 9, 17)
    ts = timing.poisson_hours(rng, ctx.start, ctx.end, rates)
    agent = network.pick_agent(rng, network.SDK_AGENTS + network.SCRIPT_AGENTS)
    style = RequestStyle(
        models=("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o"),
        model_weights=(0.6, 0.3, 0.1),
        endpoint_weights=(0.6, 0.1, 0.3, 0.0),
        prompt_median=float(rng.uniform(600, 2500)),
        completion_median=float(rng.uniform(100, 400)),
        stream_share=0.0,
        repeat_share=0.02,
    )
    return [benign(rng, people.place_visits(place, ts, agent), style)]


def steady_growth(ctx: KeyContext) -> list[Part]:
    """Generate an app backend whose traffic, and so spend, grows 20-40% a day without a jump.

    On the last day it sends 120-300 requests and spends 25-45% of the daily
    budget. Prompt sizes are scaled to make both true at once.
    """
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    place = people.server_place(rng, country, offset)

    growth = float(rng.uniform(1.2, 1.4))
    last_day_requests = float(rng.uniform(120, 300))
    last_day_spend = float(rng.uniform(0.25, 0.45)) * ctx.plan.daily_budget
    app_style = pick_style(rng)
    favourite = app_style.models[int(np.argmax(app_style.model_weights))]
    app_style = replace(app_style, models=(favourite,), model_weights=(1.0,), prompt_sigma=0.5, completion_sigma=0.5)
    style = scale_style_cost(rng, app_style, last_day_spend / last_day_requests)

    hour_starts = ctx.start + np.arange(int(np.ceil(ctx.length / timing.HOUR))) * timing.HOUR
    local_hour = np.floor((hour_starts + offset * timing.HOUR) % timing.DAY / timing.HOUR).astype(np.int64)
    daily_cycle = timing.EVERYDAY_HOURS[local_hour]
    rates = last_day_requests * daily_cycle * growth ** ((hour_starts - ctx.end) / timing.DAY)

    ts = timing.steady_hours(rng, ctx.start, ctx.end, rates)
    agent = network.pick_agent(rng, network.SDK_AGENTS)
    return [benign(rng, people.place_visits(place, ts, agent), style)]


def image_light(ctx: KeyContext) -> list[Part]:
    """Generate a text-plan user who also makes 3-8 images in the week, inside the weekly image window."""
    rng = ctx.rng
    person = people.draw_person(rng, timing.CASUAL, ctx.start, ctx.end)
    visits = people.person_visits(rng, person, ctx.start, ctx.end, min_sessions=3)

    picked = np.sort(rng.choice(visits.size, size=min(int(rng.integers(3, 9)), visits.size), replace=False))
    image_ts = visits.ts[picked] + rng.uniform(5.0, 120.0, picked.size)
    image_visits = Visits(image_ts, visits.ip[picked], visits.user_agent[picked], visits.country[picked])
    image_visits = people.clip_visits(image_visits, ctx.start, ctx.end)

    image_style = RequestStyle(
        models=("gpt-4o",),
        model_weights=(1.0,),
        endpoint_weights=IMAGE_ONLY,
        image_model=str(rng.choice(["dall-e-3", "gpt-image-1"])),
    )
    return [benign(rng, visits, pick_style(rng)), benign(rng, image_visits, image_style)]


def image_package(ctx: KeyContext) -> list[Part]:
    """Generate an image-package customer making hundreds of images a week, which the plan pays for."""
    rng = ctx.rng
    busier = 2.0 if ctx.plan.name == "image-pro" else 1.0
    persona = replace(timing.CUSTOMER, sessions_per_day=3.0, requests_per_session=12.0 * busier)
    person = people.draw_person(rng, persona, ctx.start, ctx.end)
    visits = people.person_visits(rng, person, ctx.start, ctx.end, min_sessions=3)

    style = replace(
        pick_style(rng),
        endpoint_weights=(0.2, 0.0, 0.0, 0.8),
        image_model=str(rng.choice(["dall-e-3", "gpt-image-1"])),
        images_per_request=(1, 1, 1, 2, 4),
    )
    return [benign(rng, visits, style)]


def new_key(ctx: KeyContext) -> list[Part]:
    """Generate a key created mid-week that then behaves like a normal one."""
    first_seen = ctx.at(ctx.rng.uniform(0.3, 0.7))
    person = people.draw_person(ctx.rng, timing.CASUAL, first_seen, ctx.end)
    visits = people.person_visits(ctx.rng, person, first_seen, ctx.end)
    return [benign(ctx.rng, visits, pick_style(ctx.rng))]

