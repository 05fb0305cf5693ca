"""JSON Lines reader: Arrow parses clean blocks, orjson parses the lines Arrow rejects.

Arrow fails on a whole block when one line is invalid JSON, is not an
object, or has a value of another type than the block's first record. Such a
block is split into pieces at line boundaries and each piece is tried again.
So one bad line sends only a small piece through the per-line parser. Line
numbers come from the newline positions, so blank lines never shift them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pj

from detector.events import Reject
from detector.readers.base import INPUT_FIELDS, RawBatch, has_surrogates
from detector.readers.columns import RawColumn
from detector.readers.reasons import format_value
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

OPEN_BRACE, CLOSE_BRACE, CARRIAGE_RETURN = ord("{"), ord("}"), ord("\r")

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
    data: bytes, first_line: int, source: str, newlines: np.ndarray | None = None
) -> Iterator[RawBatch | Reject]:
    """Yield raw batches and rejects for whole lines of JSON starting at first_line.

    The lines read one at a time are gathered into one batch per block, in
    file order with the batches Arrow reads. On 50,000 lines whose
    prompt_tokens changed type on every other line, reading took 2.8 s with a
    batch per piece and 1.2 s with one per block (0.2 s without the change).
    """
    pending = PendingRecords()
    for item in _parse_piece(data, first_line, source, newlines, 0, pending):
        if isinstance(item, RawBatch):
            yield from pending.flush(source)
        yield item
    yield from pending.flush(source)


class PendingRecords:
    """Records parsed line by line, with their line numbers, not yet yielded as a batch."""

    def __init__(self) -> None:
        self.records: list[object] = []
        self.lines: list[int] = []

    def flush(self, source: str) -> Iterator[RawBatch | Reject]:
        """Yield the rejects of records that are not objects, then one batch of the others."""
        if not self.records:
            return
        batch, not_objects = batch_from_records(self.records, self.lines, source)
        self.records, self.lines = [], []
        yield from not_objects
        if batch.length:
            yield batch


def _parse_piece(
    data: bytes, first_line: int, source: str, newlines: np.ndarray | None, depth: int, pending: PendingRecords
) -> Iterator[RawBatch | Reject]:
    """Yield Arrow's batches and the rejects of one piece, adding the lines read one at a time to pending."""
    numbers = non_blank_line_numbers(data, first_line, newlines)
    if len(numbers) == 0:
        return
    if len(numbers) <= MIN_ARROW_LINES or depth >= MAX_SPLIT_DEPTH:
        yield from parse_lines_with_orjson(data, first_line, source, pending)
        return

    table = parse_with_arrow(data) if one_object_per_line(data, newlines) else None
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
        yield from _parse_piece(data[start:end], int(index.numbers[low]), source, None, depth + 1, pending)


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


def one_object_per_line(data: bytes, newlines: np.ndarray | None) -> bool:
    """Return True if every non-blank line of data starts with "{" and ends with "}", spaces aside.

    Arrow counts objects, not lines: it reads two objects on one line as two
    rows and an object broken over two lines as one. Where both happen in one
    block the row count still equals the line count, and every row between them
    would be reported at the wrong line. After a line that ends with "}", valid
    JSON can continue an open object or array only with ",", "}" or "]", so a
    line that starts with "{" begins a new record. With both ends checked, each
    line contains whole records, and the row count shows whether it contains one.

    Lines that start with "n" fail the check too. pyarrow 26.0.1 crashes
    (segmentation fault) when one of its parse chunks starts with such a line,
    and reads a null line as a row of nulls elsewhere.
    """
    if newlines is None:
        newlines = newline_offsets(data)
    content = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(data)]))
    filled = starts < ends
    starts, ends = starts[filled], ends[filled]

    last = ends - 1
    # A CRLF line ends with "\r" after its "}".
    carriage = (content[last] == CARRIAGE_RETURN) & (last > starts)
    last[carriage] -= 1
    odd = np.flatnonzero((content[starts] != OPEN_BRACE) | (content[last] != CLOSE_BRACE))
    for line in odd:
        text = data[starts[line] : ends[line]].strip()
        if text and not (text.startswith(b"{") and text.endswith(b"}")):
            return False
    return True


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
                # NaN or bytes that are not UTF-8 in an unknown field: Arrow reads the line,
                # so its types still decide the schema.
                try:
                    record = json.loads(line.decode("utf-8", "surrogateescape"))
                except (ValueError, RecursionError):
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


def parse_lines_with_orjson(data: bytes, first_line: int, source: str, pending: PendingRecords) -> Iterator[Reject]:
    """Add the JSON values of the lines of data to pending, and yield a reject for every other line."""
    for number, line in enumerate(data.split(b"\n"), first_line):
        if not line.strip():
            continue
        try:
            pending.records.append(orjson.loads(line))
            pending.lines.append(number)
        except orjson.JSONDecodeError as error:
            record, field, reason = _record_despite_unknown_fields(line, error)
            if record is None:
                yield Reject(source, number, field, reason)
            else:
                pending.records.append(record)
                pending.lines.append(number)


def _record_despite_unknown_fields(line: bytes, error: orjson.JSONDecodeError) -> tuple[dict | None, str, str]:
    """Return the contract fields of a line that is JSON but for NaN, Infinity or bytes that are not UTF-8.

    Arrow ignores fields outside the contract without checking their values,
    so such a line is read when Arrow parses its block. Here it is read too,
    so its verdict does not depend on the lines around it. NaN and Infinity
    in a contract field go on to the checks, which reject them as Arrow's
    rows are rejected (``cost: not a finite number: nan``). Bytes that are
    not UTF-8 in a contract field reject the line here, naming the field.
    """
    # NOTE: nesting deeper than 1024 levels in an unknown field still differs: Arrow (pyarrow 26)
    # reads such a line, while orjson and the json module reject it.
    try:
        # The standard module reads NaN and Infinity, and surrogateescape keeps bytes that are not UTF-8.
        record = json.loads(line.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None, "-", _json_error(line, error)
    if not isinstance(record, dict):
        return None, "-", _json_error(line, error)

    fields = {name: record[name] for name in INPUT_FIELDS if name in record}
    for name, value in fields.items():
        if has_surrogates(value):
            return None, name, "not valid UTF-8 text; write the log in UTF-8"
    return fields, "", ""


# Number words that some JSON writers emit (Python's json.dumps among them), which JSON does not allow.
_NOT_JSON_NUMBERS = (b"NaN", b"Infinity", b"-Infinity")


def _json_error(line: bytes, error: orjson.JSONDecodeError) -> str:
    """Return the reject reason for a line that is not JSON, naming NaN or Infinity where one caused it."""
    reason = f"invalid JSON: {error.msg} at column {error.colno}"
    if b"\r" in line.rstrip(b"\r"):
        reason += "; the line contains carriage returns (CR): if the file's lines end in CR alone, convert them to LF"
    if error.msg.startswith("number is infinity"):
        field = _field_before(line[: max(error.pos, 0)])
        return f"{reason}{f' in {format_value(field)}' if field else ''}; send a number below 1.8e308"
    # orjson reports "-Infinity" after its sign.
    start = error.pos - 1 if error.pos > 0 and line[error.pos - 1 : error.pos] == b"-" else max(error.pos, 0)
    at = line[start:]
    word = next((word for word in sorted(_NOT_JSON_NUMBERS, key=len, reverse=True) if at.startswith(word)), None)
    if word is None:
        return reason
    field = _field_before(line[:start])
    place = f" in {format_value(field)}" if field else ""
    return f"{reason}: {word.decode()}{place} is not a JSON number; send a number, or null where the field is optional"


def _field_before(text: bytes) -> str | None:
    """Return the name of the last object key in ``text``, the field whose value follows it, if any."""
    end = text.rfind(b'":')
    if end < 0:
        return None
    start = text.rfind(b'"', 0, end)
    return text[start + 1 : end].decode("utf-8", "replace") if start >= 0 else None

