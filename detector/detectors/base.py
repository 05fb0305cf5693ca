"""The detector contract: findings with evidence, never actions."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from detector.features import PreparedEvents


@dataclass(frozen=True, slots=True)
class Finding:
    """One pattern a detector saw on one subject in one window.

    ``score`` (0–100) measures how clearly the pattern holds. ``impact`` is the
    subject's volume, spend or use relative to what its plan treats as fair,
    where 1.0 is exactly at the plan's limit. Policy reads both; detectors act on
    neither. ``detected_at`` is the event time (epoch seconds) at which the
    evidence first crossed the detector's threshold within the window.
    """

    subject_type: str
    subject: str
    account_id: str
    plan: str
    reason: str
    score: float
    impact: float
    detected_at: float
    window_start: float
    window_end: float
    origin: str
    evidence: dict[str, Any] = field(default_factory=dict)


class Detector(Protocol):
    """A stateless pass over prepared events that returns findings for one reason code.

    ``detect`` may take a keyword ``since`` (epoch seconds, or None). With it,
    the detector returns the same findings with ``detected_at >= since`` as
    without it, and may leave out those before ``since``. Earlier events are
    still read as context. Findings that depend on the whole input, not only
    on events up to them, come back as they do without ``since``.
    """

    reason: str
    version: str

    def detect(self, prepared: PreparedEvents) -> list[Finding]: ...


def detect_since(detector: Detector, prepared: PreparedEvents, since: float | None) -> list[Finding]:
    """Run ``detector`` on ``prepared``, passing ``since`` only when it is set.

    A detector whose ``detect`` takes no ``since`` still works: without
    ``since`` every finding is returned, which includes those at or after it.
    """
    if since is None or "since" not in inspect.signature(detector.detect).parameters:
        return detector.detect(prepared)
    return detector.detect(prepared, since=since)  # type: ignore[call-arg]


def from_period_start(ts: np.ndarray, since: float | None, period: float) -> np.ndarray | None:
    """Mark the rows at or after the start of the ``period``-second clock period holding ``since``, or return None without ``since``.

    A detector escalates findings per subject and period (``escalations``), so
    it needs the rows from the period's start to find the same escalations
    from ``since`` on.
    """
    if since is None:
        return None
    return ts >= since // period * period


def at_or_after(rows: pd.DataFrame, since: float | None) -> pd.DataFrame:
    """Keep the rows detected at or after ``since``, or all rows without ``since``."""
    if since is None:
        return rows
    return rows[(rows["detected_at"] >= since).to_numpy()]


def findings_from_rows(
    prepared: PreparedEvents,
    rows: pd.DataFrame,
    *,
    reason: str,
    origin: str,
    evidence_columns: dict[str, str],
    window: str,
    thresholds: dict[str, Any],
) -> list[Finding]:
    """Build findings from detector output rows.

    ``rows`` needs ``subject`` (code), ``score``, ``impact``, ``detected_at``,
    ``window_start``, ``window_end`` and the columns named in ``evidence_columns``
    (evidence key -> column).
    """
    subjects = prepared.subjects
    subject_types = subjects["subject_type"].tolist()
    names = subjects["subject"].tolist()
    accounts = subjects["account_id"].tolist()
    plans = subjects["plan"].tolist()

    # Whole columns as Python values: one tolist() per column is much faster than
    # reading each row's values one by one, and gives the same Python scalars.
    columns = {name: rows[name].tolist() for name in ("subject", "score", "impact", "detected_at", "window_start", "window_end")}
    evidence_values = {key: rows[column].tolist() for key, column in evidence_columns.items()}

    findings = []
    for index, code in enumerate(columns["subject"]):
        code = int(code)
        evidence: dict[str, Any] = {key: _plain(values[index]) for key, values in evidence_values.items()}
        evidence["window"] = window
        evidence["thresholds"] = thresholds
        findings.append(
            Finding(
                subject_type=str(subject_types[code]),
                subject=str(names[code]),
                account_id=str(accounts[code]),
                plan=str(plans[code]),
                reason=reason,
                score=round(float(columns["score"][index]), 1),
                impact=round(float(columns["impact"][index]), 3),
                detected_at=float(columns["detected_at"][index]),
                window_start=float(columns["window_start"][index]),
                window_end=float(columns["window_end"][index]),
                origin=origin,
                evidence=evidence,
            )
        )
    return findings


def _plain(value: Any) -> Any:
    """Convert numpy scalars to JSON-friendly Python values, rounding floats."""
    if type(value) is float:  # the common case, without the numpy calls below
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, (np.floating, float)):
        # JSON has no Infinity or NaN, and PostgreSQL rejects them in jsonb.
        return round(float(value), 4) if np.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def escalations(rows: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """Keep, per group, the first row and each row where the score or impact reaches a new step.

    ``rows`` must be in event-time order and carry ``score`` and ``impact``
    measured from events up to that row only. Score steps are 10 points and
    impact steps half an octave (×1.41), so a finding is made when evidence
    first crosses the threshold and again each time it grows by a step. Later
    events never change an earlier finding, so the batch and stream paths see
    the same findings.
    """
    if rows.empty:
        return rows
    score_step, impact_step = escalation_steps(rows)
    best_score, best_impact = best_steps(rows, group, score_step, impact_step)
    keys = [rows[name] for name in group]
    previous_score = best_score.groupby(keys, sort=False).shift(1)
    previous_impact = best_impact.groupby(keys, sort=False).shift(1)

    first = previous_score.isna()
    grew = (best_score > previous_score) | (best_impact > previous_impact)
    return rows[(first | grew).to_numpy()]


def escalation_steps(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's score step (10 points) and impact step (half an octave), as ``escalations`` counts them."""
    score_step = (rows["score"].to_numpy() // 10).astype(np.int64)
    impact = np.maximum(rows["impact"].to_numpy(dtype=np.float64), 1e-9)
    impact_step = np.floor(np.log2(impact) * 2).astype(np.int64)
    return score_step, impact_step


def best_steps(
    rows: pd.DataFrame, group: list[str], score_step: np.ndarray, impact_step: np.ndarray
) -> tuple[pd.Series, pd.Series]:
    """Return the highest score and impact step of each row's group up to and including the row."""
    keys = [rows[name] for name in group]
    best_score = pd.Series(score_step, index=rows.index).groupby(keys, sort=False).cummax()
    best_impact = pd.Series(impact_step, index=rows.index).groupby(keys, sort=False).cummax()
    return best_score, best_impact
