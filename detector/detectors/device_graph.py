"""Devices in separate places: connected components of a key's network–user-agent graph over a rolling window."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

GROWTH_COLUMNS = ("subject", "ts", "components", "country_components")


def rolling_components(events: pd.DataFrame, window: float, requests: int, country_window: float) -> pd.DataFrame:
    """Return, at each moment a subject's device graph gains an edge, its components over the trailing ``window``.

    An *edge* is a (network, user agent) pair with at least ``requests``
    requests in the trailing ``window`` seconds. The graph links each network
    to the user agents seen on it, so one device roaming across networks, or
    several devices behind one network, is one component. An edge joins the
    graph at the request that makes it reach ``requests``, and leaves when its
    ``requests``-th latest request falls out of the window. Components can
    only grow when an edge joins, so one row per joining edge is enough.

    ``country_components`` is 2 when, among the edges with ``requests``
    requests in the trailing ``country_window`` (at most ``window``), two
    components have no country in common: two devices in separate places and
    separate countries. A traveller who uses one device at home and another
    abroad also makes two, unless ``country_window`` is shorter than the
    trip. ``events`` must be sorted by subject and time and carry ``subject``,
    ``ts``, ``net``, ``ua`` and ``country`` codes, where negative codes are
    unknown and ignored.
    """
    known = (events["net"].to_numpy() >= 0) & (events["ua"].to_numpy() >= 0)
    columns = [events[name].to_numpy()[known].tolist() for name in ("subject", "ts", "net", "ua", "country")]

    rows = []
    current = None
    history: dict[tuple[int, int], list[float]] = defaultdict(list)
    countries: dict[tuple[int, int], int] = {}
    for subject, ts, net, ua, country in zip(*columns):
        if subject != current:
            current = subject
            history.clear()
            countries.clear()

        edge = (net, ua)
        times = history[edge]
        was_active = len(times) >= requests and times[-requests] > ts - window
        times.append(ts)
        countries[edge] = country
        if was_active or len(times) < requests or times[-requests] <= ts - window:
            continue

        active = [key for key, seen in history.items() if len(seen) >= requests and seen[-requests] > ts - window]
        components, _ = _components(active, countries)
        recent = [key for key in active if history[key][-requests] > ts - country_window]
        _, country_components = _components(recent, countries)
        rows.append((subject, ts, components, country_components))

    frame = pd.DataFrame(rows, columns=list(GROWTH_COLUMNS))
    return frame.astype({"subject": np.int64, "ts": np.float64, "components": np.int64, "country_components": np.int64})


def _components(edges: list[tuple[int, int]], countries: dict[tuple[int, int], int]) -> tuple[int, int]:
    """Return the number of components of ``edges``, and 2 if two of them have no country in common, else 0 or 1."""
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def root(node):
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for net, ua in edges:
        left, right = ("net", net), ("ua", ua)
        parent.setdefault(left, left)
        parent.setdefault(right, right)
        left_root, right_root = root(left), root(right)
        if left_root != right_root:
            parent[left_root] = right_root

    places: dict[tuple[str, int], set[int]] = defaultdict(set)
    for edge in edges:
        if countries[edge] >= 0:
            places[root(("net", edge[0]))].add(countries[edge])
    components = sum(1 for node in parent if parent[node] == node)
    country_sets = list(places.values())
    disjoint = any(
        not (first & second) for index, first in enumerate(country_sets) for second in country_sets[index + 1 :]
    )
    return components, 2 if disjoint else min(len(country_sets), 1)
