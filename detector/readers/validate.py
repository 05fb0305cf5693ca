"""Contract validation shared by every reader and by stream consumers.

``validate_batch`` checks each field of a ``RawBatch`` over whole columns and
keeps, for every row, the first field that failed. Only rejected rows are
formatted one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from detector.events import COLUMNS, Reject, empty_frame
from detector.readers.base import INPUT_FIELDS, RawBatch
from detector.readers.checks import (
    Checked,
    check_cost,
    check_count,
    check_country,
    check_identifier,
    check_images,
    check_ip,
    check_latency,
    check_model,
    check_prompt_hash,
    check_status,
    check_stream,
    check_subject_identifier,
    check_subject_type,
    check_user_agent,
)
from detector.readers.columns import RawColumn
from detector.readers.reasons import Problem, describe, json_type_name
from detector.readers.timestamps import check_ts

logger = logging.getLogger(__name__)

# Checks in reject-priority order: a row's reject names the first field that fails.
CHECKS: tuple[tuple[str, Callable[[RawColumn], Checked]], ...] = (
    ("request_id", check_identifier),
    ("ts", check_ts),
    ("account_id", check_subject_identifier),
    ("key_id", check_subject_identifier),
    ("plan", check_identifier),
    ("endpoint", check_identifier),
    ("model", check_model),
    ("prompt_tokens", check_count),
    ("completion_tokens", check_count),
    ("images", check_images),
    ("cost", check_cost),
    ("ip", check_ip),
    ("user_agent", check_user_agent),
    ("status", check_status),
    ("latency_ms", check_latency),
    ("stream", check_stream),
    ("prompt_hash", check_prompt_hash),
    ("country", check_country),
    ("subject_type", check_subject_type),
)


@dataclass
class ValidatedBatch:
    """The valid rows of a batch in canonical columns, and the rejects."""

    # numpy arrays for numbers and booleans, Arrow string arrays for text.
    columns: dict[str, np.ndarray | pa.Array]
    rejects: list[Reject] = field(default_factory=list)
    # Field name -> values that contained API key secrets and were replaced by their hash.
    secrets_replaced: dict[str, int] = field(default_factory=dict)


def validate_batch(batch: RawBatch, source: str) -> ValidatedBatch:
    """Check every field of a batch and split its rows into valid columns and rejects."""
    failed_check = np.full(batch.length, -1, dtype=np.int8)
    failed_problem = np.zeros(batch.length, dtype=np.uint8)
    checked: dict[str, Checked] = {}
    for position, (name, check) in enumerate(CHECKS):
        result = check(batch.column(name))
        first_failure = (result.errors != Problem.OK) & (failed_check < 0)
        failed_check[first_failure] = position
        failed_problem[first_failure] = result.errors[first_failure]
        checked[name] = result

    rejects = []
    for row in np.flatnonzero(failed_check >= 0):
        name = CHECKS[failed_check[row]][0]
        value = batch.column(name).value_at(row)
        reason = describe(Problem(failed_problem[row]), value)
        rejects.append(Reject(source, int(batch.lines[row]), name, reason))

    valid = failed_check < 0
    columns = {name: canonical_values(name, checked[name].values, valid) for name in COLUMNS}
    secrets_replaced = {name: result.secrets_replaced for name, result in checked.items() if result.secrets_replaced}
    return ValidatedBatch(columns, rejects, secrets_replaced)


def canonical_values(name: str, values: np.ndarray | pa.Array, valid: np.ndarray) -> np.ndarray | pa.Array:
    """Return the valid rows of a checked column: numpy for numbers, Arrow for text."""
    everything = bool(valid.all())
    if isinstance(values, np.ndarray):
        kept = values if everything else values[valid]
        return kept.astype(COLUMNS[name], copy=False)

    if not everything:
        values = values.filter(pa.array(valid))
    # pandas' "str" dtype stores large_string. Converting each batch here spares a
    # conversion of every whole column, with its memory peak, when the frame is built.
    return values.cast(pa.large_string())


def frame_from_columns(columns: dict[str, np.ndarray | pa.Array | pa.ChunkedArray]) -> pd.DataFrame:
    """Return a canonical frame built from canonical columns, copying as little as possible."""
    if not columns or len(columns["request_id"]) == 0:
        return empty_frame()

    series = {}
    for name, dtype in COLUMNS.items():
        values = columns[name]
        if isinstance(values, np.ndarray):
            series[name] = pd.Series(values, dtype=dtype, copy=False)
        else:
            series[name] = pd.Series(pd.array(values, dtype=dtype), copy=False)
    return pd.DataFrame(series, copy=False)


def batch_from_records(
    records: list[object], lines: list[int] | np.ndarray, source: str
) -> tuple[RawBatch, list[Reject]]:
    """Return a raw batch of the JSON objects among records, and a reject for every other value."""
    objects, object_lines, rejects = [], [], []
    for record, line in zip(records, lines):
        if isinstance(record, dict):
            objects.append(record)
            object_lines.append(line)
        else:
            rejects.append(Reject(source, int(line), "-", f"not a JSON object: got {json_type_name(record)}"))

    columns = {name: RawColumn.from_python([record.get(name) for record in objects]) for name in INPUT_FIELDS}
    return RawBatch(columns, np.array(object_lines, dtype=np.int64)), rejects


def validate_records(
    records: list[dict], source: str, first_line: int = 1, lines: list[int] | None = None
) -> tuple[pd.DataFrame, list[Reject]]:
    """Validate already-parsed records and return their canonical frame and rejects.

    The frame is neither deduplicated nor sorted. Record i is reported at line
    ``lines[i]``, or ``first_line + i`` when lines is None. A key_id or account_id
    that contains an API key secret is replaced by the secret's hash and
    logged as a warning.
    """
    if lines is None:
        lines = range(first_line, first_line + len(records))
    elif len(lines) != len(records):
        raise ValueError(f"lines has {len(lines)} entries for {len(records)} records")

    batch, rejects = batch_from_records(records, lines, source)
    validated = validate_batch(batch, source)
    rejects = sorted(rejects + validated.rejects, key=lambda reject: reject.line)
    for name, count in validated.secrets_replaced.items():
        logger.warning(
            "%s: %d %s values looked like API key secrets (sk-...) and were replaced by their SHA-256 hash",
            source,
            count,
            name,
        )
    return frame_from_columns(validated.columns), rejects
