"""key_sharing: one key used from several places at the same time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detector.detectors.base import Finding, at_or_after, escalations, findings_from_rows, from_period_start
from detector.detectors.device_graph import rolling_components
from detector.features import PreparedEvents, address_gaps
from detector.features.hosting import HostingNetworks
from detector.features.runs import run_numbers, run_starts

DAY = 86400.0
# Evidence of the spread since UTC midnight, and the event column each one counts.
SPREAD_COLUMNS = {"networks_24h": "net", "countries_24h": "country", "user_agents_24h": "ua"}


@dataclass(frozen=True, slots=True)
class KeySharingDetector:
    """Flag keys whose requests alternate between networks within minutes.

    A *concurrent switch* is a request from network B that follows a request
    from network A within ``switch_gap`` seconds, when B itself was in use less
    than ``return_gap`` seconds earlier. The key is going back and forth, so
    both places are using it at once. Moving (a phone roaming inside a carrier,
    a traveller) switches networks in one direction, and a team behind one NAT
    uses one network, so neither produces these switches. Networks are IPv4
    /24 and IPv6 /48 prefixes.

    A *concurrent* finding needs ``min_switches`` concurrent switches in a
    rolling 24 hours. It also needs ``min_networks`` networks taking part in
    them so far, or two networks with a second sign: different user agents on
    the two sides, or an impossible trip (a country change within
    ``travel_gap`` seconds). Only networks the key has used for at least
    ``min_network_span`` seconds take part, so a CI runner or serverless
    function that lives for one burst of requests is not a second place.

    People who share a key rarely use it in the same minutes, so a second test
    counts *devices in separate places* over the trailing ``device_window``:
    the connected components of the graph that links each network to the user
    agents seen on it (``rolling_components``). One person's phone roaming
    across networks is one component (one user agent); a team behind one NAT
    is one component (one network); three people with their own devices on
    their own networks are three. A *devices* finding needs
    ``min_components`` components with at least ``min_component_requests``
    requests each, or two components with no country in common within
    ``country_window``, or a *new device*: a component whose networks and
    user agents the key first used less than ``new_device_age`` seconds ago,
    beside a device first used at least ``established_age`` seconds ago and
    still in use within ``established_window``. Two components in one
    country are one person with a phone on mobile data and a laptop on wifi
    as often as two people, so they are not enough by themselves. But such a
    person uses both devices from their first day, while a friend's device
    turns up on a new network with a new user agent when the sharing starts,
    so the new device is usually seen within minutes. The established
    device may have been idle for the whole ``device_window``: an owner who
    skipped a day still has the key, and a device the key has never seen is
    as new after that day as during it. A new device therefore counts as two
    users even when it is the only component in the window. Sharers rarely
    use the key in the same minutes, so the concurrent test seldom finds them
    early.

    A third test catches people in different countries who share one user
    agent: a *countries* finding needs ``min_country_days`` UTC days within
    seven days on each of which two or more countries sent at least
    ``min_component_requests`` requests from networks used for
    ``min_network_span`` seconds. A traveller who moves once has one such day.

    NOTE: one person with three devices that never share a network in a day
    (office desktop, home laptop, phone on mobile data) also makes three
    components, and a traveller who uses one device at home and another
    abroad, or a developer whose CI runs in a cloud region abroad, makes two
    components in separate countries. A person's own device used for the
    first time after ``established_age`` on a network the key has not seen
    (a phone first used a day after the laptop, a new phone on mobile data,
    a CI pipeline set up later, a second browser on a re-leased home line,
    a replacement laptop on a new network within ``established_window`` of
    the old one's last use) is a new device. The shipped policy sends
    few-person sharing to review only.

    A CI runner or backend in a cloud region makes no device when the
    operator lists the providers' published ranges (``hosting``, read from
    ``FAIRUSE_HOSTING_NETWORKS``); without that list it is a new device.
    """

    switch_gap: float = 120.0
    return_gap: float = 600.0
    travel_gap: float = 3600.0
    min_switches: int = 3
    min_networks: int = 3
    min_components: int = 3
    min_component_requests: int = 2
    device_window: float = DAY
    country_window: float = DAY
    min_network_span: float = 300.0
    min_country_days: int = 2
    new_device_age: float = 3600.0
    established_age: float = DAY
    established_window: float = 3 * DAY
    # Networks of cloud and server providers, left out of the device graph (detector.features.hosting).
    hosting: HostingNetworks | None = None
    resale_networks: int = 8
    reason: str = "key_sharing"
    version: str = "1"

    def detect(self, prepared: PreparedEvents, since: float | None = None) -> list[Finding]:
        """Return the findings, or with ``since`` those detected from ``since`` on (see ``Detector``).

        Findings escalate per subject and UTC day, so with ``since`` the day
        holding it is evaluated from its start. Earlier events still count:
        each network's first use, the networks that took part in switches and
        the country days reach back over the whole input. The subjects left
        out of the device graph for having too many edges are counted over
        the whole input too, with or without ``since``.
        """
        events = prepared.events
        if events.empty:
            return []

        settled = _settled_networks(events, self.min_network_span)
        day_start = None if since is None else since // DAY * DAY
        rows = pd.concat(
            [
                self._concurrent_findings(prepared, settled),
                self._device_findings(prepared, day_start),
                self._country_findings(prepared, settled),
            ]
        )
        recent = from_period_start(rows["detected_at"].to_numpy(), since, DAY)
        if recent is not None:
            rows = rows[recent]
        if rows.empty:
            return []

        rows = with_scores(rows.sort_values("detected_at", kind="stable").reset_index(drop=True))
        first = escalations(rows, ["subject", "day"])
        first = at_or_after(first, since).reset_index(drop=True)
        spread = _spread_so_far(prepared, first["subject"].to_numpy(), first["detected_at"].to_numpy())
        return self.sharing_findings(prepared, first, spread)

    def sharing_findings(self, prepared: PreparedEvents, first: pd.DataFrame, spread: pd.DataFrame) -> list[Finding]:
        """Build findings from scored escalation rows and their ``spread`` (one row each, see ``_spread_so_far``)."""
        first = first.reset_index(drop=True)
        first["window_start"] = first["detected_at"] - DAY
        first = pd.concat([first, spread.reset_index(drop=True)], axis=1)
        return findings_from_rows(
            prepared,
            first,
            reason=self.reason,
            origin=f"{self.reason}/{self.version}",
            evidence_columns={
                "kind": "kind",
                "concurrent_networks": "networks",
                "concurrent_switches_24h": "switches_24h",
                "device_components": "components",
                "new_device": "new_device",
                "countries_same_day": "countries",
                "impossible_trips_24h": "impossible_trips_24h",
                "networks_24h": "networks_24h",
                "countries_24h": "countries_24h",
                "user_agents_24h": "user_agents_24h",
            },
            window=f"rolling 24h of concurrent switches; device components over a rolling {self.device_window / 3600:g}h",
            thresholds={
                "switch_gap_s": self.switch_gap,
                "return_gap_s": self.return_gap,
                "min_switches": self.min_switches,
                "min_networks": self.min_networks,
                "min_components": self.min_components,
                "min_component_requests": self.min_component_requests,
                "device_window_s": self.device_window,
                "country_window_s": self.country_window,
                "min_network_span_s": self.min_network_span,
                "min_country_days": self.min_country_days,
                "new_device_age_s": self.new_device_age,
                "established_age_s": self.established_age,
                "established_window_s": self.established_window,
                "resale_networks": self.resale_networks,
            },
        )

    def evidence_gaps(self, prepared: PreparedEvents) -> dict[int, str]:
        """Return, by subject code, why network evidence is missing for subjects with requests without an address.

        A request whose gateway did not record the client address (``ip`` is
        ``""``) has no network. It never counts as a network of its own, so
        the network signals of such a subject rest on its other requests, or
        on none.
        """
        return address_gaps(prepared, "network evidence")

    def _concurrent_findings(self, prepared: PreparedEvents, settled: np.ndarray) -> pd.DataFrame:
        signals = self._switch_signals(prepared.events, settled)
        concurrent = signals["concurrent"].to_numpy()
        if not concurrent.any():
            return _EMPTY_ROWS.copy()

        rows = self._concurrent_rows(prepared, signals, concurrent)
        return concurrent_frame(rows[rows["qualifies"]])

    def qualifies(self, rows: pd.DataFrame) -> pd.Series:
        """Mark the concurrent switches that make a finding, from ``switches_24h``, ``networks``, ``ua_differs`` and ``impossible_trips_24h``."""
        enough_switches = rows["switches_24h"] >= self.min_switches
        many_networks = rows["networks"] >= self.min_networks
        two_with_sign = (rows["networks"] >= 2) & (
            rows["ua_differs"] | (rows["impossible_trips_24h"] > 0)
        )
        return enough_switches & (many_networks | two_with_sign)

    def _device_findings(self, prepared: PreparedEvents, since: float | None) -> pd.DataFrame:
        growth = rolling_components(
            self._without_hosting(prepared), self.device_window, self.min_component_requests, self.country_window,
            self.new_device_age, self.established_age, self.established_window, since=since,
        )
        return self.device_rows(growth)

    def device_rows(self, growth: pd.DataFrame) -> pd.DataFrame:
        """Return finding rows of kind ``devices`` from the rows of ``rolling_components`` that pass a device test."""
        many_devices = growth["components"].to_numpy() >= self.min_components
        separate_countries = growth["country_components"].to_numpy() >= 2
        new_device = growth["new_device"].to_numpy() > 0
        passing = many_devices | separate_countries | new_device
        if not passing.any():
            return _EMPTY_ROWS.copy()

        growth = growth[passing]

        return device_frame(growth)

    def _without_hosting(self, prepared: PreparedEvents) -> pd.DataFrame:
        """Return the events with the networks of hosting providers marked unknown, so servers make no device."""
        events = prepared.events
        if not self.hosting:
            return events
        from_server = self.from_hosting(prepared)
        if not from_server.any():
            return events
        net = events["net"].to_numpy()
        # Only the columns the device graph reads, so a million events are not copied whole.
        graph = events[["subject", "ts", "ua", "country"]].copy()
        graph["net"] = np.where(from_server, -1, net)
        return graph

    def from_hosting(self, prepared: PreparedEvents) -> np.ndarray:
        """Mark the events from the networks of hosting providers (none without ``hosting``)."""
        net = prepared.events["net"].to_numpy()
        hosted = self.hosting.mask(prepared.networks) if self.hosting else np.zeros(0, dtype=bool)
        return (net >= 0) & hosted[np.maximum(net, 0)] if len(hosted) else np.zeros(len(net), dtype=bool)

    def _country_findings(self, prepared: PreparedEvents, settled: np.ndarray) -> pd.DataFrame:
        places = _activations(prepared.events, settled, "country", self.min_component_requests)
        if places.empty:
            return _EMPTY_ROWS.copy()

        # The moment each day first had two active countries, then the days that did so.
        places["rank"] = places.groupby(["subject", "day"], sort=False).cumcount() + 1
        days = places[places["rank"] == 2].sort_values(["subject", "day"], kind="stable")
        crossing = days[self.crossing_days(days)]
        return country_frame(crossing["subject"].to_numpy(), crossing["ts"].to_numpy())

    def crossing_days(self, days: pd.DataFrame) -> np.ndarray:
        """Mark the two-country days (``subject``, ``day``, sorted) with ``min_country_days`` such days within seven days."""
        earlier = days.groupby("subject")["day"].shift(self.min_country_days - 1)
        return (days["day"] - earlier < 7).to_numpy()

    def _switch_signals(self, events: pd.DataFrame, settled: np.ndarray) -> pd.DataFrame:
        """Mark concurrent switches and impossible trips; ``settled`` marks requests on settled networks."""
        subject = events["subject"].to_numpy()
        net = events["net"].to_numpy()
        ts = events["ts"].to_numpy()

        same_subject = np.zeros(len(events), dtype=bool)
        same_subject[1:] = subject[1:] == subject[:-1]
        previous_net = np.where(same_subject, np.roll(net, 1), -1)
        previous_ua = np.where(same_subject, np.roll(events["ua"].to_numpy(), 1), -1)
        previous_country = np.where(same_subject, np.roll(events["country"].to_numpy(), 1), -1)

        last_on_net = events.groupby(["subject", "net"], sort=False)["ts"].shift(1).to_numpy()
        previous_settled = np.where(same_subject, np.roll(settled, 1), False)
        switched = same_subject & (net >= 0) & (previous_net >= 0) & (net != previous_net) & settled & previous_settled
        concurrent = (
            switched
            & (events["iat"].to_numpy() <= self.switch_gap)
            & (ts - np.nan_to_num(last_on_net, nan=-np.inf) <= self.return_gap)
        )

        country = events["country"].to_numpy()
        impossible_trip = (
            same_subject
            & (country >= 0)
            & (previous_country >= 0)
            & (country != previous_country)
            & (events["iat"].to_numpy() <= self.travel_gap)
        )
        return pd.DataFrame(
            {
                "concurrent": concurrent,
                "previous_net": previous_net,
                "ua_differs": previous_ua != events["ua"].to_numpy(),
                "impossible_trip": impossible_trip,
            }
        )

    def _concurrent_rows(
        self, prepared: PreparedEvents, signals: pd.DataFrame, concurrent: np.ndarray
    ) -> pd.DataFrame:
        events = prepared.events
        rows = pd.DataFrame(
            {
                "subject": events["subject"].to_numpy()[concurrent],
                "ts": events["ts"].to_numpy()[concurrent],
                "net": events["net"].to_numpy()[concurrent],
                "previous_net": signals["previous_net"].to_numpy()[concurrent],
                "ua_differs": signals["ua_differs"].to_numpy()[concurrent],
            }
        )
        rows["switches_24h"] = prepared.count_in_window(DAY, concurrent)
        rows["networks"] = distinct_networks_so_far(rows)

        trips = signals["impossible_trip"].to_numpy()
        keys = prepared.composite_time
        rows["impossible_trips_24h"] = count_marked(keys[trips], keys[concurrent], DAY)
        rows["qualifies"] = self.qualifies(rows)
        return rows


_EMPTY_ROWS = pd.DataFrame(
    {
        "subject": pd.Series(dtype="int64"),
        "day": pd.Series(dtype="int64"),
        "detected_at": pd.Series(dtype="float64"),
        "window_end": pd.Series(dtype="float64"),
        "networks": pd.Series(dtype="int64"),
        "switches_24h": pd.Series(dtype="int64"),
        "components": pd.Series(dtype="int64"),
        "countries": pd.Series(dtype="int64"),
        "new_device": pd.Series(dtype="int64"),
        "impossible_trips_24h": pd.Series(dtype="int64"),
        "kind": pd.Series(dtype="object"),
    }
)


def with_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Add ``score`` and ``impact`` (the number of users) to finding rows."""
    # A new device is a second user even when the established one was idle for the whole device window.
    counts = {name: rows[name].to_numpy() for name in ("networks", "components", "countries", "new_device")}
    users = np.maximum.reduce([counts["networks"], counts["components"], counts["countries"], 2 * counts["new_device"]])
    score = np.clip(40 + 15 * np.minimum(users, 4), 0, 100)
    score += np.where(rows["impossible_trips_24h"].to_numpy() > 0, 10, 0)
    rows["score"] = np.minimum(score, 100)
    rows["impact"] = users.astype(float)
    return rows


def concurrent_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Return finding rows of kind ``concurrent`` from qualifying switches."""
    return _finding_rows(
        rows["subject"].to_numpy(), rows["ts"].to_numpy(), "concurrent",
        networks=rows["networks"].to_numpy(),
        switches_24h=rows["switches_24h"].to_numpy(),
        impossible_trips_24h=rows["impossible_trips_24h"].to_numpy(),
    )


def device_frame(growth: pd.DataFrame) -> pd.DataFrame:
    """Return finding rows of kind ``devices`` from rows of ``rolling_components``."""
    return _finding_rows(
        growth["subject"].to_numpy(), growth["ts"].to_numpy(), "devices",
        components=growth["components"].to_numpy(),
        countries=growth["country_components"].to_numpy(),
        new_device=growth["new_device"].to_numpy(),
    )


def country_frame(subject: np.ndarray, ts: np.ndarray) -> pd.DataFrame:
    """Return finding rows of kind ``countries`` at the moments a crossing day got its second country."""
    return _finding_rows(subject, ts, "countries", countries=2)


# The counts of a finding row, in column order; a kind leaves those it does not measure at 0.
_COUNTS = ("networks", "switches_24h", "components", "countries", "new_device", "impossible_trips_24h")


def _finding_rows(subject: np.ndarray, ts: np.ndarray, kind: str, **counts) -> pd.DataFrame:
    """Return finding rows of ``kind`` detected at ``ts``, with the given counts and 0 for the others."""
    return pd.DataFrame(
        {
            "subject": subject,
            "day": (ts // DAY).astype(np.int64),
            "detected_at": ts,
            "window_end": ts,
            **{name: counts.get(name, 0) for name in _COUNTS},
            "kind": kind,
        }
    )


def _activations(events: pd.DataFrame, rows: np.ndarray, column: str, requests: int) -> pd.DataFrame:
    """Return, per subject, UTC day and value of ``column``, the time of its ``requests``-th request among ``rows``.

    Values with a negative code (unknown) are left out. Rows are in time order.
    """
    values = events[column].to_numpy()
    chosen = rows & (values >= 0)
    subject = events["subject"].to_numpy()[chosen]
    ts = events["ts"].to_numpy()[chosen]
    day = (ts // DAY).astype(np.int64)
    values = values[chosen]

    nth = _running_count(subject, day, values) == requests
    frame = pd.DataFrame({"subject": subject[nth], "day": day[nth], "ts": ts[nth], column: values[nth]})
    return frame.sort_values("ts", kind="stable")


def _running_count(subject: np.ndarray, day: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Number each request within its (subject, day, value), from 1, for requests sorted by subject and time."""
    width = int(values.max()) + 1 if len(values) else 1
    keys = run_numbers(run_starts(subject, day), len(subject)) * width + values
    order = np.argsort(keys, kind="stable")
    starts = run_starts(keys[order])
    rank = np.arange(len(keys)) - np.repeat(starts, np.diff(np.append(starts, len(keys))))
    count = np.empty(len(keys), dtype=np.int64)
    count[order] = rank + 1
    return count


def _settled_networks(events: pd.DataFrame, seconds: float) -> np.ndarray:
    """Mark the requests on a network the subject has used for at least ``seconds``, counted from its first request there."""
    first_use = events.groupby(["subject", "net"], sort=False)["ts"].transform("min").to_numpy()
    return events["ts"].to_numpy() - first_use >= seconds


def distinct_networks_so_far(rows: pd.DataFrame, earlier: pd.DataFrame | None = None) -> np.ndarray:
    """Count, at each concurrent switch, the distinct networks seen in the subject's switches.

    ``earlier`` (``subject``, ``net``) lists networks that took part in switches before ``rows``.
    """
    pairs = pd.DataFrame(
        {
            "subject": np.concatenate([rows["subject"], rows["subject"]]),
            "order": np.concatenate([np.arange(len(rows)), np.arange(len(rows))]),
            "net": np.concatenate([rows["previous_net"], rows["net"]]),
        }
    ).sort_values("order", kind="stable")
    if earlier is not None:
        pairs = pd.concat([earlier[["subject", "net"]].assign(order=-1), pairs], ignore_index=True)
    new_network = ~pairs.duplicated(["subject", "net"])
    running = new_network.groupby(pairs["subject"]).cumsum()
    counts = running.groupby(pairs["order"]).max()
    return counts[counts.index >= 0].to_numpy()


def count_marked(marked: np.ndarray, targets: np.ndarray, seconds: float) -> np.ndarray:
    """Count the composite times ``marked`` in the trailing ``seconds`` of each composite time in ``targets``.

    Marks at a target's own millisecond count, even those after it in event order.
    """
    upper = np.searchsorted(marked, targets, side="right")
    lower = np.searchsorted(marked, targets - int(seconds * 1000), side="right")
    return upper - lower


def _spread_so_far(prepared: PreparedEvents, subjects: np.ndarray, times: np.ndarray) -> pd.DataFrame:
    """Distinct networks, countries and user agents of each subject from UTC midnight up to each time."""
    events = prepared.events
    # The counts restart at each UTC midnight, so the days before the earliest time are not read.
    first_day_start = times.min() // DAY * DAY if len(times) else 0.0
    involved = np.flatnonzero(
        np.isin(events["subject"].to_numpy(), np.unique(subjects)) & (events["ts"].to_numpy() >= first_day_start)
    )
    subject = events["subject"].to_numpy()[involved]
    day = (events["ts"].to_numpy()[involved] // DAY).astype(np.int64)
    keys = prepared.composite_time[involved]

    # Position of the last event at or before each time, within the involved events.
    targets = (subjects.astype(np.int64) << 41) | np.round(times * 1000).astype(np.int64)
    positions = np.searchsorted(keys, targets, side="right") - 1

    counts = {}
    for name, column in SPREAD_COLUMNS.items():
        values = events[column].to_numpy()[involved]
        running = running_distinct(subject, day, values, values >= 0)
        counts[name] = running[positions] if len(positions) else np.array([], dtype=np.int64)
    return pd.DataFrame(counts)


def running_distinct(subject: np.ndarray, day: np.ndarray, values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Count, at each row, the distinct ``known`` values of its (subject, day) up to it; rows are grouped by subject."""
    frame = pd.DataFrame({"subject": subject, "day": day, "value": values})
    new = (~frame.duplicated(["subject", "day", "value"])).to_numpy() & known
    return pd.Series(new.astype(np.int64)).groupby([subject, day], sort=False).cumsum().to_numpy()
