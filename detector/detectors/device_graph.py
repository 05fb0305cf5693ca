"""Devices in separate places: connected components of a key's network–user-agent graph over a rolling window."""

from __future__ import annotations

import bisect
from collections import defaultdict

import numpy as np
import pandas as pd

# Distinct (network, user agent) edges above which a subject is left out of the graph.
MAX_SUBJECT_EDGES = 1000
GROWTH_COLUMNS = ("subject", "ts", "components", "country_components", "new_device")


def rolling_components(
    events: pd.DataFrame,
    window: float,
    requests: int,
    country_window: float,
    new_device_age: float = 0.0,
    established_age: float = np.inf,
    established_window: float = 0.0,
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
    than ``new_device_age`` seconds ago, while an edge first used at least
    ``established_age`` seconds ago is still in use: it has ``requests``
    requests in the trailing ``window``, or in the trailing
    ``established_window`` when that is longer. Such an edge is older than
    every edge of the joining component, so it is another device, even when
    it was idle for the last ``window`` and is not in the graph. A device
    the subject already had, on a new network or with a new user agent,
    shares a node with its old edges and is not new.

    Subjects with more than ``MAX_SUBJECT_EDGES`` distinct edges in the input
    are left out: each join looks at all of a subject's edges, so a key
    rotating through thousands of proxy networks would take minutes. Such a
    key is left to the other sharing tests and detectors.
    """
    known = (events["net"].to_numpy() >= 0) & (events["ua"].to_numpy() >= 0)
    known_events = _without_edge_floods(events[known])
    first_use = np.minimum(
        known_events.groupby(["subject", "net"], sort=False)["ts"].transform("min").to_numpy(),
        known_events.groupby(["subject", "ua"], sort=False)["ts"].transform("min").to_numpy(),
    )
    edges = _EdgeHistory.build(known_events, first_use)
    ts = known_events["ts"].to_numpy()
    subject = known_events["subject"].to_numpy()

    lookback = max(window, established_window)
    rows = []
    for position in _joins(edges, ts, window, requests).tolist():
        now = float(ts[position])
        active, countries, first_uses, recent, oldest = edges.state_at(
            position, now, window, requests, country_window, lookback
        )
        components, country_components, first_use_by_network = _components(active, countries, first_uses)
        if len(recent) < len(active):
            # recent is a subset of active, so the same length means the same edges.
            _, country_components, _ = _components(recent, countries, first_uses)
        joined = first_use_by_network[edges.edge_at(position)[0]]
        # An edge first used before every edge of the joining component is another device.
        new_device = joined > now - new_device_age and oldest < joined and oldest <= now - established_age
        rows.append((int(subject[position]), now, components, country_components, int(new_device)))

    frame = pd.DataFrame(rows, columns=list(GROWTH_COLUMNS))
    return frame.astype(
        {"subject": np.int64, "ts": np.float64, "components": np.int64, "country_components": np.int64,
         "new_device": np.int64}
    )


def _without_edge_floods(events: pd.DataFrame) -> pd.DataFrame:
    """Return ``events`` without the subjects that have more than ``MAX_SUBJECT_EDGES`` distinct edges."""
    edges = events[["subject", "net", "ua"]].drop_duplicates()
    per_subject = edges["subject"].value_counts()
    flooded = per_subject.index[per_subject > MAX_SUBJECT_EDGES]
    if not len(flooded):
        return events
    return events[~events["subject"].isin(flooded).to_numpy()]


class _EdgeHistory:
    """The requests of each (subject, network, user agent) edge, for looking up a subject's edges at a position.

    Positions are row numbers in the events sorted by subject and time. An
    edge's requests up to a position are those of its rows at or before it.
    """

    def __init__(self, codes: np.ndarray, order: np.ndarray, group_starts: np.ndarray, columns: dict) -> None:
        self.codes = codes
        # Rows grouped by edge, each group in time order, and where each group starts.
        self.order = order
        self.group_starts = group_starts
        cuts = group_starts[1:]
        self._positions = [group.tolist() for group in np.split(order, cuts)]
        self._times = [group.tolist() for group in np.split(columns["ts"][order], cuts)]
        self._countries = [group.tolist() for group in np.split(columns["country"][order], cuts)]
        first = order[group_starts]
        self._keys = list(zip(columns["net"][first].tolist(), columns["ua"][first].tolist()))
        self._first_uses = columns["first_use"][first].tolist()
        # The edge groups of each subject: subjects come in order, and so do their groups.
        subjects = columns["subject"][first]
        bounds = np.flatnonzero(np.r_[True, subjects[1:] != subjects[:-1], True]) if len(subjects) else []
        self._subject_groups = {int(subjects[low]): range(low, high) for low, high in zip(bounds[:-1], bounds[1:])}
        self._subject = columns["subject"]

    @classmethod
    def build(cls, events: pd.DataFrame, first_use: np.ndarray) -> "_EdgeHistory":
        columns = {name: events[name].to_numpy() for name in ("subject", "ts", "net", "ua", "country")}
        columns["first_use"] = first_use
        codes = events.groupby(["subject", "net", "ua"], sort=True).ngroup().to_numpy()
        order = np.lexsort((np.arange(len(codes)), codes))
        sorted_codes = codes[order]
        group_starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(codes) else codes[:0]
        return cls(codes, order, group_starts, columns)

    def edge_at(self, position: int) -> tuple[int, int]:
        return self._keys[self.codes[position]]

    def state_at(self, position: int, now: float, window: float, requests: int, country_window: float, lookback: float):
        """Return the subject's active edges at ``position``, their countries and first uses, the recent ones, and
        the oldest first use of an edge active over the trailing ``lookback`` (at least ``window``)."""
        active, recent = [], []
        oldest = np.inf
        countries: dict[tuple[int, int], int] = {}
        first_uses: dict[tuple[int, int], float] = {}
        for group in self._subject_groups[int(self._subject[position])]:
            seen = bisect.bisect_right(self._positions[group], position)
            if seen < requests:
                continue
            nth_latest = self._times[group][seen - requests]
            if nth_latest <= now - lookback:
                continue
            oldest = min(oldest, self._first_uses[group])
            if nth_latest <= now - window:
                continue
            key = self._keys[group]
            active.append(key)
            countries[key] = self._countries[group][seen - 1]
            first_uses[key] = self._first_uses[group]
            if nth_latest > now - country_window:
                recent.append(key)
        return active, countries, first_uses, recent, oldest


def _joins(edges: _EdgeHistory, ts: np.ndarray, window: float, requests: int) -> np.ndarray:
    """Return, in order, the positions at which an edge reaches ``requests`` requests in the trailing ``window``.

    The edge is active after a request when its ``requests``-th latest
    request is inside the window, and was active before it when the one
    before that was. A join is a request that makes an inactive edge active.
    """
    order, starts = edges.order, edges.group_starts
    if not len(order):
        return order
    times = ts[order]
    group_index = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(order))))
    rank = np.arange(len(order)) - starts[group_index]
    active_now = _nth_latest_inside(times, rank, requests - 1, window)
    was_active = _nth_latest_inside(times, rank, requests, window)
    return np.sort(order[active_now & ~was_active])


def _nth_latest_inside(times: np.ndarray, rank: np.ndarray, back: int, window: float) -> np.ndarray:
    """Return whether the request ``back`` places earlier in the same edge lies inside the window of each request."""
    has_earlier = rank >= back
    earlier = np.where(has_earlier, np.arange(len(times)) - back, 0)
    return has_earlier & (times[earlier] > times - window)


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
