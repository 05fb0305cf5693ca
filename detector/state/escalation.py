"""Escalation steps carried from one chunk to the next (see ``detector.detectors.base.escalations``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.detectors.base import escalation_steps
from detector.features.runs import run_starts
from detector.state.table import Columns

# Per-subject state columns of the current period's escalation: the period number and its best steps so far.
ESCALATION_VALUES: dict[str, tuple[str, object]] = {
    "period": ("int64", -1),
    "best_score": ("int64", 0),
    "best_impact": ("int64", 0),
}


def escalations_after(rows: pd.DataFrame, period: str, carried: Columns) -> tuple[pd.DataFrame, Columns]:
    """Keep the escalation rows of ``rows`` given the steps carried from earlier chunks, and return the steps to carry on.

    ``rows`` are sorted by ``subject`` (the code that indexes ``carried``) then
    time. A subject's carried steps count for rows of the same ``period`` only.
    The returned columns have one entry per code in ``carried``: the period and
    best steps of its last row, or the carried ones when it has no rows.
    """
    carry_on = unchanged_steps(carried)
    if rows.empty:
        return rows, carry_on
    subject = rows["subject"].to_numpy()
    same = carried["period"][subject] == rows[period].to_numpy()
    carried_score = np.where(same, carried["best_score"][subject], np.nan)
    carried_impact = np.where(same, carried["best_impact"][subject], np.nan)

    # Each (subject, period) group is one run of rows, so the row before within the group is the row before.
    starts = run_starts(subject, rows[period].to_numpy())
    score_step, impact_step = escalation_steps(rows)
    best_score = np.fmax(_running_max(score_step, starts), carried_score)
    best_impact = np.fmax(_running_max(impact_step, starts), carried_impact)
    previous_score = np.concatenate(([np.nan], best_score[:-1]))
    previous_impact = np.concatenate(([np.nan], best_impact[:-1]))
    previous_score[starts] = carried_score[starts]
    previous_impact[starts] = carried_impact[starts]

    first = np.isnan(previous_score)
    grew = (best_score > previous_score) | (best_impact > previous_impact)
    kept = rows[first | grew]

    last = np.append(subject[1:] != subject[:-1], True)
    carry_on["period"][subject[last]] = rows[period].to_numpy()[last]
    carry_on["best_score"][subject[last]] = best_score[last]
    carry_on["best_impact"][subject[last]] = best_impact[last]
    return kept, carry_on


def unchanged_steps(carried: Columns) -> Columns:
    """Return a copy of the carried escalation values, for a chunk that escalated nothing."""
    return {name: carried[name].copy() for name in ESCALATION_VALUES}


def _running_max(steps: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Return the running maximum of integer ``steps`` within each run, given the rows where runs start, as floats.

    Each run is lifted above all earlier ones by an offset larger than any
    range of steps, so one running maximum over all rows restarts at each run.
    """
    run = np.zeros(len(steps), np.int64)
    run[starts[1:]] = 1
    run = np.cumsum(run)
    low = int(steps.min()) if len(steps) else 0
    offset = (int(steps.max()) - low + 1) if len(steps) else 1
    lifted = (steps - low) + run * offset
    return (np.maximum.accumulate(lifted) - run * offset + low).astype(np.float64)
