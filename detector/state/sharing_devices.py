"""The device graph of key_sharing from per-subject edges instead of raw requests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.detectors.device_graph import MAX_SUBJECT_EDGES, components_at_joins
from detector.detectors.sharing import KeySharingDetector
from detector.state.chunk import Chunk
from detector.state.table import SubjectStates

# The hash that stands for an unknown network, user agent or country (see ``detector.state.sharing``).
UNKNOWN = np.uint64(0)


class DeviceEdges:
    """Each subject's (network, user agent) edges, enough to rebuild the device graph at every join.

    Per edge: the network and user agent hashes, the edge's first request
    time, the country of its latest request and the times of its latest
    ``min_component_requests`` requests. An edge is active while its
    ``min_component_requests``-th latest request is inside the window, so
    earlier requests never change the graph. A node's first use is the
    earliest first request among the edges that hold it.

    Each chunk turns the carried edges into that many requests each, ahead of
    the chunk's own, and runs the batch code (``components_at_joins``) on them.
    Edges whose latest request is older than the longer of ``device_window``
    and ``established_window`` before a subject's first new request cannot
    take part, so they are left out of that run but kept for the first uses
    and the edge count.

    A subject with more than ``MAX_SUBJECT_EDGES`` distinct edges is left out
    of the graph, as in the batch detector. The batch counts them over its
    whole input, so when the count passes the limit the subject's earlier
    device findings are ones the batch would not have made: ``update``
    reports it as ``edge_flood``.
    """

    def __init__(self, detector: KeySharingDetector, *, retention: float | None = None) -> None:
        self.detector = detector
        self.retention = retention
        self.requests = detector.min_component_requests
        # The edge's latest request times, oldest first, NaN where it has fewer requests.
        self.recent = [f"recent_{index}" for index in range(self.requests)]
        self.edges = SubjectStates(
            values={},
            rows={
                "net": "uint64",
                "ua": "uint64",
                "first_ts": "float64",
                "country": "uint64",
                **{name: "float64" for name in self.recent},
            },
        )

    def update(
        self, chunk: Chunk, net: np.ndarray, ua: np.ndarray, country: np.ndarray
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Return the device finding rows of ``chunk`` and the subjects whose edges passed the limit in it.

        ``net``, ``ua`` and ``country`` are the hashes of the chunk's prepared events.
        """
        detector = self.detector
        net = np.where(detector.from_hosting(chunk.prepared), UNKNOWN, net)
        carried = pd.DataFrame(self.edges.take(chunk.keys).rows)
        requests = self._requests(chunk, carried, net, ua, country)

        edge = requests.groupby(["owner", "net", "ua"], sort=False).ngroup().to_numpy()
        edge_owner = np.zeros(edge.max() + 1 if len(edge) else 0, np.int64)
        edge_owner[edge] = requests["owner"].to_numpy()
        edge_count = np.bincount(edge_owner, minlength=len(chunk.keys))
        carried_count = np.bincount(carried["owner"].to_numpy(), minlength=len(chunk.keys))
        flooded = edge_count > MAX_SUBJECT_EDGES
        passed = flooded & (carried_count <= MAX_SUBJECT_EDGES) & (carried_count > 0)

        growth = self._growth(requests, edge, flooded, chunk)
        self._carry_on(chunk, requests, edge)
        subjects = chunk.prepared.subjects
        report = pd.DataFrame(
            {
                "subject_type": subjects["subject_type"].to_numpy()[passed],
                "subject": subjects["subject"].to_numpy()[passed],
                "why": "edge_flood",
            }
        )
        return detector.device_rows(growth), report

    def _requests(
        self, chunk: Chunk, carried: pd.DataFrame, net: np.ndarray, ua: np.ndarray, country: np.ndarray
    ) -> pd.DataFrame:
        """Return the carried edges' latest requests and the chunk's requests with known network and user agent.

        Rows are sorted by owner, carried before new, carried by time and new
        in event order. ``first_ts`` is the edge's carried first request time,
        or the request's own time for a new one.
        """
        events = chunk.prepared.events
        known = (net != UNKNOWN) & (ua != UNKNOWN)
        new = pd.DataFrame(
            {
                "owner": events["subject"].to_numpy()[known],
                "net": net[known],
                "ua": ua[known],
                "country": country[known],
                "ts": events["ts"].to_numpy()[known],
                "first_ts": events["ts"].to_numpy()[known],
                "is_new": True,
                "order": np.arange(int(known.sum()), dtype=np.float64),
            }
        )
        times = carried[self.recent].to_numpy()
        slot = np.tile(np.arange(self.requests), len(carried))
        edge = np.repeat(np.arange(len(carried)), self.requests)
        present = ~np.isnan(times.ravel())
        edge, slot = edge[present], slot[present]
        old = pd.DataFrame(
            {
                "owner": carried["owner"].to_numpy()[edge],
                "net": carried["net"].to_numpy()[edge],
                "ua": carried["ua"].to_numpy()[edge],
                "country": carried["country"].to_numpy()[edge],
                "ts": times.ravel()[present],
                "first_ts": carried["first_ts"].to_numpy()[edge],
                "is_new": False,
                "order": slot.astype(np.float64),
            }
        )
        both = pd.concat([old, new], ignore_index=True)
        # Carried rows by time, ties by slot; new rows in event order.
        within = np.where(both["is_new"].to_numpy(), both["order"].to_numpy(), both["ts"].to_numpy())
        order = np.lexsort((both["order"].to_numpy(), within, both["is_new"].to_numpy(), both["owner"].to_numpy()))
        return both.take(order).reset_index(drop=True)

    def _growth(self, requests: pd.DataFrame, edge: np.ndarray, flooded: np.ndarray, chunk: Chunk) -> pd.DataFrame:
        """Run the batch device graph over the requests that can take part, returning its rows at new joins."""
        detector = self.detector
        owner = requests["owner"].to_numpy()
        ts = requests["ts"].to_numpy()
        is_new = requests["is_new"].to_numpy()

        # A node's first use is the earliest first request of its edges, carried or new.
        first_ts = requests["first_ts"].to_numpy()
        net_first = pd.Series(first_ts).groupby([owner, requests["net"].to_numpy()]).transform("min").to_numpy()
        ua_first = pd.Series(first_ts).groupby([owner, requests["ua"].to_numpy()]).transform("min").to_numpy()

        latest = np.full(edge.max() + 1 if len(edge) else 0, -np.inf)
        np.maximum.at(latest, edge, ts)
        lookback = max(detector.device_window, detector.established_window)
        first_new_ts = chunk.first_ms / 1000.0
        taking_part = ~flooded[owner] & (latest[edge] > first_new_ts[owner] - lookback)

        country = requests["country"].to_numpy()
        country_codes = pd.factorize(country)[0].astype(np.int64)
        country_codes[country == UNKNOWN] = -1
        graph = pd.DataFrame(
            {
                "subject": owner,
                "ts": ts,
                "net": pd.factorize(requests["net"].to_numpy())[0].astype(np.int64),
                "ua": pd.factorize(requests["ua"].to_numpy())[0].astype(np.int64),
                "country": country_codes,
            }
        )[taking_part]
        return components_at_joins(
            graph.reset_index(drop=True),
            np.minimum(net_first, ua_first)[taking_part],
            detector.device_window,
            self.requests,
            detector.country_window,
            detector.new_device_age,
            detector.established_age,
            detector.established_window,
            reported=is_new[taking_part],
        )

    def _carry_on(self, chunk: Chunk, requests: pd.DataFrame, edge: np.ndarray) -> None:
        """Put each edge back with its first request, latest country and latest request times."""
        edges = edge.max() + 1 if len(edge) else 0
        from_last = requests.groupby(edge, sort=False).cumcount(ascending=False).to_numpy()
        first = np.full(edges, np.inf)
        np.minimum.at(first, edge, requests["first_ts"].to_numpy())
        recent = np.full((edges, self.requests), np.nan)
        kept = from_last < self.requests
        recent[edge[kept], self.requests - 1 - from_last[kept]] = requests["ts"].to_numpy()[kept]

        latest = from_last == 0
        table = pd.DataFrame(
            {
                "owner": requests["owner"].to_numpy()[latest],
                "net": requests["net"].to_numpy()[latest],
                "ua": requests["ua"].to_numpy()[latest],
                "first_ts": first[edge[latest]],
                "country": requests["country"].to_numpy()[latest],
                **{name: recent[edge[latest], index] for index, name in enumerate(self.recent)},
            }
        )
        if self.retention is not None:
            cutoff = chunk.last_ms[table["owner"].to_numpy()] / 1000.0 - self.retention
            table = table[table[self.recent[-1]].to_numpy() > cutoff]
        self.edges.put(chunk.keys, pd.DataFrame(index=range(len(chunk.keys))), table.sort_values("owner", kind="stable"))
