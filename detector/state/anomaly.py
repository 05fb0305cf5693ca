"""anomaly from per-subject state: the counts and sums of each subject's open UTC day."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.detectors.anomaly import AnomalyDetector
from detector.features import PreparedEvents
from detector.features.keyday import DAY, NANO, nano_credits, with_features
from detector.features.runs import run_starts
from detector.state.chunk import UNKNOWN_PROMPT, Chunk, ChunkFindings, inexact_subjects
from detector.state.table import SubjectKey, SubjectStates

# Kinds of value rows: distinct values are counted for the first four, the most frequent one for the last two.
NETWORK, USER_AGENT, COUNTRY, HOUR, PROMPT, BUCKET = range(6)
_DISTINCT = {"networks": NETWORK, "user_agents": USER_AGENT, "countries": COUNTRY, "active_hours": HOUR}
_MOST_FREQUENT = {"top_prompt": PROMPT, "peak_10m": BUCKET}

_SUMS = ("requests", "cost_nano", "images", "tokens", "errors")


class AnomalyDayState:
    """Each subject's open UTC day as counts, sums and value rows, scored as the day closes.

    Per subject: the open day's request count, cost in nano-credits, images,
    tokens, errors and first and last request time, and one row per distinct
    network, user agent, country, hour, prompt and 10-minute bucket with its
    request count. Networks, user agents, countries and prompts are kept as
    64-bit hashes of their text, so two values whose hashes collide count as
    one (one chance in 2**64 per pair).

    A day is scored once it is closed: it ended before the newest event seen
    so far, as ``AnomalyDetector`` closes the days of its input. A subject's
    day is scored in the chunk that closes it when the subject has events in
    that chunk. Otherwise it waits for the subject's next chunk or for
    ``close_days``, which a caller runs at the end of its input or on a clock
    (a quiet key's last day). After ``close_days`` at the newest event of a
    time-sorted input, the findings equal those of the batch detector on the
    whole input, except for the subjects reported in ``ChunkFindings.inexact``.
    A day with prompts that never repeat carries one row per request until it
    closes.
    """

    def __init__(self, detector: AnomalyDetector) -> None:
        self.detector = detector
        self.days = SubjectStates(
            values={
                "last_ms": ("int64", -1),
                "plan": ("uint64", 0),
                "day": ("int64", -1),
                **{name: ("int64", 0) for name in _SUMS},
                "window_start": ("float64", np.nan),
                "window_end": ("float64", np.nan),
                "daily_budget": ("float64", 0.0),
                "expected_rph": ("float64", 0.0),
            },
            rows={"kind": "int64", "value": "uint64", "count": "int64"},
        )
        self.newest = -np.inf
        # The account and plan names of each subject's latest request, for the findings of ``close_days``.
        self.names: dict[SubjectKey, tuple[str, str]] = {}

    def update(self, chunk: Chunk) -> ChunkFindings:
        """Add ``chunk``'s events to their subjects' open days and return the findings of the days that closed."""
        taken = self.days.take(chunk.keys)
        inexact = inexact_subjects(chunk, taken)
        self.newest = max(self.newest, float(chunk.prepared.events["ts"].max()))

        carried = pd.DataFrame(taken.values)
        open_days = carried["day"].to_numpy() >= 0
        sums = _day_sums(pd.concat([_carried_sums(carried, open_days), _chunk_sums(chunk)], ignore_index=True))
        counts, value_rows = _value_counts(_carried_rows(pd.DataFrame(taken.rows), carried), _chunk_rows(chunk))
        days = sums.merge(counts, on=["subject", "day"], how="left", validate="one_to_one")

        closed = (days["day"].to_numpy() + 1) * DAY <= self.newest
        found = self._findings(chunk.prepared, days[closed])
        self._carry_on(chunk, carried, days[~closed], value_rows)

        subjects = chunk.prepared.subjects
        self.names.update(zip(chunk.keys, zip(subjects["account_id"].tolist(), subjects["plan"].tolist())))
        return ChunkFindings(findings=found, inexact=inexact)

    def close_days(self, as_of: float) -> list:
        """Score the open days of every subject that ended before ``as_of`` and drop them from the state."""
        keys = list(self.names)
        if not keys:
            return []
        taken = self.days.take(keys)
        carried = pd.DataFrame(taken.values)
        rows = pd.DataFrame(taken.rows)
        ended = (carried["day"].to_numpy() >= 0) & ((carried["day"].to_numpy() + 1) * DAY <= as_of)
        if not ended.any():
            return []

        sums = _day_sums(_carried_sums(carried, ended))
        counts, _ = _value_counts(_carried_rows(rows[ended[rows["owner"].to_numpy()]], carried), _no_rows())
        days = sums.merge(counts, on=["subject", "day"], how="left", validate="one_to_one")
        found = self._findings(self._named_subjects(keys, carried), days)

        chosen = np.flatnonzero(ended)
        cleared = carried.iloc[chosen].assign(day=-1, **{name: 0 for name in _SUMS}).reset_index(drop=True)
        self.days.put([keys[index] for index in chosen], _columns(cleared), _columns(_no_rows().assign(owner=np.empty(0, np.int64))))
        return found

    def _findings(self, prepared: PreparedEvents, days: pd.DataFrame) -> list:
        if days.empty:
            return []
        rows = days.rename(columns={"cost_nano": "cost"}).assign(cost=lambda table: table["cost"] / NANO)
        return self.detector.day_findings(prepared, with_features(rows.reset_index(drop=True), prepared.subjects))

    def _carry_on(self, chunk: Chunk, carried: pd.DataFrame, still_open: pd.DataFrame, rows: pd.DataFrame) -> None:
        """Put each chunk subject's open day, if any, back into the state with its value rows.

        ``rows`` contains the value rows of every (subject, day) of the chunk, merged with the carried ones.
        """
        subjects = chunk.prepared.subjects
        table = carried.copy()
        table["last_ms"] = np.maximum(chunk.last_ms, carried["last_ms"].to_numpy())
        table["plan"] = chunk.plan_hash
        table["daily_budget"] = subjects["daily_budget"].to_numpy()
        table["expected_rph"] = subjects["expected_rph"].to_numpy()
        table["day"] = -1
        for name in _SUMS:
            table[name] = 0
        owners = still_open["subject"].to_numpy()
        table.loc[owners, "day"] = still_open["day"].to_numpy()
        for name in (*_SUMS, "window_start", "window_end"):
            table.loc[owners, name] = still_open[name].to_numpy()

        open_day = table["day"].to_numpy()[rows["subject"].to_numpy()]
        rows = rows[rows["day"].to_numpy() == open_day].rename(columns={"subject": "owner"})
        self.days.put(chunk.keys, _columns(table), _columns(rows[["owner", "kind", "value", "count"]]))

    def _named_subjects(self, keys: list[SubjectKey], carried: pd.DataFrame) -> PreparedEvents:
        """Return a ``PreparedEvents`` with only the subject table of ``keys``, for findings outside a chunk."""
        subjects = pd.DataFrame(
            {
                "subject_type": [key[0] for key in keys],
                "subject": [key[1] for key in keys],
                "account_id": [self.names[key][0] for key in keys],
                "plan": [self.names[key][1] for key in keys],
                "daily_budget": carried["daily_budget"].to_numpy(),
                "expected_rph": carried["expected_rph"].to_numpy(),
            }
        )
        return PreparedEvents(events=pd.DataFrame(), subjects=subjects, networks=[])


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Return ``frame``'s columns as the plain arrays ``SubjectStates.put`` takes."""
    return {name: frame[name].to_numpy() for name in frame.columns}


def _chunk_sums(chunk: Chunk) -> pd.DataFrame:
    """Return the sums of the chunk's events per (subject, day)."""
    events = chunk.prepared.events
    ts = events["ts"].to_numpy()
    subject = events["subject"].to_numpy()
    day = (ts // DAY).astype(np.int64)
    starts = run_starts(subject, day)
    ends = np.append(starts[1:], len(ts)) - 1
    return pd.DataFrame(
        {
            "subject": subject[starts],
            "day": day[starts],
            "requests": ends - starts + 1,
            "cost_nano": np.add.reduceat(nano_credits(events["cost"].to_numpy()), starts),
            "images": np.add.reduceat(events["images"].to_numpy().astype(np.int64), starts),
            "tokens": np.add.reduceat(
                (events["prompt_tokens"].to_numpy() + events["completion_tokens"].to_numpy()).astype(np.int64), starts
            ),
            "errors": np.add.reduceat((events["status"].to_numpy() >= 400).astype(np.int64), starts),
            "window_start": ts[starts],
            "window_end": ts[ends],
        }
    )


def _carried_sums(carried: pd.DataFrame, chosen: np.ndarray) -> pd.DataFrame:
    """Return the carried open days of the ``chosen`` subjects as rows like ``_chunk_sums``."""
    rows = carried[chosen]
    return pd.DataFrame(
        {
            "subject": np.flatnonzero(chosen),
            "day": rows["day"].to_numpy(),
            **{name: rows[name].to_numpy() for name in _SUMS},
            "window_start": rows["window_start"].to_numpy(),
            "window_end": rows["window_end"].to_numpy(),
        }
    )


def _day_sums(parts: pd.DataFrame) -> pd.DataFrame:
    """Add up the carried and new parts of each (subject, day)."""
    grouped = parts.groupby(["subject", "day"], sort=True)
    return grouped.agg(
        **{name: (name, "sum") for name in _SUMS}, window_start=("window_start", "min"), window_end=("window_end", "max")
    ).reset_index()


def _chunk_rows(chunk: Chunk) -> pd.DataFrame:
    """Return one value row per event and kind (value unknown or blank: no row), with ``subject``, ``day`` and ``count`` 1."""
    events = chunk.prepared.events
    ts = events["ts"].to_numpy()
    subject = events["subject"].to_numpy()
    day = (ts // DAY).astype(np.int64)
    parts = []
    for kind, values, known in (
        (NETWORK, *_network_hashes(chunk)),
        (USER_AGENT, *_text_hashes(chunk, "user_agent", blank_known=True)),
        (COUNTRY, *_text_hashes(chunk, "country", blank_known=False)),
        (HOUR, (ts // 3600).astype(np.uint64), np.ones(len(ts), dtype=bool)),
        (PROMPT, chunk.prompt_hash, chunk.prompt_hash != UNKNOWN_PROMPT),
        (BUCKET, (ts // 600).astype(np.uint64), np.ones(len(ts), dtype=bool)),
    ):
        parts.append(
            pd.DataFrame({"subject": subject[known], "day": day[known], "kind": kind, "value": values[known], "count": 1})
        )
    return pd.concat(parts, ignore_index=True)


def _carried_rows(rows: pd.DataFrame, carried: pd.DataFrame) -> pd.DataFrame:
    """Return carried value rows with ``subject`` and the ``day`` of their subject's open day."""
    owner = rows["owner"].to_numpy()
    return pd.DataFrame(
        {
            "subject": owner,
            "day": carried["day"].to_numpy()[owner],
            "kind": rows["kind"].to_numpy(),
            "value": rows["value"].to_numpy(),
            "count": rows["count"].to_numpy(),
        }
    )


def _no_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject": np.empty(0, np.int64),
            "day": np.empty(0, np.int64),
            "kind": np.empty(0, np.int64),
            "value": np.empty(0, np.uint64),
            "count": np.empty(0, np.int64),
        }
    )


def _value_counts(carried: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return, per (subject, day), the distinct and most-frequent counts of each kind, and the merged value rows.

    The merged rows, one per (subject, day, kind, value) with its count, are
    what the days that stay open carry on.
    """
    rows = (
        pd.concat([carried, new], ignore_index=True)
        .groupby(["subject", "day", "kind", "value"], sort=True, as_index=False)["count"]
        .sum()
    )
    per_kind = rows.groupby(["subject", "day", "kind"])["count"]
    distinct = per_kind.size().unstack("kind")
    highest = per_kind.max().unstack("kind")

    table = pd.DataFrame(index=distinct.index)
    for name, kind in _DISTINCT.items():
        table[name] = distinct[kind].fillna(0).astype(np.int64) if kind in distinct else 0
    for name, kind in _MOST_FREQUENT.items():
        table[name] = highest[kind].fillna(0).astype(np.int64) if kind in highest else 0
    return table.reset_index(), rows


def _network_hashes(chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """Return a hash of each event's network text, and where its network is known."""
    codes = chunk.prepared.events["net"].to_numpy()
    networks = np.asarray(chunk.prepared.networks, dtype=object)
    hashed = pd.util.hash_array(networks) if len(networks) else np.zeros(1, np.uint64)
    return hashed[np.maximum(codes, 0)], codes >= 0


def _text_hashes(chunk: Chunk, column: str, *, blank_known: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return a hash of each prepared event's ``column`` text, and where it counts: blank counts only with ``blank_known``."""
    codes, uniques = pd.factorize(chunk.frame[column])
    uniques = np.asarray(uniques, dtype=object)
    hashed = pd.util.hash_array(uniques) if len(uniques) else np.zeros(1, np.uint64)
    rows = chunk.prepared.input_rows
    values = hashed[np.maximum(codes, 0)][rows]
    known = codes[rows] >= 0
    if not blank_known and len(uniques):
        known &= uniques[np.maximum(codes, 0)][rows] != ""
    return values, known
