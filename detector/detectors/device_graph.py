"""Devices in separate places: connected components of a key's network–user-agent graph over a rolling window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Distinct (network, user agent) edges above which a subject is left out of the graph.
MAX_SUBJECT_EDGES = 1000
GROWTH_COLUMNS = ("subject", "ts", "components", "country_components", "new_device")
# Joins looked up at once: each pairs with every edge of its subject, so this bounds the memory of a lookup.
_JOINS_PER_CHUNK = 4096


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
    joins = _joins(edges, ts, window, requests)
    for chunk in range(0, len(joins), _JOINS_PER_CHUNK):
        positions = joins[chunk : chunk + _JOINS_PER_CHUNK]
        states = edges.states_at(positions, ts[positions], window, requests, country_window, lookback)
        rows.extend(_growth_rows(states, subject[positions], ts[positions], new_device_age, established_age))

    frame = pd.DataFrame(rows, columns=list(GROWTH_COLUMNS))
    return frame.astype(
        {"subject": np.int64, "ts": np.float64, "components": np.int64, "country_components": np.int64,
         "new_device": np.int64}
    )


def _growth_rows(states: "_EdgeStates", subjects: np.ndarray, times: np.ndarray, new_device_age: float,
                 established_age: float) -> list[tuple]:
    """Return a ``GROWTH_COLUMNS`` row for each join of ``states``."""
    rows = []
    bounds = states.bounds.tolist()
    nets, agents, countries = states.net.tolist(), states.ua.tolist(), states.country.tolist()
    first_uses, recent = states.first_use.tolist(), states.recent.tolist()
    joined_nets, oldest_in_use = states.joined_net.tolist(), states.oldest.tolist()
    for join, (now, subject) in enumerate(zip(times.tolist(), subjects.tolist())):
        low, high = bounds[join], bounds[join + 1]
        active = _Graph(nets[low:high], agents[low:high], countries[low:high], first_uses[low:high])
        components, country_components = active.components(), active.country_components()
        if not all(recent[low:high]):
            country_components = active.subgraph(recent[low:high]).country_components()
        joined = active.oldest_first_use(joined_nets[join])
        oldest = oldest_in_use[join]
        # An edge first used before every edge of the joining component is another device.
        new_device = joined > now - new_device_age and oldest < joined and oldest <= now - established_age
        rows.append((subject, now, components, country_components, int(new_device)))
    return rows


def _without_edge_floods(events: pd.DataFrame) -> pd.DataFrame:
    """Return ``events`` without the subjects that have more than ``MAX_SUBJECT_EDGES`` distinct edges."""
    edges = events[["subject", "net", "ua"]].drop_duplicates()
    per_subject = edges["subject"].value_counts()
    flooded = per_subject.index[per_subject > MAX_SUBJECT_EDGES]
    if not len(flooded):
        return events
    return events[~events["subject"].isin(flooded).to_numpy()]


@dataclass(frozen=True, slots=True)
class _EdgeStates:
    """A subject's edges at each of several joins, as flat arrays with the edges of join ``i`` in
    ``bounds[i]:bounds[i + 1]``.

    The edges listed are the active ones (``requests`` requests in the
    trailing window). ``country`` is the country of each edge's latest
    request, and ``recent`` marks the edges also active over the country
    window. ``joined_net`` is the network of the joining edge, and ``oldest``
    the oldest first use of an edge active over the lookback (inf if none).
    """

    bounds: np.ndarray
    net: np.ndarray
    ua: np.ndarray
    country: np.ndarray
    first_use: np.ndarray
    recent: np.ndarray
    joined_net: np.ndarray
    oldest: np.ndarray


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
        # (edge, position) packed into one increasing key, so one search finds an edge's rows up to a position.
        self._rows = len(codes)
        self._edge_positions = codes[order] * self._rows + order
        self._times = columns["ts"][order]
        self._countries = columns["country"][order]
        first = order[group_starts]
        self._net = columns["net"][first]
        self._ua = columns["ua"][first]
        self._first_use = columns["first_use"][first]
        self._group_subjects = columns["subject"][first]
        self._subject = columns["subject"]
        self._net_at = columns["net"]

    @classmethod
    def build(cls, events: pd.DataFrame, first_use: np.ndarray) -> "_EdgeHistory":
        columns = {name: events[name].to_numpy() for name in ("subject", "ts", "net", "ua", "country")}
        columns["first_use"] = first_use
        codes = events.groupby(["subject", "net", "ua"], sort=True).ngroup().to_numpy().astype(np.int64)
        order = np.lexsort((np.arange(len(codes)), codes))
        sorted_codes = codes[order]
        group_starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(codes) else codes[:0]
        return cls(codes, order, group_starts, columns)

    def states_at(
        self, positions: np.ndarray, now: np.ndarray, window: float, requests: int, country_window: float,
        lookback: float,
    ) -> _EdgeStates:
        """Return the subject's edges at each of ``positions`` (see ``_EdgeStates``); ``now`` is each one's time."""
        join, group = self._subject_groups(positions)
        seen = np.searchsorted(self._edge_positions, group * self._rows + positions[join], side="right")
        seen -= self.group_starts[group]
        counted = seen >= requests
        join, group, seen = join[counted], group[counted], seen[counted]
        nth_latest = self._times[self.group_starts[group] + seen - requests]

        in_use = nth_latest > now[join] - lookback
        oldest = np.full(len(positions), np.inf)
        np.minimum.at(oldest, join[in_use], self._first_use[group[in_use]])

        active = in_use & (nth_latest > now[join] - window)
        join, group, seen, nth_latest = join[active], group[active], seen[active], nth_latest[active]
        return _EdgeStates(
            bounds=np.searchsorted(join, np.arange(len(positions) + 1)),
            net=self._net[group],
            ua=self._ua[group],
            country=self._countries[self.group_starts[group] + seen - 1],
            first_use=self._first_use[group],
            recent=nth_latest > now[join] - country_window,
            joined_net=self._net_at[positions],
            oldest=oldest,
        )

    def _subject_groups(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (join index, edge group) pairs: every edge group of each position's subject, joins in order."""
        subjects = self._subject[positions]
        low = np.searchsorted(self._group_subjects, subjects, side="left")
        high = np.searchsorted(self._group_subjects, subjects, side="right")
        counts = high - low
        join = np.repeat(np.arange(len(positions)), counts)
        offsets = np.arange(len(join)) - np.repeat(np.cumsum(counts) - counts, counts)
        return join, low[join] + offsets


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


class _Graph:
    """The network–user-agent graph of a subject's edges, with each edge's country and first use.

    Nodes are integers: network ``n`` is ``n`` and user agent ``u`` is ``-1 - u``.
    """

    def __init__(self, nets: list[int], agents: list[int], countries: list[int], first_uses: list[float]) -> None:
        self._edges = (nets, agents, countries, first_uses)
        parent: dict[int, int] = {}
        for net, ua in zip(nets, agents):
            left, right = self._root(parent, net), self._root(parent, -1 - ua)
            if left != right:
                parent[left] = right
        self._parent = parent
        self._roots = [self._root(parent, net) for net in nets]

    @staticmethod
    def _root(parent: dict[int, int], node: int) -> int:
        """Return the root of ``node``, adding it as its own root when new.

        Each node passed on the way is pointed at its grandparent (path splitting).
        """
        up = parent.setdefault(node, node)
        while up != node:
            parent[node] = parent[up]
            node, up = up, parent[up]
        return node

    def subgraph(self, kept: list[bool]) -> "_Graph":
        columns = ([value for value, keep in zip(column, kept) if keep] for column in self._edges)
        return _Graph(*columns)

    def components(self) -> int:
        return sum(1 for node, up in self._parent.items() if node == up)

    def country_components(self) -> int:
        """Return 2 if two components have no country in common, else 1 if one has a known country, else 0."""
        places: dict[int, set[int]] = {}
        for root, country in zip(self._roots, self._edges[2]):
            if country >= 0:
                places.setdefault(root, set()).add(country)
        country_sets = list(places.values())
        disjoint = any(
            not (first & second) for index, first in enumerate(country_sets) for second in country_sets[index + 1 :]
        )
        return 2 if disjoint else min(len(country_sets), 1)

    def oldest_first_use(self, net: int) -> float:
        """Return the oldest first use of any edge in the component of network ``net``."""
        root = self._root(self._parent, net)
        return min(first for edge_root, first in zip(self._roots, self._edges[3]) if edge_root == root)
