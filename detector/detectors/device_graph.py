"""Devices in separate places: connected components of a key's network–user-agent graph over a rolling window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Distinct (network, user agent) edges above which a subject is left out of the graph.
MAX_SUBJECT_EDGES = 1000
GROWTH_COLUMNS = ("subject", "ts", "components", "country_components", "new_device")
# Joins looked up at once. Each pairs with every edge of its subject, so a lookup contains at most
# _JOINS_PER_CHUNK * MAX_SUBJECT_EDGES pairs: on subjects with 1,000 edges each, peak memory was
# 47 MB above that of the per-join loop this replaced.
_JOINS_PER_CHUNK = 1024
_GROWTH_DTYPES = {name: np.float64 if name == "ts" else np.int64 for name in GROWTH_COLUMNS}
_EMPTY_GROWTH = pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in _GROWTH_DTYPES.items()})


def rolling_components(
    events: pd.DataFrame,
    window: float,
    requests: int,
    country_window: float,
    new_device_age: float = 0.0,
    established_age: float = np.inf,
    established_window: float = 0.0,
    *,
    since: float | None = None,
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

    With ``since`` (epoch seconds), only the moments from ``since`` on are
    returned. Each row reads the events up to its moment, so those rows are
    the same as without ``since``, except that the subjects left out are
    still those with too many edges in the whole input.
    """
    known = (events["net"].to_numpy() >= 0) & (events["ua"].to_numpy() >= 0)
    known_events = _without_edge_floods(events[known])
    first_use = np.minimum(
        known_events.groupby(["subject", "net"], sort=False)["ts"].transform("min").to_numpy(),
        known_events.groupby(["subject", "ua"], sort=False)["ts"].transform("min").to_numpy(),
    )
    reported = None if since is None else known_events["ts"].to_numpy() >= since
    return components_at_joins(
        known_events, first_use, window, requests, country_window, new_device_age, established_age,
        established_window, reported=reported,
    )


def components_at_joins(
    events: pd.DataFrame,
    first_use: np.ndarray,
    window: float,
    requests: int,
    country_window: float,
    new_device_age: float,
    established_age: float,
    established_window: float,
    *,
    reported: np.ndarray | None = None,
) -> pd.DataFrame:
    """Return the rows of ``rolling_components`` for ``events`` with known network and user agent.

    ``first_use`` is each event's edge first use: the earlier of the
    subject's first uses of its network and of its user agent. With
    ``reported``, only the joins at the events it marks are returned.
    """
    edges = _EdgeHistory.build(events, first_use)
    ts = events["ts"].to_numpy()
    subject = events["subject"].to_numpy()

    lookback = max(window, established_window)
    chunks = []
    joins = _joins(edges, ts, window, requests)
    if reported is not None:
        joins = joins[reported[joins]]
    for chunk in range(0, len(joins), _JOINS_PER_CHUNK):
        positions = joins[chunk : chunk + _JOINS_PER_CHUNK]
        states = edges.states_at(positions, ts[positions], window, requests, country_window, lookback)
        chunks.append(_growth_rows(states, subject[positions], ts[positions], new_device_age, established_age))

    if not chunks:
        return _EMPTY_GROWTH.copy()
    # Joined as arrays: a frame concat and astype cost milliseconds, which the per-chunk state updates pay each time.
    return pd.DataFrame(
        {name: np.concatenate([chunk[name] for chunk in chunks]).astype(dtype) for name, dtype in _GROWTH_DTYPES.items()}
    )


def _growth_rows(states: "_EdgeStates", subjects: np.ndarray, times: np.ndarray, new_device_age: float,
                 established_age: float) -> dict[str, np.ndarray]:
    """Return the ``GROWTH_COLUMNS`` of each join of ``states``, as arrays."""
    joins = len(subjects)
    join = np.repeat(np.arange(joins), np.diff(states.bounds))
    graph = _JoinGraphs(join, states.net, states.ua)

    recent = states.recent
    country_graph = graph if recent.all() else _JoinGraphs(join[recent], states.net[recent], states.ua[recent])
    country_components = country_graph.country_components(states.country[recent], joins)

    joined = graph.oldest_first_use(states.first_use, states.joined_net)
    oldest = states.oldest
    # An edge first used before every edge of the joining component is another device.
    new_device = (joined > times - new_device_age) & (oldest < joined) & (oldest <= times - established_age)

    return {
        "subject": subjects.astype(np.int64),
        "ts": times.astype(np.float64),
        "components": graph.components(joins),
        "country_components": country_components,
        "new_device": new_device.astype(np.int64),
    }


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
        codes = _sorted_group_codes(columns["subject"], columns["net"], columns["ua"])
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


def _sorted_group_codes(*keys: np.ndarray) -> np.ndarray:
    """Number the distinct rows of integer ``keys`` in sorted order, as ``groupby(keys, sort=True).ngroup()`` does."""
    if not len(keys[0]):
        return np.empty(0, np.int64)
    order = np.lexsort(keys[::-1])
    changed = np.zeros(len(order), np.int64)
    for key in keys:
        ordered = key[order]
        changed[1:] |= ordered[1:] != ordered[:-1]
    codes = np.empty(len(order), np.int64)
    codes[order] = np.cumsum(changed)
    return codes


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


class _JoinGraphs:
    """The network–user-agent graphs of many joins at once, with each edge labelled by its component.

    Each join's graph has its own nodes, numbered in (join, node) order. A
    component's label is its smallest node number, found by propagating
    minimum labels along the edges and then jumping to the label's label,
    until nothing changes.
    """

    def __init__(self, join: np.ndarray, nets: np.ndarray, agents: np.ndarray) -> None:
        # Networks take the even and user agents the odd node keys within a join.
        keys = np.concatenate([(join << 32) | (nets << 1), (join << 32) | (agents << 1) | 1])
        self._nodes, inverse = np.unique(keys, return_inverse=True)
        left, right = inverse[: len(nets)], inverse[len(nets) :]
        label = np.arange(len(self._nodes))
        while True:
            edge_label = np.minimum(label[left], label[right])
            lowered = label.copy()
            np.minimum.at(lowered, left, edge_label)
            np.minimum.at(lowered, right, edge_label)
            lowered = lowered[lowered]
            if np.array_equal(lowered, label):
                break
            label = lowered
        self._label = label
        self.edge_labels = label[left]

    def components(self, joins: int) -> np.ndarray:
        """Count the components of each join's graph."""
        roots = self._nodes[self._label == np.arange(len(self._label))]
        return np.bincount(roots >> 32, minlength=joins)

    def country_components(self, countries: np.ndarray, joins: int) -> np.ndarray:
        """Return per join 2 if two components have no country in common, else 1 if one has a known country, else 0."""
        known = countries >= 0
        # (component, country) pairs, sorted by component, and components sorted by join.
        places = np.unique(np.stack([self.edge_labels[known], countries[known]]), axis=1)
        labels, starts = np.unique(places[0], return_index=True)
        label_joins = self._nodes[labels] >> 32
        with_country = np.bincount(label_joins, minlength=joins)
        result = np.minimum(with_country, 1)
        ends = np.append(starts[1:], places.shape[1])
        for join in np.flatnonzero(with_country >= 2).tolist():
            own = range(np.searchsorted(label_joins, join), np.searchsorted(label_joins, join, side="right"))
            country_sets = [set(places[1, starts[index] : ends[index]].tolist()) for index in own]
            result[join] = 2 if _any_disjoint(country_sets) else 1
        return result

    def oldest_first_use(self, first_uses: np.ndarray, joined_nets: np.ndarray) -> np.ndarray:
        """Return per join the oldest first use of any edge in the component of the network ``joined_nets`` names."""
        oldest = np.full(len(self._nodes), np.inf)
        np.minimum.at(oldest, self.edge_labels, first_uses)
        node = np.searchsorted(self._nodes, (np.arange(len(joined_nets)) << 32) | (joined_nets << 1))
        return oldest[self._label[node]]


def _any_disjoint(sets: list[set[int]]) -> bool:
    return any(not (first & second) for index, first in enumerate(sets) for second in sets[index + 1 :])
