"""Devices in separate places: connected components of a key's network–user-agent graph over a rolling window."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

GROWTH_COLUMNS = ("subject", "ts", "components", "country_components", "new_device")


def rolling_components(
    events: pd.DataFrame,
    window: float,
    requests: int,
    country_window: float,
    new_device_age: float = 0.0,
    established_age: float = np.inf,
) -> pd.DataFrame:
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

    ``new_device`` is 1 when the joining edge's component is a *new device*:
    every network and user agent in it was first used by the subject less
    than ``new_device_age`` seconds ago, while another component holds one
    first used at least ``established_age`` seconds ago. A device the
    subject already had, on a new network or with a new user agent, shares
    a node with its old edges and is not new.
    """
    known = (events["net"].to_numpy() >= 0) & (events["ua"].to_numpy() >= 0)
    known_events = events[known]
    first_use = np.minimum(
        known_events.groupby(["subject", "net"], sort=False)["ts"].transform("min").to_numpy(),
        known_events.groupby(["subject", "ua"], sort=False)["ts"].transform("min").to_numpy(),
    )
    columns = [known_events[name].to_numpy().tolist() for name in ("subject", "ts", "net", "ua", "country")]
    columns.append(first_use.tolist())

    rows = []
    current = None
    history: dict[tuple[int, int], list[float]] = defaultdict(list)
    countries: dict[tuple[int, int], int] = {}
    # First use of each edge's network or user agent, whichever is older.
    first_uses: dict[tuple[int, int], float] = {}
    for subject, ts, net, ua, country, first_use in zip(*columns):
        if subject != current:
            current = subject
            history.clear()
            countries.clear()
            first_uses.clear()

        edge = (net, ua)
        times = history[edge]
        was_active = len(times) >= requests and times[-requests] > ts - window
        times.append(ts)
        countries[edge] = country
        first_uses[edge] = first_use
        if was_active or len(times) < requests or times[-requests] <= ts - window:
            continue

        active = [key for key, seen in history.items() if len(seen) >= requests and seen[-requests] > ts - window]
        components, _, first_use_by_network = _components(active, countries, first_uses)
        recent = [key for key in active if history[key][-requests] > ts - country_window]
        _, country_components, _ = _components(recent, countries, first_uses)
        joined = first_use_by_network[net]
        # Another component is one whose oldest first use differs from the joining one's.
        new_device = joined > ts - new_device_age and any(
            other <= ts - established_age for other in first_use_by_network.values() if other < joined
        )
        rows.append((subject, ts, components, country_components, int(new_device)))

    frame = pd.DataFrame(rows, columns=list(GROWTH_COLUMNS))
    return frame.astype(
        {"subject": np.int64, "ts": np.float64, "components": np.int64, "country_components": np.int64,
         "new_device": np.int64}
    )


def _components(
    edges: list[tuple[int, int]], countries: dict[tuple[int, int], int], first_uses: dict[tuple[int, int], float]
) -> tuple[int, int, dict[int, float]]:
    """Return the number of components of ``edges``, 2 if two of them have no country in common (else 0 or 1),
    and by network the oldest first use of any edge in the network's component."""
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
    oldest: dict[tuple[str, int], float] = {}
    for edge in edges:
        node = root(("net", edge[0]))
        oldest[node] = min(oldest.get(node, np.inf), first_uses[edge])
    first_use_by_network = {edge[0]: oldest[root(("net", edge[0]))] for edge in edges}

    components = sum(1 for node in parent if parent[node] == node)
    country_sets = list(places.values())
    disjoint = any(
        not (first & second) for index, first in enumerate(country_sets) for second in country_sets[index + 1 :]
    )
    return components, 2 if disjoint else min(len(country_sets), 1), first_use_by_network
