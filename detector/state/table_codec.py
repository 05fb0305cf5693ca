"""Encode one detector table's per-subject state as one bytes value per subject, and decode it, for a store.

A value is one packed little-endian record followed by the subject's rows as
packed records (row-major):

- header: format version (``u1``), layout (``<u4``, the CRC-32 of the column
  names and types, so a value written with other columns is rejected) and
  row count (``<u4``);
- the subject's per-subject values, in the table's column order;
- each row's columns, in the table's row column order.

Both directions run over all subjects of a batch with numpy. Per subject,
Python only slices or joins bytes. ``scripts/bench_state_store.py`` compares
this layout with one Arrow IPC message per subject and table.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1

Columns = dict[str, np.ndarray]

# Header fields; value columns get a prefix so that no column name can collide with them.
_HEADER = [("format", "u1"), ("layout", "<u4"), ("rows", "<u4")]
_VALUE_PREFIX = "value:"


@dataclass(slots=True)
class DecodedStates:
    """Readable values of a batch: ``positions`` in the input, their ``values`` and ``rows`` (``owner`` indexes ``positions``).

    ``invalid`` maps the position of each value that could not be read to the reason.
    Positions in neither are absent values (None).
    """

    positions: np.ndarray
    values: Columns
    rows: Columns
    invalid: dict[int, str]


class TableCodec:
    """The byte layout of one table's per-subject state, given its value and row column types."""

    def __init__(self, value_dtypes: dict[str, np.dtype], row_dtypes: dict[str, np.dtype]) -> None:
        values = [(name, np.dtype(dtype).newbyteorder("<")) for name, dtype in value_dtypes.items()]
        rows = [(name, np.dtype(dtype).newbyteorder("<")) for name, dtype in row_dtypes.items()]
        description = ";".join(f"{name}={dtype.str}" for name, dtype in values) + "|" + ";".join(f"{name}={dtype.str}" for name, dtype in rows)
        self.layout = zlib.crc32(description.encode())
        self.value_names = [name for name, _ in values]
        self.row_names = [name for name, _ in rows]
        self.header = np.dtype(_HEADER + [(_VALUE_PREFIX + name, dtype) for name, dtype in values])
        self.row = np.dtype(rows)

    def encode(self, known: np.ndarray, values: Columns, rows: Columns) -> list[bytes | None]:
        """Return one value per subject, None where ``known`` is false.

        ``values`` has one entry per subject, ``rows`` is sorted by ``owner``,
        the subject's position, as ``SubjectStates.take`` returns them.
        """
        count = len(known)
        lengths = np.bincount(rows["owner"], minlength=count).astype(np.int64)
        header = np.zeros(count, self.header)
        header["format"] = FORMAT_VERSION
        header["layout"] = self.layout
        header["rows"] = lengths
        for name in self.value_names:
            header[_VALUE_PREFIX + name] = values[name]
        records = np.empty(len(rows["owner"]), self.row)
        for name in self.row_names:
            records[name] = rows[name]

        header_bytes, row_bytes = header.tobytes(), records.tobytes()
        header_size = self.header.itemsize
        ends = np.cumsum(lengths) * self.row.itemsize
        starts = ends - lengths * self.row.itemsize
        encoded: list[bytes | None] = []
        for position, (present, start, end) in enumerate(zip(known.tolist(), starts.tolist(), ends.tolist())):
            offset = position * header_size
            encoded.append(header_bytes[offset : offset + header_size] + row_bytes[start:end] if present else None)
        return encoded

    def decode(self, encoded: Sequence[bytes | None]) -> DecodedStates:
        """Read the values of a batch; values that are too short, of another format or layout, or of the wrong length are invalid."""
        sizes = np.fromiter((0 if value is None else len(value) for value in encoded), np.int64, count=len(encoded))
        buffer = np.frombuffer(b"".join(value for value in encoded if value), np.uint8)
        starts = np.cumsum(sizes) - sizes
        header_size, row_size = self.header.itemsize, self.row.itemsize

        invalid: dict[int, str] = {}
        short = np.flatnonzero((sizes < header_size) & np.fromiter((value is not None for value in encoded), bool, count=len(encoded)))
        for position in short.tolist():
            invalid[position] = f"{sizes[position]} bytes, shorter than the {header_size}-byte header"
        candidates = np.flatnonzero(sizes >= header_size)
        header = buffer[starts[candidates][:, None] + np.arange(header_size)].view(self.header).reshape(-1)

        lengths = header["rows"].astype(np.int64)
        expected = header_size + lengths * row_size
        readable = (header["format"] == FORMAT_VERSION) & (header["layout"] == self.layout) & (sizes[candidates] == expected)
        for index in np.flatnonzero(~readable).tolist():
            invalid[int(candidates[index])] = self._reason(header[index], int(sizes[candidates[index]]), int(expected[index]))

        header, lengths = header[readable], lengths[readable]
        positions = candidates[readable]
        if row_size:
            records = buffer[_in_segments(len(buffer), starts[positions] + header_size, lengths * row_size)].view(self.row)
        else:
            records = np.zeros(int(lengths.sum()), self.row)
        rows = {"owner": np.repeat(np.arange(len(positions)), lengths)}
        rows.update((name, records[name]) for name in self.row_names)
        values = {name: header[_VALUE_PREFIX + name] for name in self.value_names}
        return DecodedStates(positions=positions, values=values, rows=rows, invalid=invalid)

    def _reason(self, header: np.void, size: int, expected: int) -> str:
        if header["format"] != FORMAT_VERSION:
            return f"format version {header['format']}, expected {FORMAT_VERSION}"
        if header["layout"] != self.layout:
            return f"layout {header['layout']:08x} (other columns), expected {self.layout:08x}"
        return f"{size} bytes, expected {expected} for {header['rows']} rows"


def _in_segments(size: int, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Return a mask of ``size`` positions, true inside the segments given by ``starts`` and ``lengths``, which must not overlap."""
    bounds = np.concatenate((starts, starts + lengths))
    steps = np.concatenate((np.ones(len(starts)), -np.ones(len(starts))))
    return np.cumsum(np.bincount(bounds, weights=steps, minlength=size + 1)[:size]) > 0
