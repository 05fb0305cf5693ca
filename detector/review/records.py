"""Conversions between ``Decision`` records and ``DecisionRow`` rows inside a staff action's session."""

from __future__ import annotations

from dataclasses import fields

from detector.decisions import Decision
from detector.store.models import DecisionRow

_FIELDS = tuple(field.name for field in fields(Decision))


def decision_from_row(row: DecisionRow) -> Decision:
    values = {name: getattr(row, name) for name in _FIELDS}
    values["reasons"] = list(values["reasons"])
    values["evidence"] = dict(values["evidence"])
    values["extra"] = dict(values["extra"] or {})
    return Decision(**values)


def decision_row(decision: Decision) -> DecisionRow:
    return DecisionRow(**{name: getattr(decision, name) for name in _FIELDS})
