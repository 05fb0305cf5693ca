"""Lines longer than the reader's limit are rejected unread, wherever they sit in a file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from detector.readers import read_events
from detector.readers.base import ReaderError
from detector.readers import source as source_module
from detector.readers.source import BLOCK_SIZE
from tests.test_readers import make_record, write_csv

# The shipped limit is 64 MiB. A 1 MiB limit makes the same paths run on small files:
# lines over it inside a block, and lines longer than a whole block.
MAX_LINE_BYTES = 1 << 20


@pytest.fixture(autouse=True)
def small_limit(monkeypatch):
    monkeypatch.setattr(source_module, "MAX_LINE_BYTES", MAX_LINE_BYTES)


def _lines(*records: dict) -> list[bytes]:
    return [json.dumps(record).encode() for record in records]


def _write(path: Path, lines: list[bytes], *, final_newline: bool = True) -> Path:
    content = b"\n".join(lines) + (b"\n" if final_newline else b"")
    if path.suffix == ".gz":
        content = gzip.compress(content, compresslevel=1)
    path.write_bytes(content)
    return path


def _huge_record(size: int) -> bytes:
    """Return one valid JSON event of about ``size`` bytes."""
    return json.dumps(make_record(2, user_agent="x" * size)).encode()


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz"])
@pytest.mark.parametrize("size", [3 * MAX_LINE_BYTES, BLOCK_SIZE + MAX_LINE_BYTES])
def test_long_line_rejected_and_numbering_kept(tmp_path, name, size):
    lines = [*_lines(make_record(1)), _huge_record(size), *_lines(make_record(3)), b"{not json", *_lines(make_record(5))]
    result = read_events([_write(tmp_path / name, lines)])

    assert sorted(result.frame["request_id"]) == ["req-00001", "req-00003", "req-00005"]
    assert [reject.line for reject in result.rejects] == [2, 4]
    assert "longer than the limit of 1,048,576 bytes" in result.rejects[0].reason
    assert result.records == 5


@pytest.mark.parametrize("name", ["events.jsonl", "events.jsonl.gz"])
def test_long_last_line_without_newline(tmp_path, name):
    lines = [*_lines(make_record(1)), b"x" * (BLOCK_SIZE + 10)]
    result = read_events([_write(tmp_path / name, lines, final_newline=False)])

    assert list(result.frame["request_id"]) == ["req-00001"]
    assert [reject.line for reject in result.rejects] == [2]
    assert f"line of {BLOCK_SIZE + 10:,} bytes" in result.rejects[0].reason


def test_line_at_limit_is_read(tmp_path):
    record = make_record(2, user_agent="")
    padding = MAX_LINE_BYTES - len(json.dumps(record).encode())
    record["user_agent"] = "x" * padding
    line = json.dumps(record).encode()
    assert len(line) == MAX_LINE_BYTES

    result = read_events([_write(tmp_path / "events.jsonl", [line])])

    assert result.rejects == []
    assert list(result.frame["request_id"]) == ["req-00002"]


def test_long_csv_line_rejected(tmp_path):
    path = write_csv(tmp_path / "events.csv", [make_record(1), make_record(2, user_agent="y" * (2 * MAX_LINE_BYTES)),
                                               make_record(3)])

    result = read_events([path])

    assert sorted(result.frame["request_id"]) == ["req-00001", "req-00003"]
    # Line 1 is the header.
    assert [reject.line for reject in result.rejects] == [3]


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
def test_long_csv_header_raises(tmp_path, name):
    path = write_csv(tmp_path / "plain.csv", [make_record(1), make_record(2), make_record(3)])
    header, rest = path.read_bytes().split(b"\r\n", 1)
    content = header + b"," + b"h" * (2 * MAX_LINE_BYTES) + b"\r\n" + rest
    target = tmp_path / name
    target.write_bytes(gzip.compress(content, compresslevel=1) if name.endswith(".gz") else content)

    # Without the header, the first record would be read as the header.
    with pytest.raises(ReaderError, match=r"events\.csv(\.gz)?:1: the CSV header line is 2,097,"):
        read_events([target], format="csv")
