"""Hourly activity of subjects under review, kept for the case page's charts.

The store keeps no raw events, so scoring writes one row per clock hour for
each subject that has a decision (from the pass or stored) or an open case.
Subjects with findings and no decision get no rows: most of them are found
and left alone, and writing their hours cost a batch run about a fifth of
its scoring time. A row contains
the requests, the cost, the distinct networks, countries and user agents, and
a histogram of the gaps between consecutive requests. Rows contain counts
only, never an address.

A pass replaces the rows of the hours it covers. The window worker scores a
subject's whole Redis window (up to 7 days) with each micro-batch, so its
hours are complete. The state worker keeps hourly counts instead
(``workers.state_activity``). A batch run replaces them with what its files hold.
Rows older than ``RETENTION`` are removed as new ones are written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy import Engine, and_, bindparam, delete, insert, select
from sqlalchemy.orm import Session

from detector.features import PreparedEvents
from detector.features.runs import distinct_per_run, run_numbers, run_starts
from detector.store.repository import subjects_with_rows
from detector.store.review_models import ActivityRow, CaseRow

RETENTION = timedelta(days=30)
CHART_HOURS = 7 * 24
# Upper edges, in seconds, of the inter-arrival histogram's bins; the last bin is open-ended.
GAP_EDGES = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
GAP_LABELS = ("<1s", "1-2s", "2-5s", "5-10s", "10-30s", "30s-1m", "1-2m", "2-5m", "5-10m", "10-30m", "30m-1h", ">1h")
_CHUNK = 500


@dataclass(slots=True)
class ActivitySeries:
    """Seven days of one subject's hourly activity, hours without requests as zeros."""

    hours: pd.DatetimeIndex
    requests: np.ndarray
    cost: np.ndarray
    networks: np.ndarray
    countries: np.ndarray
    user_agents: np.ndarray
    gaps: np.ndarray

    @property
    def empty(self) -> bool:
        return not self.requests.any()


def hourly_activity(
    prepared: PreparedEvents,
    subjects: Iterable[tuple[str, str]],
    since: float | None = None,
    whole: Iterable[tuple[str, str]] = (),
) -> pd.DataFrame:
    """Return one row per (subject, clock hour) of ``subjects``, with the columns of ``ActivityRow``.

    With ``since`` (epoch seconds), only the clock hours from the one holding
    ``since`` on, except for the subjects in ``whole``, which get every hour.
    """
    chosen = _chosen_rows(prepared, subjects, since, whole)
    if not chosen.any():
        return pd.DataFrame(columns=["subject_type", "subject", "hour", "requests", "cost", "networks",
                                     "countries", "user_agents", "gaps"])

    events = prepared.events
    subject = events["subject"].to_numpy()[chosen]
    hour = (events["ts"].to_numpy()[chosen] // 3600).astype(np.int64)
    # Events are sorted by subject and time, so each (subject, hour) is one run, in sorted order.
    starts = run_starts(subject, hour)
    run = run_numbers(starts, len(subject))
    cost = pd.Series(events["cost"].to_numpy(dtype=np.float64)[chosen])
    ua = events["ua"].to_numpy()[chosen]
    rows = pd.DataFrame({
        "subject": subject[starts],
        "hour": hour[starts],
        "requests": np.diff(np.append(starts, len(subject))),
        # A pandas group sum (compensated summation), so the stored costs stay as they were.
        "cost": cost.groupby(run, sort=False).sum().to_numpy(),
        "networks": distinct_per_run(run, events["net"].to_numpy()[chosen], len(starts)),
        "countries": distinct_per_run(run, events["country"].to_numpy()[chosen], len(starts)),
        # An unknown user agent (-1) counts as one more user agent.
        "user_agents": distinct_per_run(run, ua - ua.min(initial=0), len(starts)),
    })
    rows["gaps"] = _gap_histograms(events["iat"].to_numpy()[chosen], run, len(starts)).tolist()

    table = prepared.subjects
    rows["subject_type"] = table["subject_type"].to_numpy()[rows["subject"]]
    # PostgreSQL text cannot contain NUL, so identifiers are stored as the decision store stores them.
    rows["subject"] = [str(name).replace("\x00", "\ufffd") for name in table["subject"].to_numpy()[rows["subject"]]]
    rows["hour"] = [datetime.fromtimestamp(hour * 3600, UTC) for hour in rows["hour"]]
    return rows


def _chosen_rows(
    prepared: PreparedEvents, subjects: Iterable[tuple[str, str]], since: float | None,
    whole: Iterable[tuple[str, str]],
) -> np.ndarray:
    """Mark the events of ``subjects``, from the hour holding ``since`` on except for the subjects in ``whole``."""
    subject = prepared.events["subject"].to_numpy()
    chosen = np.isin(subject, _codes(prepared, subjects))
    if since is not None:
        recent = prepared.events["ts"].to_numpy() >= since // 3600 * 3600
        chosen &= recent | np.isin(subject, _codes(prepared, whole))
    return chosen


def _gap_histograms(iat: np.ndarray, run: np.ndarray, runs: int) -> np.ndarray:
    """Return per run the counts of gaps in each ``GAP_LABELS`` bin; a subject's first request has no gap."""
    has_gap = ~np.isnan(iat)
    cells = run[has_gap] * len(GAP_LABELS) + np.digitize(iat[has_gap], GAP_EDGES)
    return np.bincount(cells, minlength=runs * len(GAP_LABELS)).reshape(runs, len(GAP_LABELS))


def _codes(prepared: PreparedEvents, subjects: Iterable[tuple[str, str]]) -> list[int]:
    """Return the subject codes of ``prepared`` for the given (subject_type, subject) pairs."""
    table = prepared.subjects
    chosen = set(subjects)
    return [code for code, key in enumerate(zip(table["subject_type"], table["subject"])) if key in chosen]


class ActivityLog:
    """Reads and writes ``subject_activity`` rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self, prepared: PreparedEvents, acted_on: Iterable[tuple[str, str]], *,
        since: float | None = None, newly: Iterable[tuple[str, str]] = (), now: datetime | None = None,
    ) -> int:
        """Store the hourly activity of ``acted_on`` subjects and of those with an open case; return the rows written.

        ``since`` (epoch seconds) limits the rewrite to the hours from the one
        holding it on: a stream worker passes its new events' earliest time,
        because the hours before are already stored. Subjects in ``newly``,
        acted on for the first time, get every hour, since none are stored.
        """
        now = now or datetime.now(UTC)
        table = prepared.subjects
        present = set(zip(table["subject_type"], table["subject"]))
        subjects = (set(acted_on) & present) | self._under_review(present)
        if not subjects:
            return 0
        rows = hourly_activity(prepared, subjects, since, whole=newly)
        if rows.empty:
            return 0
        return self.store_rows(rows, now=now)

    def store_rows(self, rows: pd.DataFrame, *, now: datetime | None = None) -> int:
        """Replace each subject's stored hours from its first to its last hour in ``rows``; return the rows written.

        ``rows`` has the columns of ``ActivityRow``. Rows older than ``RETENTION`` before ``now`` are removed.
        """
        self._replace(rows)
        self._prune((now or datetime.now(UTC)) - RETENTION)
        return len(rows)

    def series(self, subject_type: str, subject: str, *, end: datetime | None = None) -> ActivitySeries:
        """Return ``CHART_HOURS`` hours of activity, the last one being the hour of ``end``.

        Without ``end`` the window ends at the subject's newest stored hour, or
        at the current hour when that is earlier, so the charts of a subject
        scored from an old log still show its traffic.
        """
        now_hour = _floor_hour(datetime.now(UTC))
        with Session(self.engine) as session:
            if end is None:
                newest = session.scalar(
                    select(ActivityRow.hour).where(*_is_subject(subject_type, subject))
                    .order_by(ActivityRow.hour.desc()).limit(1)
                )
                last = min(newest, now_hour) if newest else now_hour
            else:
                last = _floor_hour(end)
            hours = pd.date_range(end=last, periods=CHART_HOURS, freq="h")
            found = session.scalars(
                select(ActivityRow).where(*_is_subject(subject_type, subject))
                .where(ActivityRow.hour >= hours[0].to_pydatetime(), ActivityRow.hour <= last)
            ).all()
        return _to_series(found, hours)

    def _under_review(self, present: set[tuple[str, str]]) -> set[tuple[str, str]]:
        with Session(self.engine) as session:
            return subjects_with_rows(session, CaseRow, present, CaseRow.status == "open")

    def _replace(self, rows: pd.DataFrame) -> None:
        spans = rows.groupby(["subject_type", "subject"])["hour"].agg(["min", "max"]).reset_index()
        # One executemany for all subjects: delete each subject's rows in the span being rewritten.
        clear = delete(ActivityRow).where(
            ActivityRow.subject_type == bindparam("kind"), ActivityRow.subject == bindparam("name"),
            ActivityRow.hour >= bindparam("first"), ActivityRow.hour <= bindparam("last"),
        )
        spans_params = [
            {"kind": kind, "name": name, "first": first.to_pydatetime() if hasattr(first, "to_pydatetime") else first,
             "last": last.to_pydatetime() if hasattr(last, "to_pydatetime") else last}
            for kind, name, first, last in spans.itertuples(index=False)
        ]
        records = _records(rows)
        with self.engine.begin() as connection:
            connection.execute(clear, spans_params)
            for start in range(0, len(records), _CHUNK):
                connection.execute(insert(ActivityRow), records[start : start + _CHUNK])

    def _prune(self, before: datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(ActivityRow).where(ActivityRow.hour < before))


def _records(rows: pd.DataFrame) -> list[dict]:
    """Return ``rows`` as insert parameters of plain Python values."""
    names = ("subject_type", "subject", "hour", "requests", "cost", "networks", "countries", "user_agents", "gaps")
    # tolist() gives Python ints and floats, which every database driver takes.
    columns = [rows[name].tolist() for name in names]
    if pd.api.types.is_datetime64_any_dtype(rows["hour"]):
        # One conversion of the whole column: per value, to_pydatetime took most of this function's time.
        columns[2] = rows["hour"].dt.to_pydatetime().tolist()
    else:
        columns[2] = [hour.to_pydatetime() if hasattr(hour, "to_pydatetime") else hour for hour in columns[2]]
    return [dict(zip(names, values)) for values in zip(*columns)]


def _is_subject(subject_type: str, subject: str):
    return (and_(ActivityRow.subject_type == subject_type, ActivityRow.subject == subject),)


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _to_series(rows: list[ActivityRow], hours: pd.DatetimeIndex) -> ActivitySeries:
    position = {hour.to_pydatetime(): index for index, hour in enumerate(hours)}
    columns = {name: np.zeros(len(hours)) for name in ("requests", "cost", "networks", "countries", "user_agents")}
    gaps = np.zeros(len(GAP_LABELS), dtype=np.int64)
    for row in rows:
        index = position.get(row.hour)
        if index is None:
            continue
        for name in columns:
            columns[name][index] = getattr(row, name)
        gaps += np.asarray(row.gaps, dtype=np.int64)
    return ActivitySeries(hours=hours, gaps=gaps, **columns)
