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
    distinct_networks_so_far,
    running_distinct,
    with_scores,
)
from detector.features.prepare import composite_time, trailing_count
from detector.features.runs import run_starts
from detector.state.chunk import Chunk, ChunkFindings, inexact_subjects
from detector.state.escalation import ESCALATION_VALUES, escalations_after
from detector.state.sharing_devices import DeviceEdges
from detector.state.table import SubjectStates

# The hash that stands for an unknown network, user agent or country.
UNKNOWN = np.uint64(0)
# Composite times are subject * _PER_SUBJECT + milliseconds (see ``composite_time``).
_PER_SUBJECT = int(composite_time(np.int64(1), np.int64(0)))


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
        inexact = inexact[inexact["why"] == "late_event"].reset_index(drop=True)
        events = _ChunkEvents(chunk, pd.DataFrame(taken.values))

        settled = self._settled(chunk, events)
        concurrent = self._concurrent(chunk, events, settled)
        devices, flooded = self.devices.update(chunk, events.net, events.ua, events.country)
        countries = self._countries(chunk, events, settled)
        rows = _in_batch_order([concurrent, devices, countries])

        first, escalation = escalations_after(with_scores(rows), "day", taken.values)
        spread = self._spread(chunk, events, first)
        found = self.detector.sharing_findings(chunk.prepared, first, spread) if len(first) else []

        values = pd.DataFrame(escalation).assign(
            last_ms=np.maximum(chunk.last_ms, taken.values["last_ms"]),
            plan=chunk.plan_hash,
            day=events.last_day,
            previous_ts=events.ts[events.ends],
            previous_net=events.net[events.ends],
            previous_ua=events.ua[events.ends],
            previous_country=events.country[events.ends],
            previous_settled=settled[events.ends],
        )
        self.subjects.put(chunk.keys, values, pd.DataFrame({"owner": np.empty(0, np.int64)}))
        return ChunkFindings(findings=found, inexact=pd.concat([inexact, flooded], ignore_index=True))

    def _settled(self, chunk: Chunk, events: "_ChunkEvents") -> np.ndarray:
        """Mark the requests on settled networks.

        Also sets ``events.last_on_net`` (the time of the subject's previous
        request on the same network) and ``events.networks``: each request's
        (subject, network) group, carried rows first, the groups' first uses
        and the carried network rows.
        """
        carried = pd.DataFrame(self.networks.take(chunk.keys).rows)
        pairs = pd.DataFrame(
            {
                "owner": np.concatenate([carried["owner"].to_numpy(), events.subject]),
                "net": np.concatenate([carried["net"].to_numpy(), events.net]),
                # A carried network's row stands for its last use, so the next request there reads it as the one before.
                "ts": np.concatenate([carried["last_ts"].to_numpy(), events.ts]),
            }
        )
        group = pairs.groupby(["owner", "net"], sort=False).ngroup().to_numpy()
        first_ts = np.full(group.max() + 1 if len(group) else 0, np.inf)
        np.minimum.at(first_ts, group[: len(carried)], carried["first_ts"].to_numpy())
        np.minimum.at(first_ts, group[len(carried) :], events.ts)

        new_group = group[len(carried) :]
        events.last_on_net = pd.Series(pairs["ts"].to_numpy()).groupby(group).shift(1).to_numpy()[len(carried) :]
        events.networks = (group, first_ts, carried)
        return events.ts - first_ts[new_group] >= self.detector.min_network_span

    def _concurrent(self, chunk: Chunk, events: "_ChunkEvents", settled: np.ndarray) -> pd.DataFrame:
        """Return the concurrent finding rows of the chunk; carry the switches, trips and networks on."""
        detector = self.detector
        previous_settled = events.previous(settled, events.carried["previous_settled"].to_numpy())
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

        marks = pd.DataFrame(self.marks.take(chunk.keys).rows)
        marked = composite_time(marks["owner"].to_numpy(), marks["ts_ms"].to_numpy())
        is_trip = marks["trip"].to_numpy()
        keys = events.keys
        switch_keys, switch_new = _merged_keys(marked[~is_trip], keys[concurrent])
        trip_keys, _ = _merged_keys(marked[is_trip], keys[trip])
        rows = pd.DataFrame(
            {
                "subject": events.subject[concurrent],
                "ts": events.ts[concurrent],
                "net": events.net[concurrent],
                "previous_net": events.previous_net[concurrent],
                "ua_differs": events.previous_ua[concurrent] != events.ua[concurrent],
            }
        )
        group, first_ts, carried = events.networks
        self._carry_marks(chunk, events, switch_keys, trip_keys)
        self._carry_networks(chunk, events, group, first_ts, carried, rows)
        if rows.empty:
            return concurrent_frame(rows.assign(networks=0, switches_24h=0, impossible_trips_24h=0))

        rows["switches_24h"] = trailing_count(switch_keys, DAY)[switch_new]
        switched_before = carried[carried["switched"].to_numpy()].rename(columns={"owner": "subject"})
        rows["networks"] = distinct_networks_so_far(rows, switched_before)
        # NOTE: the batch also counts trips later in the switch's millisecond; those in the next chunk are missed here.
        rows["impossible_trips_24h"] = count_marked(trip_keys, keys[concurrent], DAY)
        return concurrent_frame(rows[detector.qualifies(rows).to_numpy()])

    def _carry_marks(self, chunk: Chunk, events: "_ChunkEvents", switch_keys: np.ndarray, trip_keys: np.ndarray) -> None:
        keys = np.concatenate([switch_keys, trip_keys])
        owner = keys // _PER_SUBJECT
        kept = pd.DataFrame(
            {
                "owner": owner,
                "ts_ms": keys % _PER_SUBJECT,
                "trip": np.concatenate([np.zeros(len(switch_keys), bool), np.ones(len(trip_keys), bool)]),
            }
        )
        # A switch or trip counts in the trailing 24 hours of later requests only while it is within them.
        recent = kept["ts_ms"].to_numpy() > events.last_ms[owner] - int(DAY * 1000)
        kept = kept[recent].sort_values("owner", kind="stable")
        self.marks.put(chunk.keys, pd.DataFrame(index=range(len(chunk.keys))), kept)

    def _carry_networks(
        self, chunk: Chunk, events: "_ChunkEvents", group: np.ndarray, first_ts: np.ndarray, carried: pd.DataFrame,
        rows: pd.DataFrame,
    ) -> None:
        groups = len(first_ts)
        owner = np.zeros(groups, np.int64)
        net = np.zeros(groups, np.uint64)
        last_ts = np.full(groups, -np.inf)
        switched = np.zeros(groups, bool)
        all_owner = np.concatenate([carried["owner"].to_numpy(), events.subject])
        owner[group] = all_owner
        net[group] = np.concatenate([carried["net"].to_numpy(), events.net])
        np.maximum.at(last_ts, group, np.concatenate([carried["last_ts"].to_numpy(), events.ts]))
        switched[group[: len(carried)]] = carried["switched"].to_numpy()

        table = pd.DataFrame({"owner": owner, "net": net, "first_ts": first_ts, "last_ts": last_ts, "switched": switched})
        if not rows.empty:
            table["switched"] = switched | _took_part(table, rows)
        if self.retention is not None:
            table = table[table["last_ts"].to_numpy() * 1000 > events.last_ms[table["owner"].to_numpy()] - self.retention * 1000]
        self.networks.put(chunk.keys, pd.DataFrame(index=range(len(chunk.keys))), table.sort_values("owner", kind="stable"))

    def _countries(self, chunk: Chunk, events: "_ChunkEvents", settled: np.ndarray) -> pd.DataFrame:
        """Return the countries finding rows of the chunk; carry the country requests and two-country days on."""
        requests = self.detector.min_component_requests
        carried = pd.DataFrame(self.country_requests.take(chunk.keys).rows)
        carried_day = events.carried["day"].to_numpy()[carried["owner"].to_numpy()]
        chosen = settled & (events.country != UNKNOWN)
        counts = pd.DataFrame(
            {
                "owner": np.concatenate([carried["owner"].to_numpy(), events.subject[chosen]]),
                "day": np.concatenate([carried_day, events.day[chosen]]),
                "country": np.concatenate([carried["country"].to_numpy(), events.country[chosen]]),
                "requests": np.concatenate([carried["requests"].to_numpy(), np.ones(chosen.sum(), np.int64)]),
                "ts": np.concatenate([np.full(len(carried), -np.inf), events.ts[chosen]]),
            }
        )
        # Carried rows come first within their owner, so a running sum continues the day's carried count.
        counts = counts.take(np.argsort(counts["owner"].to_numpy(), kind="stable")).reset_index(drop=True)
        group = counts.groupby(["owner", "day", "country"], sort=False).ngroup().to_numpy()
        running = _running_sums(group, counts["requests"].to_numpy())

        firsts = np.unique(group, return_index=True)[1] if len(group) else np.empty(0, np.int64)
        totals = counts.iloc[firsts].assign(requests=np.bincount(group, weights=counts["requests"].to_numpy()).astype(np.int64))
        today = totals[totals["day"].to_numpy() == events.last_day[totals["owner"].to_numpy()]]
        self.country_requests.put(chunk.keys, pd.DataFrame(index=range(len(chunk.keys))), today.sort_values("owner", kind="stable"))

        is_new = np.isfinite(counts["ts"].to_numpy())
        if not (is_new & (running == requests)).any():
            return country_frame(np.empty(0, np.int64), np.empty(0, np.float64))
        return self._crossing_days(chunk, events, counts[running >= requests])

    def _crossing_days(self, chunk: Chunk, events: "_ChunkEvents", active: pd.DataFrame) -> pd.DataFrame:
        """Return the countries finding rows among ``active`` (a subject's country rows at or past the request count)."""
        active = active.drop_duplicates(["owner", "day", "country"])
        rank = active.groupby(["owner", "day"], sort=False).cumcount().to_numpy() + 1
        second = active[(rank == 2) & np.isfinite(active["ts"].to_numpy())]

        carried_days = pd.DataFrame(self.country_days.take(chunk.keys).rows)
        days = pd.DataFrame(
            {
                "subject": np.concatenate([carried_days["owner"].to_numpy(), second["owner"].to_numpy()]),
                "day": np.concatenate([carried_days["day"].to_numpy(), second["day"].to_numpy()]),
                "ts": np.concatenate([np.full(len(carried_days), -np.inf), second["ts"].to_numpy()]),
            }
        ).sort_values(["subject", "day"], kind="stable")
        crossing = days[self.detector.crossing_days(days) & np.isfinite(days["ts"].to_numpy())]

        recent = days[days["day"].to_numpy() > events.last_day[days["subject"].to_numpy()] - 7]
        self.country_days.put(
            chunk.keys, pd.DataFrame(index=range(len(chunk.keys))), recent.rename(columns={"subject": "owner"})[["owner", "day"]]
        )
        return country_frame(crossing["subject"].to_numpy(), crossing["ts"].to_numpy())

    def _spread(self, chunk: Chunk, events: "_ChunkEvents", first: pd.DataFrame) -> pd.DataFrame:
        """Return the spread evidence at each escalation row; carry the current day's distinct values on."""
        carried = pd.DataFrame(self.spread.take(chunk.keys).rows)
        carried_day = events.carried["day"].to_numpy()[carried["owner"].to_numpy()]
        times = first["detected_at"].to_numpy()
        # NOTE: like the batch, this counts up to the end of each detecting request's millisecond, but only
        # within this chunk, so a value first seen in the next chunk at that millisecond is not counted.
        targets = composite_time(first["subject"].to_numpy().astype(np.int64), np.round(times * 1000).astype(np.int64))
        positions = np.searchsorted(events.keys, targets, side="right") - 1

        columns = list(SPREAD_COLUMNS.values())
        size = len(events.ts)
        kind = np.concatenate([carried["kind"].to_numpy(), np.repeat(np.arange(len(columns)), size)])
        values = np.concatenate([carried["value"].to_numpy(), *(getattr(events, column) for column in columns)])
        subject = np.concatenate([carried["owner"].to_numpy(), np.tile(events.subject, len(columns))])
        day = np.concatenate([carried_day, np.tile(events.day, len(columns))])

        today = (day == events.last_day[subject]) & (values != UNKNOWN)
        rows = pd.DataFrame({"owner": subject[today], "kind": kind[today], "value": values[today]}).drop_duplicates()
        self.spread.put(chunk.keys, pd.DataFrame(index=range(len(chunk.keys))), rows.sort_values("owner", kind="stable"))
        if first.empty:
            return pd.DataFrame({name: np.empty(0, np.int64) for name in SPREAD_COLUMNS})

        # Carried values come first within their subject, then the chunk's events in time order, for each kind.
        order = np.argsort(subject, kind="stable")
        running = np.empty(len(order), np.int64)
        day_kind = day * len(columns) + kind
        running[order] = running_distinct(subject[order], day_kind[order], values[order], values[order] != UNKNOWN)
        new = running[len(carried) :].reshape(len(columns), size)
        return pd.DataFrame({name: new[index][positions] for index, name in enumerate(SPREAD_COLUMNS)})


class _ChunkEvents:
    """The chunk's events as arrays of hashes, with each subject's previous request taken from the carried values."""

    def __init__(self, chunk: Chunk, carried: pd.DataFrame) -> None:
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
        previous_ts = self.previous(self.ts, carried["previous_ts"].to_numpy())
        self.same_subject = ~np.isnan(previous_ts)
        self.iat = self.ts - previous_ts
        self.previous_net = self.previous(self.net, carried["previous_net"].to_numpy())
        self.previous_ua = self.previous(self.ua, carried["previous_ua"].to_numpy())
        self.previous_country = self.previous(self.country, carried["previous_country"].to_numpy())
        # Set by ``KeySharingState._settled``.
        self.last_on_net = np.empty(0)
        self.networks: tuple[np.ndarray, np.ndarray, pd.DataFrame] | None = None

    def previous(self, values: np.ndarray, carried: np.ndarray) -> np.ndarray:
        """Return the value of each event's previous request: within the chunk, or carried for a subject's first."""
        shifted = np.roll(values, 1)
        shifted[self.starts] = carried
        return shifted


def _hashes(codes: np.ndarray, texts, *, blank_known: bool = False) -> np.ndarray:
    """Return a stable 64-bit hash of each code's text, ``UNKNOWN`` for negative codes and, unless ``blank_known``, blank text."""
    texts = np.asarray(texts, dtype=object)
    hashed = pd.util.hash_array(texts) if len(texts) else np.empty(0, np.uint64)
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


def _took_part(table: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Mark the networks of ``table`` (``owner``, ``net``) that take part in the concurrent switches ``rows``."""
    took_part = pd.DataFrame(
        {
            "owner": np.concatenate([rows["subject"].to_numpy(), rows["subject"].to_numpy()]),
            "net": np.concatenate([rows["previous_net"].to_numpy(), rows["net"].to_numpy()]),
        }
    ).drop_duplicates()
    marked = table.merge(took_part, on=["owner", "net"], how="left", indicator=True)["_merge"] == "both"
    return marked.to_numpy()


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
