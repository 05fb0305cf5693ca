"""JSON Lines reader: Arrow parses clean blocks, orjson parses the lines Arrow rejects.

Arrow fails on a whole block when one line is invalid JSON, is not an
object, or has a value of another type than the block's first record. Such a
block is split into pieces at line boundaries and each piece is tried again.
So one bad line sends only a small piece through the per-line parser. Line
numbers come from the newline positions, so blank lines never shift them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pj

from detector.events import Reject
from detector.readers.base import INPUT_FIELDS, RawBatch
from detector.readers.columns import RawColumn
from detector.readers.source import InputFile, LineBlocks, index_lines, newline_offsets, non_blank_line_numbers
from detector.readers.validate import batch_from_records

# A block that Arrow cannot parse is split into SPLIT_PIECES pieces, and a failing
# piece again, MAX_SPLIT_DEPTH levels deep (24 MB blocks end in pieces of about
# 47 kB). Pieces that deep, or of MIN_ARROW_LINES lines or fewer, go to orjson.
SPLIT_PIECES = 8
MAX_SPLIT_DEPTH = 3
MIN_ARROW_LINES = 256
# Arrow parses a block in parallel chunks of this size, so a longer line fails there.
ARROW_CHUNK_SIZE = 4 << 20

TEXT_FIELDS = frozenset(
    {"request_id", "account_id", "key_id", "plan", "endpoint", "model", "ip", "user_agent", "prompt_hash", "country"}
)


def read_jsonl(input_file: InputFile) -> Iterator[RawBatch | Reject]:
    """Yield raw batches and parse-level rejects for a JSON Lines file."""
    blocks = LineBlocks(input_file)
    for block in blocks:
        yield from parse_json_lines(block.data, block.first_line, input_file.name, block.newlines)

    yield from blocks.end_rejects()


def parse_json_lines(
    data: bytes, first_line: int, source: str, newlines: np.ndarray | None = None, depth: int = 0
) -> Iterator[RawBatch | Reject]:
    """Yield raw batches and rejects for whole lines of JSON starting at first_line."""
    numbers = non_blank_line_numbers(data, first_line, newlines)
    if len(numbers) == 0:
        return
    if len(numbers) <= MIN_ARROW_LINES or depth >= MAX_SPLIT_DEPTH:
        yield from parse_lines_with_orjson(data, first_line, source)
        return

    table = None if has_line_starting_with_n(data, newlines) else parse_with_arrow(data)
    if table is not None and table.num_rows == len(numbers):
        columns = {name: RawColumn.from_arrow(table.column(name)) for name in INPUT_FIELDS}
        yield RawBatch(columns, numbers)
        return

    index = index_lines(data, first_line, newlines)
    bounds = np.linspace(0, len(index), SPLIT_PIECES + 1).astype(int)
    for low, high in zip(bounds[:-1], bounds[1:]):
        if low == high:
            continue
        start = int(index.starts[low])
        end = int(index.starts[high]) if high < len(index) else len(data)
        yield from parse_json_lines(data[start:end], int(index.numbers[low]), source, depth=depth + 1)


def parse_with_arrow(data: bytes) -> pa.Table | None:
    """Return the contract fields of data as an Arrow table, or None if Arrow cannot parse it.

    Field types come from the first record, so a gateway that writes ts as
    epoch numbers or stream as 0/1 still takes this path.
    """
    schema = pa.schema([pa.field(name, arrow_type) for name, arrow_type in field_types(first_record(data)).items()])
    parse_options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    read_options = pj.ReadOptions(block_size=ARROW_CHUNK_SIZE)
    try:
        table = pj.read_json(pa.py_buffer(data), read_options=read_options, parse_options=parse_options)
        # Arrow's JSON parser does not check UTF-8, so check here and let orjson reject the lines.
        table.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return table


def has_line_starting_with_n(data: bytes, newlines: np.ndarray | None) -> bool:
    """Return True if a line starts with "n" after optional whitespace, as null does.

    pyarrow 26.0.1 crashes (segmentation fault) when one of its parse chunks
    starts with such a line, and reads a null line as a row of nulls elsewhere.
    Valid JSON lines starting with "n" are exactly "null", which is no record,
    so these blocks go to the orjson path.
    """
    if newlines is None:
        newlines = newline_offsets(data)
    content = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate(([0], newlines[newlines + 1 < len(data)] + 1)) if len(data) else newlines[:0]
    first_bytes = content[starts]
    if (first_bytes == ord("n")).any():
        return True
    for start in starts[first_bytes <= ord(" ")]:
        end = data.find(b"\n", start)
        if data[start : end if end >= 0 else len(data)].lstrip().startswith(b"n"):
            return True
    return False


def first_record(data: bytes) -> dict | None:
    """Return the first non-blank line of data parsed as a JSON object, or None."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        line = data[start:end]
        if line.strip():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                return None
            return record if isinstance(record, dict) else None
        start = end + 1
    return None


def field_types(sample: dict | None) -> dict[str, pa.DataType]:
    """Return the Arrow type to parse each contract field as, following the sample's JSON types."""
    types = {}
    for name in INPUT_FIELDS:
        value = sample.get(name) if sample else None
        if isinstance(value, bool):
            types[name] = pa.bool_()
        elif isinstance(value, (int, float)):
            types[name] = pa.float64()
        elif isinstance(value, str):
            types[name] = pa.string()
        else:
            types[name] = default_type(name)
    return types


def default_type(name: str) -> pa.DataType:
    """Return the Arrow type a contract field usually has in JSON."""
    if name in TEXT_FIELDS or name == "ts":
        return pa.string()
    if name == "stream":
        return pa.bool_()
    return pa.float64()


def parse_lines_with_orjson(data: bytes, first_line: int, source: str) -> Iterator[RawBatch | Reject]:
    """Yield one raw batch for the JSON lines of data, and a reject for every other line."""
    records, lines, rejects = [], [], []
    for number, line in enumerate(data.split(b"\n"), first_line):
        if not line.strip():
            continue
        try:
            records.append(orjson.loads(line))
            lines.append(number)
        except orjson.JSONDecodeError as error:
            rejects.append(Reject(source, number, "-", _json_error(line, error)))

    batch, not_objects = batch_from_records(records, lines, source)
    yield from sorted(rejects + not_objects, key=lambda reject: reject.line)
    if batch.length:
        yield batch


# Number words that some JSON writers emit (Python's json.dumps among them), which JSON does not allow.
_NOT_JSON_NUMBERS = (b"NaN", b"Infinity", b"-Infinity")


def _json_error(line: bytes, error: orjson.JSONDecodeError) -> str:
    """Return the reject reason for a line that is not JSON, naming NaN or Infinity where one caused it."""
    reason = f"invalid JSON: {error.msg} at column {error.colno}"
    # orjson reports "-Infinity" after its sign.
    start = error.pos - 1 if error.pos > 0 and line[error.pos - 1 : error.pos] == b"-" else max(error.pos, 0)
    at = line[start:]
    word = next((word for word in sorted(_NOT_JSON_NUMBERS, key=len, reverse=True) if at.startswith(word)), None)
    if word is None:
        return reason
    field = _field_before(line[:start])
    place = f" in {field!r}" if field else ""
    return f"{reason}: {word.decode()}{place} is not a JSON number; send a number, or null where the field is optional"


def _field_before(text: bytes) -> str | None:
    """Return the name of the last object key in ``text``, the field whose value follows it, if any."""
    end = text.rfind(b'":')
    if end < 0:
        return None
    start = text.rfind(b'"', 0, end)
    return text[start + 1 : end].decode("utf-8", "replace") if start >= 0 else None

