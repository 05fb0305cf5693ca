"""Escalation steps carried from one chunk to the next (see ``detector.detectors.base.escalations``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.detectors.base import best_steps, escalation_steps
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

    group = ["subject", period]
    score_step, impact_step = escalation_steps(rows)
    best_score, best_impact = best_steps(rows, group, score_step, impact_step)
    best_score = np.fmax(best_score.to_numpy(dtype=np.float64), carried_score)
    best_impact = np.fmax(best_impact.to_numpy(dtype=np.float64), carried_impact)

    # Each (subject, period) group is one run of rows, so the row before within the group is the row before.
    starts = run_starts(subject, rows[period].to_numpy())
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
