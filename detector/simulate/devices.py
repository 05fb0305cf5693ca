"""Benign look-alikes of key sharing: one person whose own devices or jobs use the key from two networks."""

from __future__ import annotations

import numpy as np

from detector.simulate import network, people, timing
from detector.simulate.people import Visits
from detector.simulate.traffic import KeyContext, Part, benign
from detector.simulate.usage import RequestStyle, pick_style

# Share of a CI developer's work sessions that push a commit and start a pipeline run.
CI_RUN_SHARE = 0.5


def phone_and_laptop(ctx: KeyContext) -> list[Part]:
    """Generate one person who alternates, within the same hours, a phone on mobile data and a laptop on wifi.

    Each session uses one device: the phone gets a fresh address from one of a
    few carrier /24s, the laptop uses the home or office line. The two devices
    have their own user agents and are in the same country.
    """
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    carrier = network.pick_network(rng, country.code, network.MOBILE)
    carrier_subnets = network.draw_subnets(rng, carrier, int(rng.integers(2, 5)))
    if rng.random() < 0.5:
        line = people.office_place(rng, country, offset)
    else:
        line = people.home_place(rng, country, offset, ctx.start, ctx.end)
    phone_agent = network.pick_agent(rng, network.MOBILE_AGENTS)
    laptop_agent = network.pick_agent(rng, network.BROWSER_AGENTS + network.SDK_AGENTS)

    starts = timing.session_starts(rng, timing.WORKER, ctx.start, ctx.end, offset, min_sessions=3)
    ts, session = timing.session_arrivals(rng, timing.WORKER, starts)
    on_phone = _alternating_devices(rng, starts.size)[session]

    phone_hosts = rng.integers(2, 255, starts.size)
    phone_subnets = rng.integers(0, len(carrier_subnets), starts.size)
    phone_ips = np.array(
        [f"{carrier_subnets[index]}.{host}" for index, host in zip(phone_subnets.tolist(), phone_hosts.tolist())],
        dtype=object,
    )[session]
    visits = Visits(
        ts,
        np.where(on_phone, phone_ips, line.addresses_at(ts)),
        np.where(on_phone, phone_agent, laptop_agent).astype(object),
        np.full(ts.size, country.code, dtype=object),
    )
    return [benign(rng, people.clip_visits(visits, ctx.start, ctx.end), pick_style(rng))]


def _alternating_devices(rng: np.random.Generator, sessions: int) -> np.ndarray:
    """Return, per session, whether it is on the phone: the device changes after 70% of sessions."""
    changes = rng.random(sessions) < 0.7
    changes[0] = bool(rng.random() < 0.5)
    return np.cumsum(changes) % 2 == 1


def ci_developer(ctx: KeyContext) -> list[Part]:
    """Generate a developer on a laptop whose pushes start CI runs that call the API from a cloud region.

    Each run gets a fresh runner address in the cloud provider, so runs come
    from different /24s. The region is the nearest cloud region to the
    developer or, half the time, one in the United States.
    """
    rng = ctx.rng
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    laptop = people.Person(timing.WORKER, people.home_place(rng, country, offset, ctx.start, ctx.end),
                           network.pick_human_agents(rng, max_agents=1))
    laptop_visits = people.person_visits(rng, laptop, ctx.start, ctx.end, min_sessions=3)

    region = country.code if rng.random() < 0.5 else "US"
    cloud = network.pick_network(rng, region, network.CLOUD)
    runs = _ci_runs(rng, laptop_visits.ts)
    per_run = rng.integers(4, 16, runs.size)
    run_of_request = np.repeat(np.arange(runs.size), per_run)
    ts = runs[run_of_request] + np.concatenate([np.cumsum(rng.uniform(1.0, 8.0, count)) for count in per_run])
    runners = np.concatenate([network.ipv4_hosts(rng, subnet, 1) for subnet in network.draw_subnets(rng, cloud, runs.size)])
    ci_visits = Visits(
        ts,
        runners[run_of_request],
        np.full(ts.size, network.pick_agent(rng, network.SCRIPT_AGENTS), dtype=object),
        np.full(ts.size, cloud.country, dtype=object),
    )
    ci_style = RequestStyle(
        models=("gpt-4o-mini",),
        model_weights=(1.0,),
        endpoint_weights=(1.0, 0.0, 0.0, 0.0),
        prompt_median=float(rng.uniform(300, 1500)),
        completion_median=float(rng.uniform(50, 300)),
        completion_sigma=0.3,
        stream_share=0.0,
        fixed_prompts=int(per_run.max()),
    )
    return [
        benign(rng, laptop_visits, pick_style(rng)),
        benign(rng, people.clip_visits(ci_visits, ctx.start, ctx.end), ci_style),
    ]


def _ci_runs(rng: np.random.Generator, laptop_ts: np.ndarray) -> np.ndarray:
    """Return CI run start times: 2-10 minutes after some of the laptop's requests, at least 15 minutes apart."""
    if laptop_ts.size == 0:
        return np.empty(0)
    pushes = np.sort(rng.choice(laptop_ts, size=max(1, int(laptop_ts.size * CI_RUN_SHARE / 10)), replace=False))
    runs = pushes + rng.uniform(120.0, 600.0, pushes.size)
    keep = np.concatenate(([True], np.diff(runs) >= 900.0))
    return runs[keep]
