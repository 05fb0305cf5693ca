"""key_sharing from per-subject state: networks, the previous request, recent switches, country days and device edges."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.detectors.sharing import (
    DAY,
    SPREAD_COLUMNS,
    KeySharingDetector,
    concurrent_frame,
    count_marked,
    country_frame,
    running_distinct,
    with_scores,
)
from detector.features.prepare import composite_time, trailing_count
from detector.features.runs import run_starts
from detector.state.chunk import NO_SUBJECTS, Chunk, ChunkFindings, inexact_subjects
from detector.state.escalation import ESCALATION_VALUES, escalations_after, unchanged_steps
from detector.state.groups import first_in_group, group_codes, position_in_group, previous_in_group, rows_in
from detector.state.sharing_devices import DeviceEdges
from detector.state.table import Columns, SubjectStates

# The hash that stands for an unknown network, user agent or country.
UNKNOWN = np.uint64(0)
# Composite times are subject * _PER_SUBJECT + milliseconds (see ``composite_time``).
_PER_SUBJECT = int(composite_time(np.int64(1), np.int64(0)))
# The rows of a chunk without concurrent or countries findings, as the batch code builds them. Do not modify them.
_NO_CONCURRENT = concurrent_frame(
    pd.DataFrame({"subject": np.empty(0, np.int64), "ts": np.empty(0, np.float64)}).assign(
        networks=0, switches_24h=0, impossible_trips_24h=0
    )
)
_NO_COUNTRIES = country_frame(np.empty(0, np.int64), np.empty(0, np.float64))


class KeySharingState:
    """Run ``KeySharingDetector`` chunk by chunk from per-subject state.

    Per subject it keeps:

    - the previous request's time, network, user agent and country, and
      whether its network was settled;
    - per network, its first and last use and whether it took part in a
      concurrent switch;
    - the concurrent switches and impossible trips of the last 24 hours;
    - the requests per country of the current UTC day, and the two-country
      days of the last seven;
    - the distinct networks, countries and user agents of the current UTC day;
    - the device graph's edges (``DeviceEdges``) and the current day's escalation.

    Networks, user agents and countries are 64-bit hashes of their text.

    With ``retention`` None nothing is dropped for age, as over the batch
    command's whole input, and over chunks of a time-sorted input the
    findings equal the batch detector's on the whole input, except for the
    subjects reported in ``ChunkFindings.inexact``. With seconds, networks and
    device edges unused for longer than ``retention`` before the subject's
    last request are dropped, so first uses and switch networks reach back
    that far only, as a batch pass over a window of that length would see.
    Only late events are reported: key sharing reads no plan entitlements.
    """

    def __init__(self, detector: KeySharingDetector, *, retention: float | None = None) -> None:
        self.detector = detector
        self.retention = retention
        self.subjects = SubjectStates(
            values={
                "last_ms": ("int64", -1),
                "plan": ("uint64", 0),
                **ESCALATION_VALUES,
                "day": ("int64", -1),
                "previous_ts": ("float64", np.nan),
                "previous_net": ("uint64", 0),
                "previous_ua": ("uint64", 0),
                "previous_country": ("uint64", 0),
                "previous_settled": ("bool", False),
            },
            rows={},
        )
        self.networks = SubjectStates(
            values={}, rows={"net": "uint64", "first_ts": "float64", "last_ts": "float64", "switched": "bool"}
        )
        # Composite times of concurrent switches (trip false) and impossible trips (trip true) of the last 24 hours.
        self.marks = SubjectStates(values={}, rows={"ts_ms": "int64", "trip": "bool"})
        # Settled requests per country on the subject's current UTC day ("day" of ``subjects``).
        self.country_requests = SubjectStates(values={}, rows={"country": "uint64", "requests": "int64"})
        self.country_days = SubjectStates(values={}, rows={"day": "int64"})
        # Distinct values of the current UTC day; kind is the position in ``SPREAD_COLUMNS``.
        self.spread = SubjectStates(values={}, rows={"kind": "int64", "value": "uint64"})
        self.devices = DeviceEdges(detector, retention=retention)

    def update(self, chunk: Chunk) -> ChunkFindings:
        """Return the findings of ``chunk``'s events and carry its state on."""
        taken = self.subjects.take(chunk.keys)
        inexact = inexact_subjects(chunk, taken)
        if len(inexact):
            inexact = inexact[inexact["why"] == "late_event"].reset_index(drop=True)
        events = _ChunkEvents(chunk, taken.values)

        settled = self._settled(chunk, events)
        concurrent = self._concurrent(chunk, events, settled)
        devices, flooded = self.devices.update(chunk, events.net, events.ua, events.country)
        countries = self._countries(chunk, events, settled)
        parts = [concurrent, devices, countries]
        if any(len(part) for part in parts):
            first, escalation = escalations_after(with_scores(_in_batch_order(parts)), "day", taken.values)
        else:
            first, escalation = None, unchanged_steps(taken.values)

        spread = self._spread(chunk, events, first)
        found = self.detector.sharing_findings(chunk.prepared, first, spread) if first is not None and len(first) else []

        values = {
            **escalation,
            "last_ms": np.maximum(chunk.last_ms, taken.values["last_ms"]),
            "plan": chunk.plan_hash,
            "day": events.last_day,
            "previous_ts": events.ts[events.ends],
            "previous_net": events.net[events.ends],
            "previous_ua": events.ua[events.ends],
            "previous_country": events.country[events.ends],
            "previous_settled": settled[events.ends],
        }
        self.subjects.put(chunk.keys, values, {"owner": np.empty(0, np.int64)})
        return ChunkFindings(findings=found, inexact=_joined(inexact, flooded))

    def _settled(self, chunk: Chunk, events: "_ChunkEvents") -> np.ndarray:
        """Mark the requests on settled networks.

        Also sets ``events.last_on_net`` (the time of the subject's previous
        request on the same network) and ``events.networks``: each request's
        (subject, network) group, carried rows first, the groups' first uses
        and the carried network rows.
        """
        carried = self.networks.take(chunk.keys).rows
        owner = np.concatenate([carried["owner"], events.subject])
        net = np.concatenate([carried["net"], events.net])
        # A carried network's row stands for its last use, so the next request there reads it as the one before.
        ts = np.concatenate([carried["last_ts"], events.ts])
        group = group_codes(owner, net)
        first_ts = np.full(group.max() + 1 if len(group) else 0, np.inf)
        np.minimum.at(first_ts, group, np.concatenate([carried["first_ts"], events.ts]))

        new_group = group[len(carried["owner"]) :]
        events.last_on_net = previous_in_group(ts, group)[len(carried["owner"]) :]
        events.networks = (group, first_ts, carried)
        return events.ts - first_ts[new_group] >= self.detector.min_network_span

    def _concurrent(self, chunk: Chunk, events: "_ChunkEvents", settled: np.ndarray) -> pd.DataFrame:
        """Return the concurrent finding rows of the chunk; carry the switches, trips and networks on."""
        detector = self.detector
        previous_settled = events.previous(settled, events.carried["previous_settled"])
        same = events.same_subject
        switched = same & (events.net != UNKNOWN) & (events.previous_net != UNKNOWN) & (events.net != events.previous_net)
        last_on_net = np.nan_to_num(events.last_on_net, nan=-np.inf)
        concurrent = (
            switched
            & settled
            & previous_settled
            & (events.iat <= detector.switch_gap)
            & (events.ts - last_on_net <= detector.return_gap)
        )
        trip = (
            same
            & (events.country != UNKNOWN)
            & (events.previous_country != UNKNOWN)
            & (events.country != events.previous_country)
            & (events.iat <= detector.travel_gap)
        )

        marks = self.marks.take(chunk.keys).rows
        marked = composite_time(marks["owner"], marks["ts_ms"])
        is_trip = marks["trip"]
        keys = events.keys
        switch_keys, switch_new = _merged_keys(marked[~is_trip], keys[concurrent])
        trip_keys, _ = _merged_keys(marked[is_trip], keys[trip])
        group, first_ts, carried = events.networks
        self._carry_marks(chunk, events, switch_keys, trip_keys)
        self._carry_networks(chunk, events, group, first_ts, carried, concurrent)
        if not concurrent.any():
            return _NO_CONCURRENT

        subject = events.subject[concurrent]
        switched_before = carried["switched"]
        rows = {
            "subject": subject,
            "ts": events.ts[concurrent],
            "ua_differs": events.previous_ua[concurrent] != events.ua[concurrent],
            "switches_24h": trailing_count(switch_keys, DAY)[switch_new],
            "networks": _networks_so_far(
                subject, events.previous_net[concurrent], events.net[concurrent],
                carried["owner"][switched_before], carried["net"][switched_before],
            ),
            # NOTE: the batch also counts trips later in the switch's millisecond; those in the next chunk are missed here.
            "impossible_trips_24h": count_marked(trip_keys, keys[concurrent], DAY),
        }
        # ``qualifies`` only compares and combines columns, so it runs on arrays as well as on a frame.
        qualifying = np.asarray(detector.qualifies(rows), dtype=bool)
        if not qualifying.any():
            return _NO_CONCURRENT
        return concurrent_frame(pd.DataFrame({name: column[qualifying] for name, column in rows.items()}))

    def _carry_marks(self, chunk: Chunk, events: "_ChunkEvents", switch_keys: np.ndarray, trip_keys: np.ndarray) -> None:
        keys = np.concatenate([switch_keys, trip_keys])
        owner = keys // _PER_SUBJECT
        ts_ms = keys % _PER_SUBJECT
        trip = np.concatenate([np.zeros(len(switch_keys), bool), np.ones(len(trip_keys), bool)])

        # A switch or trip counts in the trailing 24 hours of later requests only while it is within them.
        recent = np.flatnonzero(ts_ms > events.last_ms[owner] - int(DAY * 1000))
        kept = recent[np.argsort(owner[recent], kind="stable")]
        self.marks.put(chunk.keys, {}, {"owner": owner[kept], "ts_ms": ts_ms[kept], "trip": trip[kept]})

    def _carry_networks(
        self, chunk: Chunk, events: "_ChunkEvents", group: np.ndarray, first_ts: np.ndarray, carried: Columns,
        concurrent: np.ndarray,
    ) -> None:
        carried_rows = len(carried["owner"])
        groups = len(first_ts)
        owner = np.zeros(groups, np.int64)
        net = np.zeros(groups, np.uint64)
        last_ts = np.full(groups, -np.inf)
        switched = np.zeros(groups, bool)
        owner[group] = np.concatenate([carried["owner"], events.subject])
        net[group] = np.concatenate([carried["net"], events.net])
        np.maximum.at(last_ts, group, np.concatenate([carried["last_ts"], events.ts]))
        switched[group[:carried_rows]] = carried["switched"]

        if concurrent.any():
            # Both networks of a concurrent switch take part in it.
            subject = events.subject[concurrent]
            both_nets = np.concatenate([events.previous_net[concurrent], events.net[concurrent]])
            switched |= rows_in((owner, net), (np.concatenate([subject, subject]), both_nets))
        kept = np.arange(groups)
        if self.retention is not None:
            kept = np.flatnonzero(last_ts * 1000 > events.last_ms[owner] - self.retention * 1000)
        kept = kept[np.argsort(owner[kept], kind="stable")]
        table = {"owner": owner, "net": net, "first_ts": first_ts, "last_ts": last_ts, "switched": switched}
        self.networks.put(chunk.keys, {}, {name: column[kept] for name, column in table.items()})

    def _countries(self, chunk: Chunk, events: "_ChunkEvents", settled: np.ndarray) -> pd.DataFrame:
        """Return the countries finding rows of the chunk; carry the country requests and two-country days on."""
        requests = self.detector.min_component_requests
        carried = self.country_requests.take(chunk.keys).rows
        carried_rows = len(carried["owner"])
        chosen = settled & (events.country != UNKNOWN)
        counts = {
            "owner": np.concatenate([carried["owner"], events.subject[chosen]]),
            "day": np.concatenate([events.carried["day"][carried["owner"]], events.day[chosen]]),
            "country": np.concatenate([carried["country"], events.country[chosen]]),
            "requests": np.concatenate([carried["requests"], np.ones(int(chosen.sum()), np.int64)]),
            "ts": np.concatenate([np.full(carried_rows, -np.inf), events.ts[chosen]]),
        }
        # Carried rows come first within their owner, so a running sum continues the day's carried count.
        order = np.argsort(counts["owner"], kind="stable")
        counts = {name: column[order] for name, column in counts.items()}
        group = group_codes(counts["owner"], counts["day"], counts["country"])
        running = _running_sums(group, counts["requests"])

        # Group codes number groups in row order, so each group's first row, in code order, is sorted by owner.
        firsts = np.unique(group, return_index=True)[1] if len(group) else np.empty(0, np.int64)
        totals = np.bincount(group, weights=counts["requests"]).astype(np.int64) if len(group) else np.empty(0, np.int64)
        today = counts["day"][firsts] == events.last_day[counts["owner"][firsts]]
        self.country_requests.put(
            chunk.keys,
            {},
            {"owner": counts["owner"][firsts][today], "country": counts["country"][firsts][today], "requests": totals[today]},
        )

        is_new = np.isfinite(counts["ts"])
        if not (is_new & (running == requests)).any():
            return _NO_COUNTRIES
        active = running >= requests
        return self._crossing_days(chunk, events, {name: column[active] for name, column in counts.items()})

    def _crossing_days(self, chunk: Chunk, events: "_ChunkEvents", active: Columns) -> pd.DataFrame:
        """Return the countries finding rows among ``active`` (a subject's country rows at or past the request count)."""
        first = first_in_group(group_codes(active["owner"], active["day"], active["country"]))
        owner, day, ts = active["owner"][first], active["day"][first], active["ts"][first]
        rank = position_in_group(group_codes(owner, day)) + 1
        second = (rank == 2) & np.isfinite(ts)

        carried_days = self.country_days.take(chunk.keys).rows
        subject = np.concatenate([carried_days["owner"], owner[second]])
        day = np.concatenate([carried_days["day"], day[second]])
        ts = np.concatenate([np.full(len(carried_days["owner"]), -np.inf), ts[second]])
        order = np.lexsort((day, subject))
        subject, day, ts = subject[order], day[order], ts[order]
        crossing = _enough_crossing_days(subject, day, self.detector.min_country_days) & np.isfinite(ts)

        recent = day > events.last_day[subject] - 7
        self.country_days.put(chunk.keys, {}, {"owner": subject[recent], "day": day[recent]})
        if not crossing.any():
            return _NO_COUNTRIES
        return country_frame(subject[crossing], ts[crossing])

    def _spread(self, chunk: Chunk, events: "_ChunkEvents", first: pd.DataFrame | None) -> pd.DataFrame | None:
        """Return the spread evidence at each escalation row of ``first``; carry the current day's distinct values on."""
        carried = self.spread.take(chunk.keys).rows
        columns = list(SPREAD_COLUMNS.values())
        size = len(events.ts)
        kind = np.concatenate([carried["kind"], np.repeat(np.arange(len(columns)), size)])
        values = np.concatenate([carried["value"], *(getattr(events, column) for column in columns)])
        subject = np.concatenate([carried["owner"], np.tile(events.subject, len(columns))])
        day = np.concatenate([events.carried["day"][carried["owner"]], np.tile(events.day, len(columns))])

        today = np.flatnonzero((day == events.last_day[subject]) & (values != UNKNOWN))
        today = today[first_in_group(group_codes(subject[today], kind[today], values[today]))]
        today = today[np.argsort(subject[today], kind="stable")]
        self.spread.put(chunk.keys, {}, {"owner": subject[today], "kind": kind[today], "value": values[today]})
        if first is None or first.empty:
            return None

        times = first["detected_at"].to_numpy()
        # NOTE: like the batch, this counts up to the end of each detecting request's millisecond, but only
        # within this chunk, so a value first seen in the next chunk at that millisecond is not counted.
        targets = composite_time(first["subject"].to_numpy().astype(np.int64), np.round(times * 1000).astype(np.int64))
        positions = np.searchsorted(events.keys, targets, side="right") - 1

        # Carried values come first within their subject, then the chunk's events in time order, for each kind.
        order = np.argsort(subject, kind="stable")
        running = np.empty(len(order), np.int64)
        day_kind = day * len(columns) + kind
        running[order] = running_distinct(subject[order], day_kind[order], values[order], values[order] != UNKNOWN)
        new = running[len(carried["owner"]) :].reshape(len(columns), size)
        return pd.DataFrame({name: new[index][positions] for index, name in enumerate(SPREAD_COLUMNS)})


class _ChunkEvents:
    """The chunk's events as arrays of hashes, with each subject's previous request taken from the carried values."""

    def __init__(self, chunk: Chunk, carried: Columns) -> None:
        prepared = chunk.prepared
        frame = prepared.events
        self.carried = carried
        self.subject = frame["subject"].to_numpy()
        self.ts = frame["ts"].to_numpy()
        self.keys = prepared.composite_time
        self.day = (self.ts // DAY).astype(np.int64)
        self.net = _hashes(frame["net"].to_numpy(), np.asarray(prepared.networks, dtype=object))
        # A blank user agent is a user agent of its own, as in ``prepare_events``; a blank country is unknown.
        self.ua = _hashes(frame["ua"].to_numpy(), pd.factorize(chunk.frame["user_agent"])[1], blank_known=True)
        self.country = _hashes(frame["country"].to_numpy(), pd.factorize(chunk.frame["country"])[1])

        self.starts = run_starts(self.subject)
        self.ends = np.append(self.starts[1:], len(frame)) - 1
        self.last_ms = chunk.last_ms
        self.last_day = self.day[self.ends]
        previous_ts = self.previous(self.ts, carried["previous_ts"])
        self.same_subject = ~np.isnan(previous_ts)
        self.iat = self.ts - previous_ts
        self.previous_net = self.previous(self.net, carried["previous_net"])
        self.previous_ua = self.previous(self.ua, carried["previous_ua"])
        self.previous_country = self.previous(self.country, carried["previous_country"])
        # Set by ``KeySharingState._settled``.
        self.last_on_net = np.empty(0)
        self.networks: tuple[np.ndarray, np.ndarray, Columns] | None = None

    def previous(self, values: np.ndarray, carried: np.ndarray) -> np.ndarray:
        """Return the value of each event's previous request: within the chunk, or carried for a subject's first."""
        shifted = np.roll(values, 1)
        shifted[self.starts] = carried
        return shifted


def _hashes(codes: np.ndarray, texts, *, blank_known: bool = False) -> np.ndarray:
    """Return a stable 64-bit hash of each code's text, ``UNKNOWN`` for negative codes and, unless ``blank_known``, blank text."""
    texts = np.asarray(texts, dtype=object)
    # The texts are distinct, so grouping them first (``categorize``) would only cost time; the hashes are the same.
    hashed = pd.util.hash_array(texts, categorize=False) if len(texts) else np.empty(0, np.uint64)
    if not blank_known:
        hashed[texts == ""] = UNKNOWN
    return np.where(codes >= 0, hashed[np.maximum(codes, 0)] if len(hashed) else UNKNOWN, UNKNOWN)


def _running_sums(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum ``values`` within each group up to each row, in row order."""
    order = np.argsort(group, kind="stable")
    totals = np.cumsum(values[order])
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]]) if len(group) else np.empty(0, np.int64)
    before = np.repeat(totals[starts] - values[order][starts], np.diff(np.append(starts, len(group))))
    running = np.empty(len(group), values.dtype)
    running[order] = totals - before
    return running


def _networks_so_far(
    subject: np.ndarray, previous_net: np.ndarray, net: np.ndarray, earlier_subject: np.ndarray, earlier_net: np.ndarray
) -> np.ndarray:
    """Count, at each concurrent switch, the distinct networks of the subject's switches so far.

    Matches ``distinct_networks_so_far`` with ``earlier`` the (``earlier_subject``, ``earlier_net``) rows.
    """
    # The earlier networks, then each switch's previous and new network in switch order.
    owner = np.concatenate([earlier_subject, np.repeat(subject, 2)])
    networks = np.concatenate([earlier_net, np.column_stack([previous_net, net]).ravel()])
    new_network = first_in_group(group_codes(owner, networks)).astype(np.int64)
    return _running_sums(owner, new_network)[len(earlier_subject) + 1 :: 2]


def _enough_crossing_days(subject: np.ndarray, day: np.ndarray, days: int) -> np.ndarray:
    """Mark the two-country days (sorted by ``subject`` then ``day``) with ``days`` such days of the subject within seven days.

    Matches ``KeySharingDetector.crossing_days`` with ``days`` its ``min_country_days``.
    """
    earlier = np.arange(len(day)) - (days - 1)
    inside = (earlier >= 0) & (earlier < len(day))
    inside[inside] = subject[earlier[inside]] == subject[inside]
    return inside & (day - day[np.clip(earlier, 0, max(len(day) - 1, 0))] < 7)


def _joined(inexact: pd.DataFrame, flooded: pd.DataFrame) -> pd.DataFrame:
    """Return the inexact subjects of both frames, without building a frame when both are empty."""
    parts = [part for part in (inexact, flooded) if len(part)]
    return pd.concat(parts, ignore_index=True) if parts else NO_SUBJECTS


def _merged_keys(carried: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return carried and new composite times sorted, carried first at equal times, and where the new ones went."""
    both = np.concatenate([carried, new])
    order = np.argsort(both, kind="stable")
    position = np.empty(len(both), np.int64)
    position[order] = np.arange(len(both))
    return both[order], position[len(carried) :]


def _in_batch_order(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate the tests' rows sorted by subject and time, at equal times in the batch detector's order."""
    rows = pd.concat(parts, ignore_index=True)
    order = np.lexsort((rows["detected_at"].to_numpy(), rows["subject"].to_numpy()))
    return rows.take(order).reset_index(drop=True)
