"""key_sharing: one key used from several places at the same time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detector.detectors.base import Finding, findings_from_rows
from detector.features import PreparedEvents

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class KeySharingDetector:
    """Flag keys whose requests alternate between networks within minutes.

    A *concurrent switch* is a request from network B that follows a request
    from network A within ``switch_gap`` seconds, when B itself was in use less
    than ``return_gap`` seconds earlier: the key is going back and forth, so
    both places are using it at once. Moving (a phone roaming inside a carrier,
    a traveller) switches networks in one direction, and a team behind one NAT
    uses one network, so neither produces these switches. Networks are IPv4
    /24 and IPv6 /48 prefixes.

    A finding needs ``min_switches`` concurrent switches in a rolling 24 hours
    and either ``min_networks`` networks taking part in them so far, or two
    networks with a second sign: different user agents on the two sides or an
    impossible trip (a country change within ``travel_gap`` seconds).
    """

    switch_gap: float = 120.0
    return_gap: float = 600.0
    travel_gap: float = 3600.0
    min_switches: int = 3
    min_networks: int = 3
    resale_networks: int = 8
    reason: str = "key_sharing"
    version: str = "1"

    def detect(self, prepared: PreparedEvents) -> list[Finding]:
        events = prepared.events
        if events.empty:
            return []

        signals = self._switch_signals(events)
        concurrent = signals["concurrent"].to_numpy()
        if not concurrent.any():
            return []

        rows = self._concurrent_rows(prepared, signals, concurrent)
        rows = rows[rows["qualifies"]]
        if rows.empty:
            return []

        rows["day"] = (rows["ts"] // DAY).astype(np.int64)
        grouped = rows.groupby(["subject", "day"], sort=False)
        first = grouped.head(1).set_index(["subject", "day"])
        first["networks"] = grouped["networks"].max()
        first["switches_24h"] = grouped["switches_24h"].max()
        first["window_end"] = grouped["ts"].max()
        first = first.reset_index()

        first["score"] = np.clip(40 + 15 * np.minimum(first["networks"], 4), 0, 100)
        first["score"] += np.where(first["impossible_trips_24h"] > 0, 10, 0)
        first["score"] = first["score"].clip(upper=100)
        first["impact"] = first["networks"].astype(float)
        first["detected_at"] = first["ts"]
        first["window_start"] = first["ts"] - DAY

        return findings_from_rows(
            prepared,
            first,
            reason=self.reason,
            origin=f"{self.reason}/{self.version}",
            evidence_columns={
                "concurrent_networks": "networks",
                "concurrent_switches_24h": "switches_24h",
                "impossible_trips_24h": "impossible_trips_24h",
                "user_agents_differ": "ua_differs",
                "networks_24h": "networks_24h",
                "countries_24h": "countries_24h",
                "user_agents_24h": "user_agents_24h",
            },
            window="rolling 24h of concurrent network switches; networks counted since the first",
            thresholds={
                "switch_gap_s": self.switch_gap,
                "return_gap_s": self.return_gap,
                "min_switches": self.min_switches,
                "min_networks": self.min_networks,
                "resale_networks": self.resale_networks,
            },
        )

    def _switch_signals(self, events: pd.DataFrame) -> pd.DataFrame:
        subject = events["subject"].to_numpy()
        net = events["net"].to_numpy()
        ts = events["ts"].to_numpy()

        same_subject = np.zeros(len(events), dtype=bool)
        same_subject[1:] = subject[1:] == subject[:-1]
        previous_net = np.where(same_subject, np.roll(net, 1), -1)
        previous_ua = np.where(same_subject, np.roll(events["ua"].to_numpy(), 1), -1)
        previous_country = np.where(same_subject, np.roll(events["country"].to_numpy(), 1), -1)

        last_on_net = events.groupby(["subject", "net"], sort=False)["ts"].shift(1).to_numpy()
        switched = same_subject & (net >= 0) & (previous_net >= 0) & (net != previous_net)
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
        rows["networks"] = _distinct_networks_so_far(rows)

        trips = signals["impossible_trip"].to_numpy()
        rows["impossible_trips_24h"] = _count_at(prepared, trips, concurrent, DAY)
        involved = events[events["subject"].isin(np.unique(rows["subject"]))]
        rows = rows.join(_daily_spread(involved).reindex(
            pd.MultiIndex.from_arrays([rows["subject"], (rows["ts"] // DAY).astype(np.int64)])
        ).reset_index(drop=True))

        enough_switches = rows["switches_24h"] >= self.min_switches
        many_networks = rows["networks"] >= self.min_networks
        two_with_sign = (rows["networks"] >= 2) & (
            rows["ua_differs"] | (rows["impossible_trips_24h"] > 0)
        )
        rows["qualifies"] = enough_switches & (many_networks | two_with_sign)
        return rows


def _distinct_networks_so_far(rows: pd.DataFrame) -> np.ndarray:
    """Count, at each concurrent switch, the distinct networks seen in the subject's switches."""
    pairs = pd.DataFrame(
        {
            "subject": np.concatenate([rows["subject"], rows["subject"]]),
            "order": np.concatenate([np.arange(len(rows)), np.arange(len(rows))]),
            "net": np.concatenate([rows["previous_net"], rows["net"]]),
        }
    ).sort_values("order", kind="stable")
    new_network = ~pairs.duplicated(["subject", "net"])
    running = new_network.groupby(pairs["subject"]).cumsum()
    return running.groupby(pairs["order"]).max().to_numpy()


def _count_at(
    prepared: PreparedEvents, marks: np.ndarray, at: np.ndarray, seconds: float
) -> np.ndarray:
    """Count ``marks`` in the trailing window of each event selected by ``at``."""
    keys = prepared.composite_time
    marked = keys[marks]
    targets = keys[at]
    upper = np.searchsorted(marked, targets, side="right")
    lower = np.searchsorted(marked, targets - int(seconds * 1000), side="right")
    return upper - lower


def _daily_spread(events: pd.DataFrame) -> pd.DataFrame:
    """Distinct networks, countries and user agents per subject and UTC day."""
    day = (events["ts"].to_numpy() // DAY).astype(np.int64)
    frame = pd.DataFrame(
        {
            "subject": events["subject"].to_numpy(),
            "day": day,
            "net": events["net"].to_numpy(),
            "country": events["country"].to_numpy(),
            "ua": events["ua"].to_numpy(),
        }
    )
    grouped = frame.groupby(["subject", "day"])
    spread = pd.DataFrame(
        {
            "networks_24h": grouped["net"].nunique(),
            "countries_24h": grouped["country"].nunique(),
            "user_agents_24h": grouped["ua"].nunique(),
        }
    )
    return spread
