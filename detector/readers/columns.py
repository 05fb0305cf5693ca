"""Raw input columns: one field of a batch as Arrow arrays, split by JSON type.

Readers hand the validator one ``RawColumn`` per contract field. A column read
by Arrow has a single type. A column built from parsed JSON objects may mix
types (a number in one record, a string in the next), so it is split into one
``Part`` per type, each with the batch rows it covers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Kind(Enum):
    """JSON-level type of the values in a part."""

    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"
    TIMESTAMP = "timestamp"
    NULL = "null"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True, slots=True)
class Part:
    """Values of one kind and the batch rows they belong to."""

    kind: Kind
    # Arrow values, one per row in ``rows``. None for UNSUPPORTED parts built from Python values.
    values: pa.Array | None
    # Ascending batch row positions, or None when the part covers every row of the batch.
    rows: np.ndarray | None = None


@dataclass(slots=True)
class RawColumn:
    """One field of a batch before validation."""

    length: int
    parts: list[Part]
    # The input values when the column was built from Python objects, for reject messages.
    originals: list | None = field(default=None, repr=False)

    @classmethod
    def missing(cls, length: int) -> RawColumn:
        """Return a column for a field that no row of the batch has."""
        return cls(length, [Part(Kind.NULL, pa.nulls(length))])

    @classmethod
    def from_arrow(cls, values: pa.Array | pa.ChunkedArray) -> RawColumn:
        """Return a column of one Arrow array, decoding dictionary arrays first."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
            values = values.cast(pa.string())
        if len(values) and values.null_count == len(values):
            # A column of nulls is missing whatever type it was written with.
            return cls.missing(len(values))
        return cls(len(values), [Part(kind_of_arrow_type(values.type), values)])

    @classmethod
    def from_python(cls, values: list) -> RawColumn:
        """Return a column of parsed JSON values, one part per JSON type present."""
        if not values:
            return cls.missing(0)
        kinds = [kind_of_python_value(value) for value in values]
        distinct = set(kinds)
        if len(distinct) == 1:
            kind = kinds[0]
            return cls(len(values), [Part(kind, _arrow_values(kind, values))], values)

        kind_codes = np.array([_KIND_CODES[kind] for kind in kinds], dtype=np.int8)
        parts = []
        for kind in sorted(distinct, key=_KIND_CODES.get):
            rows = np.flatnonzero(kind_codes == _KIND_CODES[kind])
            subset = [values[row] for row in rows]
            parts.append(Part(kind, _arrow_values(kind, subset), rows))
        return cls(len(values), parts, values)

    def value_at(self, row: int) -> object:
        """Return the input value at a batch row, as a Python object."""
        if self.originals is not None:
            return self.originals[row]

        for part in self.parts:
            if part.rows is None:
                return part.values[row].as_py()
            position = int(np.searchsorted(part.rows, row))
            if position < len(part.rows) and part.rows[position] == row:
                return part.values[position].as_py()
        raise IndexError(f"row {row} is outside the column")


_KIND_CODES = {kind: code for code, kind in enumerate(Kind)}


def kind_of_arrow_type(arrow_type: pa.DataType) -> Kind:
    """Return the kind of values an Arrow type holds."""
    if pa.types.is_string(arrow_type):
        return Kind.STRING
    if pa.types.is_boolean(arrow_type):
        return Kind.BOOLEAN
    if (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
    ):
        return Kind.NUMBER
    if pa.types.is_timestamp(arrow_type):
        return Kind.TIMESTAMP
    if pa.types.is_null(arrow_type):
        return Kind.NULL
    return Kind.UNSUPPORTED


def kind_of_python_value(value: object) -> Kind:
    """Return the kind of a parsed JSON value. bool is checked first because it subclasses int."""
    if value is None:
        return Kind.NULL
    if isinstance(value, str):
        return Kind.STRING
    if isinstance(value, (bool, np.bool_)):
        return Kind.BOOLEAN
    if isinstance(value, numbers.Real):
        return Kind.NUMBER
    return Kind.UNSUPPORTED


def _arrow_values(kind: Kind, values: list) -> pa.Array | None:
    if kind is Kind.STRING:
        return pa.array(values, type=pa.string())
    if kind is Kind.BOOLEAN:
        return pa.array([bool(value) for value in values], type=pa.bool_())
    if kind is Kind.NUMBER:
        return _float_array(values)
    if kind is Kind.NULL:
        return pa.nulls(len(values))
    return None


def _float_array(values: list) -> pa.Array:
    """Return numbers as float64, with integers too large for a float as +-inf."""
    try:
        return pa.array(values, type=pa.float64())
    except (pa.ArrowInvalid, OverflowError, TypeError):
        return pa.array([_to_float(value) for value in values], type=pa.float64())


def _to_float(value: numbers.Real) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def null_mask(values: pa.Array) -> np.ndarray:
    """Return a boolean numpy mask of the null entries of an Arrow array."""
    if values.null_count == 0:
        return np.zeros(len(values), dtype=bool)
    return values.is_null().to_numpy(zero_copy_only=False)


def true_mask(condition: pa.Array) -> np.ndarray:
    """Return an Arrow boolean array as numpy, with nulls counted as False."""
    return pc.fill_null(condition, False).to_numpy(zero_copy_only=False)


def character_data(strings: pa.Array) -> memoryview | None:
    """Return the bytes of all values of a string array, one after the other, without copying.

    Returns None for other types, such as string views, whose values are not
    stored in one span.
    """
    large = pa.types.is_large_string(strings.type)
    if not (large or pa.types.is_string(strings.type)):
        return None
    _, offsets_buffer, data = strings.buffers()
    if len(strings) == 0 or data is None:
        return memoryview(b"")
    width = 8 if large else 4
    offsets = np.frombuffer(
        offsets_buffer, dtype=np.int64 if large else np.int32, count=len(strings) + 1, offset=strings.offset * width
    )
    return memoryview(data)[int(offsets[0]) : int(offsets[-1])]
