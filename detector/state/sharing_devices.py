"""The device graph of key_sharing from per-subject edges instead of raw requests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.detectors.device_graph import GROWTH_COLUMNS, MAX_SUBJECT_EDGES, components_at_joins
from detector.detectors.sharing import KeySharingDetector
from detector.state.chunk import NO_SUBJECTS, Chunk
from detector.state.groups import group_codes, group_min, position_in_group
from detector.state.table import Columns, SubjectStates

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
        # The device rows of a chunk without joins, as the batch code builds them. Do not modify them.
        self._no_rows = detector.device_rows(
            pd.DataFrame({name: np.empty(0, np.float64 if name == "ts" else np.int64) for name in GROWTH_COLUMNS})
        )

    def update(
        self, chunk: Chunk, net: np.ndarray, ua: np.ndarray, country: np.ndarray
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Return the device finding rows of ``chunk`` and the subjects whose edges passed the limit in it.

        ``net``, ``ua`` and ``country`` are the hashes of the chunk's prepared events.
        """
        detector = self.detector
        net = np.where(detector.from_hosting(chunk.prepared), UNKNOWN, net)
        carried = self.edges.take(chunk.keys).rows
        requests = self._requests(chunk, carried, net, ua, country)

        edge = group_codes(requests["owner"], requests["net"], requests["ua"])
        edge_owner = np.zeros(edge.max() + 1 if len(edge) else 0, np.int64)
        edge_owner[edge] = requests["owner"]
        edge_count = np.bincount(edge_owner, minlength=len(chunk.keys))
        carried_count = np.bincount(carried["owner"], minlength=len(chunk.keys))
        flooded = edge_count > MAX_SUBJECT_EDGES
        passed = flooded & (carried_count <= MAX_SUBJECT_EDGES) & (carried_count > 0)

        rows = self._device_rows(requests, edge, flooded, chunk)
        self._carry_on(chunk, requests, edge)
        if not passed.any():
            return rows, NO_SUBJECTS
        subjects = chunk.prepared.subjects
        report = pd.DataFrame(
            {
                "subject_type": subjects["subject_type"].to_numpy()[passed],
                "subject": subjects["subject"].to_numpy()[passed],
                "why": "edge_flood",
            }
        )
        return rows, report

    def _requests(
        self, chunk: Chunk, carried: Columns, net: np.ndarray, ua: np.ndarray, country: np.ndarray
    ) -> Columns:
        """Return the carried edges' latest requests and the chunk's requests with known network and user agent.

        Rows are sorted by owner, carried before new, carried by time and new
        in event order. ``first_ts`` is the edge's carried first request time,
        or the request's own time for a new one.
        """
        known = (net != UNKNOWN) & (ua != UNKNOWN)
        new_ts = chunk.ts[known]
        times = np.column_stack([carried[name] for name in self.recent]).ravel()
        slot = np.tile(np.arange(self.requests), len(carried["owner"]))
        edge = np.repeat(np.arange(len(carried["owner"])), self.requests)
        present = ~np.isnan(times)
        edge, slot = edge[present], slot[present]

        both = {
            "owner": np.concatenate([carried["owner"][edge], chunk.subject[known]]),
            "net": np.concatenate([carried["net"][edge], net[known]]),
            "ua": np.concatenate([carried["ua"][edge], ua[known]]),
            "country": np.concatenate([carried["country"][edge], country[known]]),
            "ts": np.concatenate([times[present], new_ts]),
            "first_ts": np.concatenate([carried["first_ts"][edge], new_ts]),
            "is_new": np.arange(len(edge) + len(new_ts)) >= len(edge),
        }
        order_within = np.concatenate([slot, np.arange(len(new_ts))])
        # Carried rows by time, ties by slot; new rows in event order.
        within = np.where(both["is_new"], order_within, both["ts"])
        order = np.lexsort((order_within, within, both["is_new"], both["owner"]))
        return {name: column[order] for name, column in both.items()}

    def _device_rows(self, requests: Columns, edge: np.ndarray, flooded: np.ndarray, chunk: Chunk) -> pd.DataFrame:
        """Run the batch device graph over the requests that can take part and return the device finding rows at new joins."""
        detector = self.detector
        owner = requests["owner"]
        ts = requests["ts"]
        is_new = requests["is_new"]

        latest = np.full(edge.max() + 1 if len(edge) else 0, -np.inf)
        np.maximum.at(latest, edge, ts)
        lookback = max(detector.device_window, detector.established_window)
        first_new_ts = chunk.first_ms / 1000.0
        taking_part = ~flooded[owner] & (latest[edge] > first_new_ts[owner] - lookback)
        if not (taking_part & is_new).any():
            return self._no_rows

        # A node's first use is the earliest first request of its edges, carried or new.
        first_ts = requests["first_ts"]
        net_first = group_min(first_ts, group_codes(owner, requests["net"]))
        ua_first = group_min(first_ts, group_codes(owner, requests["ua"]))

        country = requests["country"]
        country_codes = pd.factorize(country)[0].astype(np.int64)
        country_codes[country == UNKNOWN] = -1
        graph = pd.DataFrame(
            {
                "subject": owner[taking_part],
                "ts": ts[taking_part],
                "net": pd.factorize(requests["net"])[0].astype(np.int64)[taking_part],
                "ua": pd.factorize(requests["ua"])[0].astype(np.int64)[taking_part],
                "country": country_codes[taking_part],
            }
        )
        growth = components_at_joins(
            graph,
            np.minimum(net_first, ua_first)[taking_part],
            detector.device_window,
            self.requests,
            detector.country_window,
            detector.new_device_age,
            detector.established_age,
            detector.established_window,
            reported=is_new[taking_part],
        )
        return detector.device_rows(growth) if len(growth) else self._no_rows

    def _carry_on(self, chunk: Chunk, requests: Columns, edge: np.ndarray) -> None:
        """Put each edge back with its first request, latest country and latest request times."""
        edges = edge.max() + 1 if len(edge) else 0
        from_last = position_in_group(edge, from_end=True)
        first = np.full(edges, np.inf)
        np.minimum.at(first, edge, requests["first_ts"])
        recent = np.full((edges, self.requests), np.nan)
        kept = from_last < self.requests
        recent[edge[kept], self.requests - 1 - from_last[kept]] = requests["ts"][kept]

        # Requests are sorted by owner, so each edge's latest request is too.
        latest = from_last == 0
        table = {
            "owner": requests["owner"][latest],
            "net": requests["net"][latest],
            "ua": requests["ua"][latest],
            "first_ts": first[edge[latest]],
            "country": requests["country"][latest],
            **{name: recent[edge[latest], index] for index, name in enumerate(self.recent)},
        }
        if self.retention is not None:
            cutoff = chunk.last_ms[table["owner"]] / 1000.0 - self.retention
            active = table[self.recent[-1]] > cutoff
            table = {name: column[active] for name, column in table.items()}
        self.edges.put(chunk.keys, {}, table)
