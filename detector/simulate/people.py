"""Clients of a key: where they connect from and when they send requests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.simulate import network, timing
from detector.simulate.network import Country


@dataclass(frozen=True, slots=True)
class Place:
    """Addresses one client uses from one location.

    ``addresses[i]`` is in use from ``switch_times[i - 1]`` on, so a home line
    that gets a new lease, or an IPv6 privacy address that rotates daily, is
    one place with several addresses.
    """

    country: str
    utc_offset: float
    addresses: np.ndarray
    switch_times: np.ndarray

    def addresses_at(self, ts: np.ndarray) -> np.ndarray:
        """Return the address in use at each time."""
        return self.addresses[np.searchsorted(self.switch_times, ts, side="right")]


@dataclass(frozen=True, slots=True)
class Visits:
    """Request times of one or more clients, with the address, user agent and country of each."""

    ts: np.ndarray
    ip: np.ndarray
    user_agent: np.ndarray
    country: np.ndarray

    @property
    def size(self) -> int:
        return int(self.ts.size)


@dataclass(frozen=True, slots=True)
class Person:
    """One human client: how they work, where from, and with which 1-2 user agents."""

    persona: timing.Persona
    place: Place
    agents: tuple[str, ...]


def fixed_place(country: str, utc_offset: float, address: str) -> Place:
    """Return a place with a single address for the whole window."""
    return Place(country, utc_offset, np.array([address], dtype=object), np.empty(0))


def home_place(rng: np.random.Generator, country: Country, utc_offset: float, start: float, end: float) -> Place:
    """Draw a residential line: mostly one IPv4 address, sometimes re-leased once, sometimes IPv6.

    IPv6 homes keep one /64 and rotate the interface id daily (privacy addresses).
    """
    provider = network.pick_network(rng, country.code, network.ISP)
    roll = rng.random()

    if roll < 0.15:
        site = network.draw_ipv6_site(rng, provider)
        first_day = np.floor(start / timing.DAY) * timing.DAY
        switch_times = np.arange(first_day + timing.DAY, end, timing.DAY)
        addresses = network.ipv6_hosts(rng, site, switch_times.size + 1)
        return Place(country.code, utc_offset, addresses, switch_times)

    if roll < 0.3:
        subnets = network.draw_subnets(rng, provider, 2)
        addresses = np.concatenate([network.ipv4_hosts(rng, subnet, 1) for subnet in subnets])
        return Place(country.code, utc_offset, addresses, np.array([rng.uniform(start, end)]))

    subnet = network.draw_subnets(rng, provider, 1)[0]
    return Place(country.code, utc_offset, network.ipv4_hosts(rng, subnet, 1), np.empty(0))


def office_place(rng: np.random.Generator, country: Country, utc_offset: float) -> Place:
    """Draw a company network that reaches the internet through one NAT address."""
    provider = network.pick_network(rng, country.code, network.ISP)
    subnet = network.draw_subnets(rng, provider, 1)[0]
    return fixed_place(country.code, utc_offset, str(network.ipv4_hosts(rng, subnet, 1)[0]))


def server_place(rng: np.random.Generator, country: Country, utc_offset: float) -> Place:
    """Draw a cloud server with one public address in (or near) the country."""
    provider = network.pick_network(rng, country.code, network.CLOUD)
    subnet = network.draw_subnets(rng, provider, 1)[0]
    return fixed_place(provider.country, utc_offset, str(network.ipv4_hosts(rng, subnet, 1)[0]))


def draw_person(rng: np.random.Generator, persona: timing.Persona, start: float, end: float) -> Person:
    """Draw a person at home somewhere, with their own clients."""
    country = network.pick_country(rng)
    offset = network.pick_offset(rng, country)
    return Person(persona, home_place(rng, country, offset, start, end), network.pick_human_agents(rng))


def person_visits(rng: np.random.Generator, person: Person, start: float, end: float, min_sessions: int = 1) -> Visits:
    """Generate one person's requests in ``[start, end)``. Each session uses one of their user agents."""
    starts = timing.session_starts(rng, person.persona, start, end, person.place.utc_offset, min_sessions)
    ts, session = timing.session_arrivals(rng, person.persona, starts)
    agents = pick_session_agents(rng, person.agents, starts.size)[session]
    visits = Visits(ts, person.place.addresses_at(ts), agents, np.full(ts.size, person.place.country, dtype=object))
    return clip_visits(visits, start, end)


def pick_session_agents(rng: np.random.Generator, agents: tuple[str, ...], sessions: int) -> np.ndarray:
    """Return the user agent of each session; the first agent is the person's usual one."""
    weights = np.array([3.0] + [1.0] * (len(agents) - 1))
    choice = rng.choice(len(agents), size=sessions, p=weights / weights.sum())
    return np.array(agents, dtype=object)[choice]


def place_visits(place: Place, ts: np.ndarray, agent: str | np.ndarray) -> Visits:
    """Attach a place and user agent(s) to request times."""
    agents = agent if isinstance(agent, np.ndarray) else np.full(ts.size, agent, dtype=object)
    return Visits(ts, place.addresses_at(ts), agents, np.full(ts.size, place.country, dtype=object))


def clip_visits(visits: Visits, start: float, end: float) -> Visits:
    """Keep the requests in ``[start, end)``."""
    keep = (visits.ts >= start) & (visits.ts < end)
    return Visits(visits.ts[keep], visits.ip[keep], visits.user_agent[keep], visits.country[keep])


def merge_visits(parts: list[Visits]) -> Visits:
    """Merge several clients' requests into one time-ordered stream."""
    ts = np.concatenate([part.ts for part in parts])
    order = np.argsort(ts, kind="stable")
    return Visits(
        ts[order],
        np.concatenate([part.ip for part in parts])[order],
        np.concatenate([part.user_agent for part in parts])[order],
        np.concatenate([part.country for part in parts])[order],
    )
