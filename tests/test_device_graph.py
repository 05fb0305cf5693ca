"""The device graph's join search against a plain per-request loop, on random request sequences."""

from __future__ import annotations

from collections import defaultdict
from unittest import mock

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.detectors import device_graph
from detector.detectors.device_graph import GROWTH_COLUMNS, rolling_components


def _reference(
    events: pd.DataFrame, window, requests, country_window, new_device_age, established_age, established_window=0.0
):
    """Walk the requests one by one, keeping every edge's request times: the definition, without shortcuts."""
    known = events[(events["net"] >= 0) & (events["ua"] >= 0)]
    first_use = np.minimum(
        known.groupby(["subject", "net"])["ts"].transform("min").to_numpy(),
        known.groupby(["subject", "ua"])["ts"].transform("min").to_numpy(),
    )
    rows, history, countries, first_uses, current = [], defaultdict(list), {}, {}, None
    columns = [known[name].tolist() for name in ("subject", "ts", "net", "ua", "country")]
    for subject, ts, net, ua, country, first in zip(*columns, first_use.tolist()):
        if subject != current:
            current = subject
            history.clear()
            countries.clear()
            first_uses.clear()
        times = history[(net, ua)]
        was_active = len(times) >= requests and times[-requests] > ts - window
        times.append(ts)
        countries[(net, ua)] = country
        first_uses[(net, ua)] = first
        if was_active or len(times) < requests or times[-requests] <= ts - window:
            continue
        active = [key for key, seen in history.items() if len(seen) >= requests and seen[-requests] > ts - window]
        recent = [key for key in active if history[key][-requests] > ts - country_window]
        components, _, by_network = _reference_components(active, countries, first_uses)
        _, country_components, _ = _reference_components(recent, countries, first_uses)
        joined = by_network[net]
        lookback = max(window, established_window)
        in_use = [
            first_uses[key] for key, seen in history.items() if len(seen) >= requests and seen[-requests] > ts - lookback
        ]
        new_device = joined > ts - new_device_age and any(
            other <= ts - established_age for other in in_use if other < joined
        )
        rows.append((subject, ts, components, country_components, int(new_device)))
    return pd.DataFrame(rows, columns=list(GROWTH_COLUMNS)).astype(
        {"subject": np.int64, "ts": np.float64, "components": np.int64, "country_components": np.int64,
         "new_device": np.int64}
    )


def _reference_components(
    edges: list[tuple[int, int]], countries: dict[tuple[int, int], int], first_uses: dict[tuple[int, int], float]
) -> tuple[int, int, dict[int, float]]:
    """Return the number of components of ``edges``, 2 if two of them have no country in common (else 0 or 1),
    and by network the oldest first use of any edge in the network's component.

    The union-find of ``rolling_components`` before it was tuned for speed, kept as the oracle's definition.
    """
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


requests_strategy = st.lists(
    st.tuples(
        st.integers(0, 2),  # subject
        st.integers(0, 400),  # minutes apart from the previous request
        st.integers(-1, 3),  # network code, -1 unknown
        st.integers(-1, 2),  # user agent code
        st.integers(-1, 2),  # country code
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(requests_strategy, st.integers(1, 3), st.sampled_from([3600.0, 6 * 3600.0]), st.sampled_from([0.0, 12 * 3600.0]))
def test_matches_request_by_request_loop(drawn, requests, country_window, established_window):
    subjects, gaps, nets, agents, countries = map(np.array, zip(*drawn))
    events = pd.DataFrame({
        "subject": subjects, "ts": 1.8e9 + np.cumsum(gaps) * 60.0, "net": nets, "ua": agents, "country": countries,
    }).sort_values(["subject", "ts"], kind="stable").reset_index(drop=True)
    options = (6 * 3600.0, requests, country_window, 3600.0, 4 * 3600.0, established_window)

    expected = _reference(events, *options)
    found = rolling_components(events, *options)

    pd.testing.assert_frame_equal(found.reset_index(drop=True), expected.reset_index(drop=True))


@settings(max_examples=100, deadline=None)
@given(requests_strategy, st.integers(1, 3))
def test_joins_in_small_chunks_match_loop(drawn, chunk):
    subjects, gaps, nets, agents, countries = map(np.array, zip(*drawn))
    events = pd.DataFrame({
        "subject": subjects, "ts": 1.8e9 + np.cumsum(gaps) * 60.0, "net": nets, "ua": agents, "country": countries,
    }).sort_values(["subject", "ts"], kind="stable").reset_index(drop=True)
    options = (6 * 3600.0, 1, 3600.0, 3600.0, 4 * 3600.0, 12 * 3600.0)

    expected = _reference(events, *options)
    with mock.patch.object(device_graph, "_JOINS_PER_CHUNK", chunk):
        found = rolling_components(events, *options)

    pd.testing.assert_frame_equal(found.reset_index(drop=True), expected.reset_index(drop=True))


def test_no_known_requests_gives_no_rows():
    events = pd.DataFrame({"subject": [0, 0], "ts": [1.0, 2.0], "net": [-1, -1], "ua": [0, 1], "country": [0, 0]})

    assert rolling_components(events, 3600.0, 1, 3600.0).empty


def test_subject_with_thousands_of_edges_left_out():
    # A key rotating through 1,500 proxy networks, two requests each, and an ordinary key.
    count = 1500
    flood = pd.DataFrame({
        "subject": 0, "ts": 1.8e9 + np.arange(2 * count) * 5.0, "net": np.repeat(np.arange(count), 2),
        "ua": 0, "country": 0,
    })
    person = pd.DataFrame({"subject": 1, "ts": 1.8e9 + np.arange(4) * 60.0, "net": [0, 0, 1, 1], "ua": [0, 0, 1, 1],
                           "country": [0, 0, 1, 1]})
    events = pd.concat([flood, person], ignore_index=True)

    rows = rolling_components(events, 86400.0, 2, 86400.0)

    assert set(rows["subject"]) == {1}
    assert rows["country_components"].max() == 2
