"""Tests of detector.readers: every format, the reject rules, dedupe, sort and access logs."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.events import COLUMNS, MAX_TEXT_LENGTH
from detector.readers import ReaderError, ReadResult, read_events, read_json_lines, validate_records
from detector.readers import jsonl as jsonl_module
from detector.readers.api_keys import may_contain_secret
from detector.readers.checks import only_hash_characters
from detector.readers import source as source_module

REAL_ACCESS_LOG = Path(__file__).resolve().parent / "data" / "real" / "apache_combined_2015.log.gz"
SECRET = "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789"


def make_record(number: int = 0, **changes: object) -> dict:
    """Return a valid gateway record. number varies the id, time and counts."""
    record = {
        "request_id": f"req-{number:05d}",
        "ts": 1795428000 + number,
        "account_id": f"acct-{number % 3}",
        "key_id": f"key-{number % 5}",
        "plan": "pro",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o",
        "prompt_tokens": 100 + number,
        "completion_tokens": 20 + number,
        "images": 0,
        "cost": 0.25,
        "ip": f"203.0.113.{number % 250}",
        "user_agent": "openai-python/1.50.0",
        "status": 200,
        "latency_ms": 812.5,
        "stream": number % 2 == 1,
        "prompt_hash": "9f86d081884c7d659a2feaa0c55ad015",
        "country": "DE",
    }
    record.update(changes)
    return record


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_csv(path: Path, records: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=7)
    return path


def gzip_copy(path: Path) -> Path:
    target = path.with_name(path.name + ".gz")
    target.write_bytes(gzip.compress(path.read_bytes()))
    return target


def read_one(path: Path, **options: object) -> ReadResult:
    return read_events([path], **options)


def reject_lines(result: ReadResult) -> list[str]:
    return [reject.format() for reject in result.rejects]


def utc_epoch(text: str) -> float:
    return datetime.fromisoformat(text).astimezone(timezone.utc).timestamp()


@pytest.fixture(params=["arrow", "orjson"])
def json_parser(request, monkeypatch) -> str:
    """Run a JSON Lines test through Arrow blocks and through the per-line orjson path."""
    if request.param == "arrow":
        monkeypatch.setattr(jsonl_module, "MIN_ARROW_LINES", 0)
    else:
        monkeypatch.setattr(jsonl_module, "MIN_ARROW_LINES", 10**9)
    return request.param


# Formats


FORMAT_WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("format_name", ["jsonl", "csv", "parquet"])
def test_formats_give_identical_frames(tmp_path, format_name, compressed):
    records = [make_record(number) for number in range(40)]
    expected = read_one(write_jsonl(tmp_path / "expected.jsonl", records)).frame

    path = FORMAT_WRITERS[format_name](tmp_path / f"events.{format_name}", records)
    if compressed:
        path = gzip_copy(path)
    result = read_one(path)

    pd.testing.assert_frame_equal(result.frame, expected)
    assert result.records == 40
    assert result.rejects == []


def test_frame_has_canonical_columns_and_dtypes(tmp_path):
    frame = read_one(write_jsonl(tmp_path / "events.jsonl", [make_record(1)])).frame

    assert list(frame.columns) == list(COLUMNS)
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == COLUMNS
    assert list(frame.index) == [0]


def test_frame_values_are_converted(tmp_path):
    record = make_record(3, ip="2001:DB8:0:0::1", country="de", images=None)
    record.pop("user_agent")
    row = read_one(write_jsonl(tmp_path / "events.jsonl", [record])).frame.iloc[0]

    assert row["ip"] == "2001:db8::1"
    assert row["country"] == "DE"
    assert row["images"] == 0
    assert row["user_agent"] == ""
    assert row["subject_type"] == "key"
    assert row["stream"] is np.True_


def test_arrow_and_orjson_paths_agree(tmp_path, monkeypatch):
    records = [make_record(number, stream=number % 3 == 0) for number in range(30)]
    path = write_jsonl(tmp_path / "events.jsonl", records)
    monkeypatch.setattr(jsonl_module, "MIN_ARROW_LINES", 0)
    through_arrow = read_one(path).frame
    monkeypatch.setattr(jsonl_module, "MIN_ARROW_LINES", 10**9)
    through_orjson = read_one(path).frame

    pd.testing.assert_frame_equal(through_arrow, through_orjson)


@pytest.mark.parametrize(
    ("name", "format_name"),
    [
        ("events.jsonl", "jsonl"),
        ("events.ndjson", "jsonl"),
        ("events.json", "jsonl"),
        ("events.csv", "csv"),
        ("events.parquet", "parquet"),
        ("events.jsonl.gz", "jsonl"),
        ("events.csv.gz", "csv"),
    ],
)
def test_format_detected_from_extension(tmp_path, name, format_name):
    records = [make_record(number) for number in range(3)]
    path = FORMAT_WRITERS[format_name](tmp_path / name.removesuffix(".gz"), records)
    if name.endswith(".gz"):
        path = gzip_copy(path)

    assert len(read_one(path).frame) == 3


def test_extension_wins_over_content(tmp_path):
    path = write_jsonl(tmp_path / "events.csv", [make_record(1), make_record(2)])

    result = read_one(path)

    assert result.frame.empty
    assert len(result.rejects) == 1


@pytest.mark.parametrize("format_name", ["jsonl", "csv", "parquet"])
def test_format_detected_from_content(tmp_path, format_name):
    path = FORMAT_WRITERS[format_name](tmp_path / "events.data", [make_record(1), make_record(2)])

    result = read_one(path)

    assert len(result.frame) == 2
    assert result.rejects == []


def test_gzip_detected_from_content_without_gz_name(tmp_path):
    plain = write_jsonl(tmp_path / "source.jsonl", [make_record(1)])
    disguised = tmp_path / "events.jsonl"
    disguised.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()

    assert len(read_one(disguised).frame) == 1


def test_access_log_detected_from_content(tmp_path):
    path = write_lines(tmp_path / "access.txt", ['198.51.100.7 - - [17/May/2015:10:05:03 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8"'])

    assert read_one(path).frame["subject_type"].tolist() == ["ip"]


def test_format_option_overrides_name(tmp_path):
    path = write_jsonl(tmp_path / "events.csv", [make_record(1)])

    result = read_one(path, format="jsonl")

    assert len(result.frame) == 1
    assert result.rejects == []


def test_unknown_content_raises(tmp_path):
    path = tmp_path / "events.txt"
    path.write_text("hello world\n")

    with pytest.raises(ReaderError, match=r"events.txt: cannot tell the format .*--format jsonl\|csv\|parquet\|combined"):
        read_one(path)


def test_unknown_format_option_raises(tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", [make_record(1)])

    with pytest.raises(ReaderError, match="unknown format 'xml'"):
        read_one(path, format="xml")


def test_missing_path_raises(tmp_path):
    with pytest.raises(ReaderError, match="nothere.jsonl: file not found"):
        read_one(tmp_path / "nothere.jsonl")


def test_missing_second_path_raises_before_reading(tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", [make_record(1)])

    with pytest.raises(ReaderError, match="later.jsonl: file not found"):
        read_events([path, tmp_path / "later.jsonl"])


def test_directory_path_raises(tmp_path):
    with pytest.raises(ReaderError, match="is a directory"):
        read_one(tmp_path)


def test_broken_parquet_raises(tmp_path):
    path = tmp_path / "events.parquet"
    path.write_bytes(b"PAR1 this is not parquet")

    with pytest.raises(ReaderError, match="events.parquet: not a readable Parquet file"):
        read_one(path)


def test_progress_adds_up_to_file_sizes(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [make_record(number) for number in range(50)])
    second = gzip_copy(write_csv(tmp_path / "b.csv", [make_record(number) for number in range(50, 90)]))
    third = write_parquet(tmp_path / "c.parquet", [make_record(number) for number in range(90, 99)])
    reported = []

    read_events([first, second, third], progress=reported.append)

    assert sum(reported) == first.stat().st_size + second.stat().st_size + third.stat().st_size
    assert all(amount > 0 for amount in reported)


# Reject rules


def test_reject_message_format(tmp_path, json_parser):
    records = [make_record(1), make_record(2, ts="2026-13-01")]
    result = read_one(write_jsonl(tmp_path / "events.jsonl", records))

    assert reject_lines(result) == [
        f"{tmp_path / 'events.jsonl'}:2: ts: not an RFC 3339 time or epoch seconds: '2026-13-01'"
    ]


def test_reject_names_file_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "events.jsonl", [make_record(1, ts="2026-13-01")])

    result = read_events(["events.jsonl"])

    assert reject_lines(result) == ["events.jsonl:1: ts: not an RFC 3339 time or epoch seconds: '2026-13-01'"]


def test_missing_field_rejected(tmp_path, json_parser):
    record = make_record(1)
    del record["account_id"]
    result = read_one(write_jsonl(tmp_path / "events.jsonl", [make_record(0), record]))

    assert [(reject.line, reject.field, reject.reason) for reject in result.rejects] == [
        (2, "account_id", "missing required field")
    ]
    assert len(result.frame) == 1


def test_null_counts_as_missing(tmp_path, json_parser):
    result = read_one(write_jsonl(tmp_path / "events.jsonl", [make_record(1, model=None)]))

    assert reject_lines(result)[0].endswith("model: missing required field")


def test_first_failing_field_is_reported(tmp_path, json_parser):
    record = make_record(1, ts="yesterday", status=42, cost=-1)
    result = read_one(write_jsonl(tmp_path / "events.jsonl", [record]))

    assert [reject.field for reject in result.rejects] == ["ts"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "not a finite number: nan"),
        (float("inf"), "not a finite number: inf"),
        (-3, "negative: -3"),
        (2.5, "not a whole number: 2.5"),
        (True, "a boolean where a number is expected: True"),
        ("many", "not a number: 'many'"),
        (2.0**60, "larger than 2**53: 1.152921504606847e+18"),
    ],
)
def test_bad_count_rejected(value, reason):
    frame, rejects = validate_records([make_record(1, prompt_tokens=value)], "stream")

    assert [reject.format() for reject in rejects] == [f"stream:1: prompt_tokens: {reason}"]
    assert frame.empty


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "not a finite number: nan"),
        (float("-inf"), "not a finite number: -inf"),
        (-0.01, "negative: -0.01"),
        (False, "a boolean where a number is expected: False"),
    ],
)
def test_bad_cost_rejected(value, reason):
    _, rejects = validate_records([make_record(1, cost=value)], "stream")

    assert [reject.format() for reject in rejects] == [f"stream:1: cost: {reason}"]


def test_nan_literal_in_json_rejected(tmp_path, json_parser):
    good = json.dumps(make_record(1))
    bad = json.dumps(make_record(2)).replace('"cost": 0.25', '"cost": NaN')
    result = read_one(write_lines(tmp_path / "events.jsonl", [good, bad]))

    assert [reject.line for reject in result.rejects] == [2]
    assert result.frame["request_id"].tolist() == ["req-00001"]


def test_numbers_as_strings_accepted(tmp_path, json_parser):
    record = make_record(1, prompt_tokens="120", cost="0.5", status="429")
    frame = read_one(write_jsonl(tmp_path / "events.jsonl", [record])).frame

    assert frame["prompt_tokens"].tolist() == [120]
    assert frame["cost"].tolist() == [0.5]
    assert frame["status"].tolist() == [429]


def test_whole_float_count_accepted():
    frame, rejects = validate_records([make_record(1, completion_tokens=7.0)], "stream")

    assert rejects == []
    assert frame["completion_tokens"].tolist() == [7]


@pytest.mark.parametrize("status", [99, 600])
def test_status_outside_http_range_rejected(status):
    _, rejects = validate_records([make_record(1, status=status)], "stream")

    assert [reject.reason for reject in rejects] == [f"not an HTTP status code (100-599): {status}"]


def test_huge_string_cut_with_hash(tmp_path, json_parser):
    huge = "x" * (MAX_TEXT_LENGTH + 88)
    other = "x" * (MAX_TEXT_LENGTH + 89)
    result = read_one(write_jsonl(tmp_path / "events.jsonl", [make_record(1, user_agent=huge), make_record(2, user_agent=other)]))

    agents = list(result.frame["user_agent"])
    assert result.rejects == []
    assert [len(agent) for agent in agents] == [MAX_TEXT_LENGTH, MAX_TEXT_LENGTH]
    assert agents[0].startswith("xxx")
    assert "~sha256:" in agents[0]
    assert agents[0] != agents[1]


def test_secrets_hashed_in_every_text_field(tmp_path, json_parser):
    secret = "sk-proj-" + "A1b2" * 8
    record = make_record(1, plan=secret, model=secret, user_agent=f"Bearer {secret}", prompt_hash=secret)
    result = read_one(write_jsonl(tmp_path / "events.jsonl", [record]))

    assert result.rejects == []
    assert secret not in result.frame.to_json()
    assert any("plan values looked like API key secrets" in warning for warning in result.warnings)


@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string()])
def test_secret_prefilter_never_misses(arrow_type):
    values = ["plain", None, "", "xsk-", "s", "k-", "Bearer sk-proj-" + "A1b2" * 8, "task-0123456789abcdef0"]
    strings = pa.array(values, type=arrow_type)

    for start in range(len(values)):
        for stop in range(start, len(values) + 1):
            piece = strings.slice(start, stop - start)
            exact = any(value is not None and "sk-" in value for value in values[start:stop])
            assert may_contain_secret(piece) or not exact, (start, stop)
    assert not may_contain_secret(pa.array(["plain", None, "mask_1"], type=arrow_type))
    assert may_contain_secret(pa.array(["Bearer sk-1"], type=arrow_type))


def test_prompt_hash_shortcut_matches_pattern():
    hashes = ["39a9f358b11b", "", "abc=", "QUJD+/_:.-", "no space", "tab\there", "é", "a" * 129]
    records = [make_record(number, prompt_hash=value) for number, value in enumerate(hashes, 1)]

    clean, clean_rejects = validate_records(records[:4], "stream")
    mixed, mixed_rejects = validate_records(records, "stream")

    assert clean_rejects == []
    assert list(clean["prompt_hash"]) == hashes[:4]
    assert [(reject.line, reject.field) for reject in mixed_rejects] == [(number, "prompt_hash") for number in (5, 6, 7, 8)]
    assert only_hash_characters(pa.array(hashes[:4]))
    assert not only_hash_characters(pa.array(hashes))
    _, long_rejects = validate_records([make_record(1, prompt_hash="a" * 129)], "stream")
    assert [reject.field for reject in long_rejects] == ["prompt_hash"]


def test_text_at_max_length_accepted():
    frame, rejects = validate_records([make_record(1, model="m" * MAX_TEXT_LENGTH)], "stream")

    assert rejects == []
    assert len(frame) == 1


def test_empty_identifier_rejected():
    _, rejects = validate_records([make_record(1, request_id="")], "stream")

    assert [(reject.field, reject.reason) for reject in rejects] == [("request_id", "empty or blank string")]


def test_text_field_given_number_rejected():
    _, rejects = validate_records([make_record(1, account_id=42)], "stream")

    assert [reject.format() for reject in rejects] == ["stream:1: account_id: not a string: 42"]


def test_naive_timestamp_rejected(tmp_path, json_parser):
    result = read_one(write_jsonl(tmp_path / "events.jsonl", [make_record(1, ts="2026-11-23T10:00:00")]))

    assert [reject.reason for reject in result.rejects] == [
        "time has no UTC offset (add Z or +hh:mm): '2026-11-23T10:00:00'"
    ]


@pytest.mark.parametrize("ts", ["2026-11-23T10Z", "2026-11-23T10+08", "2026-11-23 10Z", "2026-11-23T10+08:00"])
@pytest.mark.parametrize("batch", ["alone", "mixed"])
def test_hour_only_time_rejected(ts, batch):
    # One style in a batch takes Arrow's cast, a mix takes the value-by-value path.
    records = [make_record(number, ts=ts) for number in range(3)]
    if batch == "mixed":
        records.append(make_record(3, ts="2026-11-23T10:00:00Z"))

    _, rejects = validate_records(records, "stream")

    assert [(reject.line, reject.field) for reject in rejects] == [(1, "ts"), (2, "ts"), (3, "ts")]
    assert rejects[0].reason.startswith("not an RFC 3339 time or epoch seconds")


@pytest.mark.parametrize("ts", ["1999-12-31T23:59:59Z", "2101-01-01T00:00:00Z", 1795428000000, "9999-01-01T00:00:00Z"])
def test_absurd_year_rejected(ts):
    _, rejects = validate_records([make_record(1, ts=ts)], "stream")

    assert [reject.field for reject in rejects] == ["ts"]
    assert rejects[0].reason.startswith("outside the years 2000-2100")


@pytest.mark.parametrize(
    ("ts", "hint"),
    [(1795428000000, "not milliseconds"), ("1795428000000", "not milliseconds"),
     ("9999-01-01T00:00:00Z", "check the gateway's clock"), ("1990-01-01T00:00:00+08:00", "check the gateway's clock")],
)
def test_out_of_range_hint_fits_style(ts, hint):
    _, rejects = validate_records([make_record(1, ts=ts), make_record(2)], "stream")

    assert hint in rejects[0].reason


@pytest.mark.parametrize("ts", [1795428000, 1795428000.0, "1795428000", "1795428000.0"])
def test_epoch_seconds_accepted(tmp_path, json_parser, ts):
    frame = read_one(write_jsonl(tmp_path / "events.jsonl", [make_record(1, ts=ts)])).frame

    assert frame["ts"].tolist() == [1795428000.0]


def test_epoch_fraction_kept():
    frame, _ = validate_records([make_record(1, ts=1795428000.25)], "stream")

    assert frame["ts"].tolist() == [1795428000.25]


def test_offset_time_converted_to_utc(tmp_path, json_parser):
    records = [make_record(1, ts="2026-11-23T18:00:00+08:00"), make_record(2, ts="2026-11-23T10:00:00.5Z")]
    frame = read_one(write_jsonl(tmp_path / "events.jsonl", records)).frame

    assert frame["ts"].tolist() == [utc_epoch("2026-11-23T10:00:00+00:00"), utc_epoch("2026-11-23T10:00:00.5+00:00")]


def test_mixed_time_styles_in_one_file(tmp_path, json_parser):
    records = [make_record(1, ts="2026-11-23T10:00:00Z"), make_record(2, ts=1795428000), make_record(3, ts="bogus")]
    result = read_one(write_jsonl(tmp_path / "events.jsonl", records))

    assert sorted(result.frame["request_id"]) == ["req-00001", "req-00002"]
    assert [(reject.line, reject.field) for reject in result.rejects] == [(3, "ts")]


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), (1, True), (0, False), ("true", True), ("FALSE", False), ("1", True)])
def test_stream_flag_spellings(value, expected):
    frame, rejects = validate_records([make_record(1, stream=value)], "stream")

    assert rejects == []
    assert frame["stream"].tolist() == [expected]


@pytest.mark.parametrize("value", [2, "yes", 0.5])
def test_stream_flag_other_values_rejected(value):
    _, rejects = validate_records([make_record(1, stream=value)], "stream")

    assert [reject.field for reject in rejects] == ["stream"]


@pytest.mark.parametrize(("address", "stored"), [("::ffff:192.0.2.1", "192.0.2.1"), ("2001:0DB8::0001", "2001:db8::1"), ("192.0.2.1", "192.0.2.1")])
def test_ip_stored_normalised(address, stored):
    frame, _ = validate_records([make_record(1, ip=address)], "stream")

    assert frame["ip"].tolist() == [stored]


@pytest.mark.parametrize(
    ("address", "stored"),
    [("fe80::1%eth0", "fe80::1"), ("FE80::1%ETH0", "fe80::1"), ("fe80::1%" + "x" * 600, "fe80::1"),
     ("fe80::1% spaced", "fe80::1"), ("::ffff:192.0.2.1%eth0", "192.0.2.1")],
)
def test_ipv6_zone_id_dropped(address, stored):
    frame, rejects = validate_records([make_record(1, ip=address)], "stream")

    assert rejects == []
    assert frame["ip"].tolist() == [stored]


@pytest.mark.parametrize("address", ["192.0.2.1%eth0", "fe80::1%", "fe80::1%a%b"])
def test_malformed_zone_id_rejected(address):
    _, rejects = validate_records([make_record(1, ip=address)], "stream")

    assert [reject.reason for reject in rejects] == [f"not an IPv4 or IPv6 address: {address!r}"]


@pytest.mark.parametrize("address", ["192.0.2.256", "192.0.2.01", "example.com", "192.0.2.1:443"])
def test_invalid_ip_rejected(address):
    _, rejects = validate_records([make_record(1, ip=address)], "stream")

    assert [reject.reason for reject in rejects] == [f"not an IPv4 or IPv6 address: {address!r}"]


def test_invalid_country_rejected():
    _, rejects = validate_records([make_record(1, country="DEU")], "stream")

    assert [reject.reason for reject in rejects] == ["not an ISO 3166-1 alpha-2 country code: 'DEU'"]


def test_prompt_text_in_hash_field_rejected_without_echo():
    prompt = "please write my homework essay about the roman empire"
    _, rejects = validate_records([make_record(1, prompt_hash=prompt)], "stream")

    assert [reject.field for reject in rejects] == ["prompt_hash"]
    assert "roman" not in rejects[0].format()


def test_long_prompt_hash_rejected():
    _, rejects = validate_records([make_record(1, prompt_hash="a" * 129)], "stream")

    assert [reject.field for reject in rejects] == ["prompt_hash"]


def test_base64_prompt_hash_accepted():
    frame, rejects = validate_records([make_record(1, prompt_hash="sha256:n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=")], "stream")

    assert rejects == []
    assert len(frame) == 1


def test_invalid_json_line_rejected(tmp_path, json_parser):
    lines = [json.dumps(make_record(1)), '{"request_id": "req-x", ', json.dumps(make_record(3))]
    result = read_one(write_lines(tmp_path / "events.jsonl", lines))

    assert [(reject.line, reject.field) for reject in result.rejects] == [(2, "-")]
    assert result.rejects[0].reason.startswith("invalid JSON: ")
    assert result.frame["request_id"].tolist() == ["req-00001", "req-00003"]
    assert result.records == 3


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_json_names_its_field(tmp_path, json_parser, word):
    line = json.dumps(make_record(2)).replace('"cost": 0.25', f'"cost": {word}')
    result = read_one(write_lines(tmp_path / "events.jsonl", [json.dumps(make_record(1)), line]))

    # Both parsers read these words as numbers, so the cost check names the field.
    assert len(result.rejects) == 1
    reject = result.rejects[0]
    assert (reject.line, reject.field) == (2, "cost")
    assert reject.reason.startswith("not a finite number")


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_broken_json_line_named(tmp_path, json_parser, word):
    line = json.dumps(make_record(2)).replace('"cost": 0.25', f'"cost": {word}').replace('"status": ', '"status" ')
    result = read_one(write_lines(tmp_path / "events.jsonl", [json.dumps(make_record(1)), line]))

    assert len(result.rejects) == 1
    reject = result.rejects[0]
    assert (reject.line, reject.field) == (2, "-")
    assert reject.reason.endswith(f"{word} in 'cost' is not a JSON number; send a number, or null where the field is optional")


@pytest.mark.parametrize(("line", "kind"), [("[1, 2]", "array"), ("42", "number"), ('"text"', "string"), ("null", "null")])
def test_non_object_json_rejected(tmp_path, json_parser, line, kind):
    lines = [json.dumps(make_record(1)), line]
    result = read_one(write_lines(tmp_path / "events.jsonl", lines))

    assert [(reject.line, reject.field, reject.reason) for reject in result.rejects] == [
        (2, "-", f"not a JSON object: got {kind}")
    ]


@pytest.mark.parametrize("null_line", ["null", "  null", "nulll"])
def test_null_line_rejected_without_crash(tmp_path, monkeypatch, null_line):
    # pyarrow 26.0.1 crashes when a parse chunk starts with such a line, so the reader must not pass it on.
    monkeypatch.setattr(jsonl_module, "MIN_ARROW_LINES", 0)
    monkeypatch.setattr(jsonl_module, "ARROW_CHUNK_SIZE", 64)
    lines = [json.dumps(make_record(number)) for number in range(6)]
    lines[0] = lines[3] = null_line
    result = read_one(write_lines(tmp_path / "events.jsonl", lines))

    assert [(reject.line, reject.field) for reject in result.rejects] == [(1, "-"), (4, "-")]
    assert len(result.frame) == 4


def test_two_objects_on_one_line_rejected(tmp_path, json_parser):
    lines = [json.dumps(make_record(1)) + " " + json.dumps(make_record(2)), json.dumps(make_record(3))]
    result = read_one(write_lines(tmp_path / "events.jsonl", lines))

    assert [(reject.line, reject.field) for reject in result.rejects] == [(1, "-")]
    assert result.frame["request_id"].tolist() == ["req-00003"]


def test_blank_lines_do_not_shift_line_numbers(tmp_path, json_parser):
    lines = ["", json.dumps(make_record(1)), "   ", "\t", json.dumps(make_record(2, ts="2026-13-01")), ""]
    result = read_one(write_lines(tmp_path / "events.jsonl", lines))

    assert [reject.line for reject in result.rejects] == [5]
    assert result.records == 2


def test_crlf_line_endings_read(tmp_path, json_parser):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(json.dumps(make_record(number)).encode() + b"\r\n" for number in range(3)))

    result = read_one(path)

    assert len(result.frame) == 3
    assert result.rejects == []


def test_unknown_fields_ignored(tmp_path, json_parser):
    records = [make_record(1, extra={"nested": [1, 2]}, subject_type="ip"), make_record(2, extra="text")]
    result = read_one(write_jsonl(tmp_path / "events.jsonl", records))

    assert result.rejects == []
    assert "extra" not in result.frame.columns
    assert result.frame["subject_type"].tolist() == ["key", "key"]


def test_one_bad_type_keeps_rest_of_arrow_block(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_module, "MIN_ARROW_LINES", 16)
    records = [make_record(number) for number in range(1000)]
    records[500]["prompt_tokens"] = "lots"
    records[700]["ip"] = 7
    result = read_one(write_jsonl(tmp_path / "events.jsonl", records))

    assert [(reject.line, reject.field) for reject in result.rejects] == [(501, "prompt_tokens"), (701, "ip")]
    assert len(result.frame) == 998
    assert result.records == 1000


def test_invalid_utf8_line_rejected(tmp_path, json_parser):
    path = tmp_path / "events.jsonl"
    bad = json.dumps(make_record(2)).encode().replace(b"gpt-4o", b"gpt-\xff")
    path.write_bytes(json.dumps(make_record(1)).encode() + b"\n" + bad + b"\n")

    result = read_one(path)

    assert [reject.line for reject in result.rejects] == [2]
    assert len(result.frame) == 1


def test_one_reject_per_record(tmp_path, json_parser):
    records = [make_record(number, ts="bad", cost=-1) for number in range(5)]
    result = read_one(write_jsonl(tmp_path / "events.jsonl", records))

    assert [reject.line for reject in result.rejects] == [1, 2, 3, 4, 5]
    assert result.records == 5


# Secrets


def test_secret_key_hashed_with_warning(tmp_path, json_parser):
    records = [make_record(1, key_id=SECRET), make_record(2, key_id="sk-" + "b" * 20), make_record(3)]
    path = write_jsonl(tmp_path / "events.jsonl", records)
    result = read_one(path)

    assert result.frame["key_id"].tolist()[0].startswith("sha256:")
    assert len(result.frame["key_id"].tolist()[0]) == len("sha256:") + 16
    assert result.warnings == [
        f"{path}: 2 key_id values looked like API key secrets (sk-...) "
        "and were replaced by their SHA-256 hash"
    ]


def test_secret_appears_nowhere(tmp_path, json_parser):
    records = [make_record(1, key_id=SECRET), make_record(2, key_id=SECRET, ts="2026-13-01")]
    result = read_one(write_jsonl(tmp_path / "events.jsonl", records))

    assert SECRET not in result.frame.to_csv()
    assert all(SECRET not in warning for warning in result.warnings)
    assert all(SECRET not in line for line in reject_lines(result))


def test_same_secret_gets_same_hash():
    frame, _ = validate_records([make_record(1, key_id=SECRET), make_record(2, key_id=SECRET)], "stream")

    assert frame["key_id"].nunique() == 1


@pytest.mark.parametrize("wrapped", [SECRET + "\n", " " + SECRET, "Bearer " + SECRET, f'"{SECRET}"'])
def test_wrapped_secret_hashed_like_bare_one(wrapped):
    frame, _ = validate_records([make_record(1, key_id=wrapped), make_record(2, key_id=SECRET)], "stream")

    assert frame["key_id"].tolist()[0].startswith("sha256:")
    assert frame["key_id"].nunique() == 1


def test_secret_inside_word_kept():
    key_id = "task-0123456789abcdefghij"

    frame, _ = validate_records([make_record(1, key_id=key_id)], "stream")

    assert frame["key_id"].tolist() == [key_id]


def test_secret_in_account_id_hashed(tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", [make_record(1, account_id=SECRET)])

    result = read_one(path)

    assert result.frame["account_id"].tolist()[0].startswith("sha256:")
    assert result.warnings == [
        f"{path}: 1 account_id values looked like API key secrets (sk-...) and were replaced by their SHA-256 hash"
    ]


def test_non_string_secret_hidden_in_reject(tmp_path, json_parser):
    result = read_one(write_jsonl(tmp_path / "events.jsonl", [make_record(1, key_id=[SECRET])]))

    assert [(reject.field, reject.reason.split(":")[0]) for reject in result.rejects] == [("key_id", "not a string")]
    assert SECRET not in result.rejects[0].reason
    assert "sha256:" in result.rejects[0].reason


def test_short_sk_value_kept():
    frame, _ = validate_records([make_record(1, key_id="sk-test")], "stream")

    assert frame["key_id"].tolist() == ["sk-test"]


# Order, duplicates and counts


def test_out_of_order_input_sorted(tmp_path, json_parser):
    records = [make_record(number) for number in (5, 1, 4, 2, 3)]
    frame = read_one(write_jsonl(tmp_path / "events.jsonl", records)).frame

    assert frame["request_id"].tolist() == [f"req-0000{number}" for number in (1, 2, 3, 4, 5)]
    assert list(frame.index) == [0, 1, 2, 3, 4]


def test_equal_times_keep_input_order(tmp_path):
    records = [make_record(number, ts=1795428000) for number in (3, 1, 2)]
    frame = read_one(write_jsonl(tmp_path / "events.jsonl", records)).frame

    assert frame["request_id"].tolist() == ["req-00003", "req-00001", "req-00002"]


def test_duplicate_request_id_in_file_counted_once(tmp_path, json_parser):
    records = [make_record(1, model="first"), make_record(2), make_record(1, model="second")]
    result = read_one(write_jsonl(tmp_path / "events.jsonl", records))

    assert result.frame["request_id"].tolist() == ["req-00001", "req-00002"]
    assert result.frame["model"].tolist()[0] == "first"
    assert result.duplicates == 1
    assert result.records == 3


def test_duplicate_request_id_across_files_counted_once(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [make_record(1, model="first"), make_record(2)])
    second = write_csv(tmp_path / "b.csv", [make_record(1, model="second"), make_record(3)])

    result = read_events([first, second])

    assert sorted(result.frame["request_id"]) == ["req-00001", "req-00002", "req-00003"]
    assert result.frame.set_index("request_id").loc["req-00001", "model"] == "first"
    assert result.duplicates == 1
    assert result.records == 4


def test_rejected_record_does_not_count_as_duplicate(tmp_path):
    records = [make_record(1, ts="bad"), make_record(1)]
    result = read_one(write_jsonl(tmp_path / "events.jsonl", records))

    assert result.frame["request_id"].tolist() == ["req-00001"]
    assert result.duplicates == 0


def test_empty_file_reads_nothing(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"")

    result = read_one(path)

    assert result.records == 0
    assert result.rejects == []
    assert list(result.frame.columns) == list(COLUMNS)
    assert result.frame.empty


@pytest.mark.parametrize("name", ["events.csv", "events.log", "events.jsonl.gz", "events.unknown"])
def test_empty_file_of_any_kind_reads_nothing(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"")

    assert read_one(path).records == 0


def test_blank_only_file_reads_nothing(tmp_path, json_parser):
    result = read_one(write_lines(tmp_path / "events.jsonl", ["", "  ", ""]))

    assert result.records == 0
    assert result.frame.empty


def test_no_paths_reads_nothing():
    result = read_events([])

    assert result.records == 0
    assert result.frame.empty


# gzip


def test_truncated_gzip_keeps_good_prefix(tmp_path):
    records = [make_record(number, user_agent=f"agent-{number}-" + "z" * 40) for number in range(2000)]
    compressed = gzip_copy(write_jsonl(tmp_path / "events.jsonl", records)).read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(compressed[: len(compressed) // 2])

    result = read_one(path)

    kept = len(result.frame)
    assert 0 < kept < 2000
    assert result.frame["request_id"].tolist() == [f"req-{number:05d}" for number in range(kept)]
    assert len(result.rejects) == 1
    assert result.rejects[0].line == kept + 1
    assert result.rejects[0].reason.startswith("truncated gzip stream")
    assert result.records == kept + 1
    assert any("truncated gzip stream" in warning for warning in result.warnings)


def test_gzip_cut_in_header_says_nothing_read(tmp_path):
    compressed = gzip_copy(write_jsonl(tmp_path / "events.jsonl", [make_record(1)])).read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(compressed[:10])

    result = read_one(path)

    assert len(result.frame) == 0
    assert [reject.line for reject in result.rejects] == [1]
    assert "no line could be read, so check that the file was copied whole" in result.rejects[0].reason
    assert "the lines before this one" not in result.rejects[0].reason
    assert any(warning.endswith("; no record could be read") for warning in result.warnings)


def test_truncated_gzip_csv_keeps_good_prefix(tmp_path):
    records = [make_record(number) for number in range(2000)]
    compressed = gzip_copy(write_csv(tmp_path / "events.csv", records)).read_bytes()
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(compressed[: len(compressed) // 2])

    result = read_one(path)

    assert 0 < len(result.frame) < 2000
    assert [reject.reason.startswith("truncated gzip stream") for reject in result.rejects] == [True]


def test_truncated_gzip_parquet_raises(tmp_path):
    compressed = gzip_copy(write_parquet(tmp_path / "events.parquet", [make_record(1)])).read_bytes()
    path = tmp_path / "cut.parquet.gz"
    path.write_bytes(compressed[:-20])

    with pytest.raises(ReaderError, match="truncated gzip stream"):
        read_one(path)


def test_gzip_zero_padding_ignored(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(json.dumps(make_record(1)).encode() + b"\n") + b"\x00" * 512)

    result = read_one(path)

    assert len(result.frame) == 1
    assert result.rejects == []
    assert result.warnings == []


def test_gzip_trailing_garbage_reported(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(json.dumps(make_record(1)).encode() + b"\n") + b"garbage")

    result = read_one(path)

    assert len(result.frame) == 1
    assert [(reject.line, reject.field) for reject in result.rejects] == [(2, "-")]
    assert result.rejects[0].reason.startswith("invalid gzip stream")


def test_concatenated_gzip_members_read(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    first = gzip.compress(json.dumps(make_record(1)).encode() + b"\n")
    second = gzip.compress(json.dumps(make_record(2)).encode() + b"\n")
    path.write_bytes(first + second)

    result = read_one(path)

    assert result.frame["request_id"].tolist() == ["req-00001", "req-00002"]
    assert result.warnings == []


def test_gzip_bad_checksum_keeps_content(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    damaged = bytearray(gzip.compress(b"".join(json.dumps(make_record(n)).encode() + b"\n" for n in range(20))))
    damaged[-8] ^= 0xFF  # the CRC-32 in the trailer
    path.write_bytes(bytes(damaged))

    result = read_one(path)

    assert len(result.frame) == 20
    assert [(reject.line, reject.field) for reject in result.rejects] == [(21, "-")]
    assert result.rejects[0].reason.startswith("gzip checksum mismatch")
    assert [warning.split(": ")[1] for warning in result.warnings] == ["gzip checksum mismatch"]


def test_gzip_bad_length_reported(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    damaged = bytearray(gzip.compress(json.dumps(make_record(1)).encode() + b"\n"))
    damaged[-4] ^= 0xFF  # the length in the trailer
    path.write_bytes(bytes(damaged))

    result = read_one(path)

    assert len(result.frame) == 1
    assert [reject.reason.split(":")[0] for reject in result.rejects] == ["gzip length mismatch"]


def test_gzip_header_with_file_name_read(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    with gzip.GzipFile(filename="original-name.jsonl", mode="wb", fileobj=path.open("wb")) as handle:
        handle.write(json.dumps(make_record(1)).encode() + b"\n")

    result = read_one(path)

    assert len(result.frame) == 1
    assert result.warnings == []


def test_gzip_read_in_small_pieces(tmp_path, monkeypatch):
    # Member headers, deflate data and trailers split across reads.
    monkeypatch.setattr(source_module, "READ_SIZE", 3)
    path = tmp_path / "events.jsonl.gz"
    first = gzip.compress(b"".join(json.dumps(make_record(n)).encode() + b"\n" for n in range(30)))
    second = gzip.compress(json.dumps(make_record(30)).encode() + b"\n")
    path.write_bytes(first + second)

    result = read_one(path)

    assert len(result.frame) == 31
    assert result.rejects == []
    assert result.warnings == []


# Pipes


def read_through_fifo(tmp_path, source):
    """Read ``source`` through a named pipe without an extension, so the format comes from the content."""
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f'cat "{source}" > "{fifo}"'])
    try:
        return read_one(fifo)
    finally:
        writer.kill()
        writer.wait()


def test_fifo_read_completely(tmp_path):
    records = [make_record(number) for number in range(3000)]
    source = write_jsonl(tmp_path / "source.jsonl", records)
    result = read_through_fifo(tmp_path, source)

    assert result.records == 3000
    assert len(result.frame) == 3000
    assert result.rejects == []


def test_fifo_gzip_parquet_read(tmp_path):
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([make_record(number) for number in range(50)]), buffer)
    source = tmp_path / "source.gz"
    source.write_bytes(gzip.compress(buffer.getvalue().to_pybytes()))
    result = read_through_fifo(tmp_path, source)

    assert len(result.frame) == 50


# CSV and Parquet line numbers


def test_csv_reject_line_counts_header(tmp_path):
    path = write_csv(tmp_path / "events.csv", [make_record(1), make_record(2, status=1000)])

    result = read_one(path)

    assert [(reject.line, reject.field) for reject in result.rejects] == [(3, "status")]


def test_csv_wrong_column_count_rejected(tmp_path):
    path = write_csv(tmp_path / "events.csv", [make_record(1), make_record(2)])
    path.write_text(path.read_text() + "only,three,columns\n")

    result = read_one(path)

    assert [(reject.line, reject.field) for reject in result.rejects] == [(4, "-")]
    assert result.rejects[0].reason == f"expected {len(make_record(1))} columns as in the header, got 3"
    assert len(result.frame) == 2


def test_csv_missing_column_rejects_each_record(tmp_path):
    records = [make_record(number) for number in range(3)]
    for record in records:
        del record["latency_ms"]
    result = read_one(write_csv(tmp_path / "events.csv", records))

    assert [(reject.field, reject.reason) for reject in result.rejects] == [("latency_ms", "missing required field")] * 3
    assert len(result.warnings) == 1
    assert "events.csv: the CSV header has no column latency_ms, which every event needs" in result.warnings[0]


def test_csv_repeated_header_column_raises(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("request_id,ts,request_id\nx,1,y\n")

    with pytest.raises(ReaderError, match="repeats request_id"):
        read_one(path)


def test_csv_header_with_spaces_raises(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("request_id, ts, account_id\nx,1,y\n")

    with pytest.raises(ReaderError, match="header has spaces around column names"):
        read_one(path)


def test_csv_quoted_line_break_rejected_once(tmp_path):
    records = [make_record(number) for number in range(5)]
    records[2]["user_agent"] = "line one\nline two\nline three"
    path = write_csv(tmp_path / "events.csv", records)

    result = read_one(path)

    assert result.records == 5
    assert [(reject.line, reject.field) for reject in result.rejects] == [(4, "-")]
    assert "line break" in result.rejects[0].reason
    assert "not supported" in result.rejects[0].reason
    assert result.frame["request_id"].tolist() == ["req-00000", "req-00001", "req-00003", "req-00004"]


def test_csv_bare_cr_and_line_break_lines(tmp_path):
    # A bare CR adds an Arrow row and a quoted line break removes one, so the row count alone matches.
    records = [make_record(number) for number in range(600)]
    records[59]["cost"] = -1
    records[79]["user_agent"] = "line one\nline two"
    lines = write_csv(tmp_path / "events.csv", records).read_bytes().split(b"\r\n")
    lines[50] = lines[50] + b"\r" + lines[51]
    del lines[51]
    path = tmp_path / "events.csv"
    path.write_bytes(b"\r\n".join(lines))

    result = read_one(path)

    # Record i is on line i + 2 before the join, and one line earlier after it.
    assert [(reject.line, reject.field) for reject in result.rejects] == [(51, "-"), (60, "cost"), (80, "-")]
    assert "a carriage return (CR) inside the line" in result.rejects[0].reason
    assert "line break" in result.rejects[2].reason
    assert len(result.frame) == 599 - 3


@pytest.mark.parametrize("continuation_lines", [None, 3], ids=["default-window", "three-line-window"])
def test_csv_block_edge_break_rejected_once(tmp_path, monkeypatch, continuation_lines):
    # Every position of the broken record is tried, so some cross a 4 kB block edge. With a window of
    # three lines, a record opened just before the block's last lines closes inside them and must not be split.
    from detector.readers import csv_reader
    from detector.readers.source import LineBlocks

    monkeypatch.setattr(csv_reader, "LineBlocks", lambda input_file: LineBlocks(input_file, 4096))
    if continuation_lines is not None:
        monkeypatch.setattr(csv_reader, "MAX_CONTINUATION_LINES", continuation_lines)
    for broken in range(60):
        records = [make_record(number) for number in range(60)]
        records[broken]["user_agent"] = "line one\nline two\nline three"
        path = write_csv(tmp_path / f"events-{broken}.csv", records)

        result = read_one(path)

        assert result.records == 60, broken
        assert [(reject.line, reject.field) for reject in result.rejects] == [(broken + 2, "-")], broken
        assert "line break" in result.rejects[0].reason
        assert len(result.frame) == 59, broken


@pytest.mark.parametrize("odd_value", [b"\xff\xfe", b"u" * 200_000], ids=["not-utf8", "200-kB"])
def test_csv_extra_column_verdict_ignores_stray_quote(tmp_path, odd_value):
    # Arrow reads blocks without stray quotes, the csv module the others: the verdict must not change.
    records = [make_record(number) | {"note": "n"} for number in range(300)]
    for stray in (False, True):
        path = write_csv(tmp_path / "events.csv", records)
        lines = path.read_bytes().split(b"\r\n")
        lines[11] = lines[11][: -len(b"n")] + odd_value
        if stray:
            lines[20] = lines[20].replace(b"openai-python", b'open"ai-python')
        path.write_bytes(b"\r\n".join(lines))

        result = read_one(path)

        assert result.rejects == [], stray
        assert len(result.frame) == 300, stray


def test_csv_not_utf8_contract_field_named(tmp_path):
    path = write_csv(tmp_path / "events.csv", [make_record(number) for number in range(4)])
    path.write_bytes(path.read_bytes().replace(b"key-2", b"key-\xe9"))

    result = read_one(path)

    assert reject_lines(result) == [f"{path}:4: key_id: not valid UTF-8 text; write the log in UTF-8"]


def test_csv_stray_quote_rejects_one_line(tmp_path):
    path = write_csv(tmp_path / "events.csv", [make_record(number) for number in range(4)])
    lines = path.read_text().splitlines()
    lines[2] = 'x,"unclosed'
    path.write_text("\n".join(lines) + "\n")

    result = read_one(path)

    assert result.records == 4
    assert [(reject.line, reject.field) for reject in result.rejects] == [(3, "-")]
    assert len(result.frame) == 3


def test_parquet_null_column_any_type_missing(tmp_path):
    table = pa.Table.from_pylist([make_record(number) for number in range(3)])
    table = table.set_column(table.schema.get_field_index("images"), "images", pa.nulls(3, type=pa.bool_()))
    table = table.set_column(table.schema.get_field_index("country"), "country", pa.nulls(3, type=pa.int64()))
    pq.write_table(table, tmp_path / "events.parquet")

    result = read_one(tmp_path / "events.parquet")

    assert result.rejects == []
    assert result.frame["images"].tolist() == [0, 0, 0]
    assert result.frame["country"].tolist() == ["", "", ""]


def test_parquet_wrong_type_null_is_missing(tmp_path):
    table = pa.Table.from_pylist([make_record(number) for number in range(2)])
    table = table.set_column(table.schema.get_field_index("cost"), "cost", pa.array([True, None]))
    pq.write_table(table, tmp_path / "events.parquet")

    result = read_one(tmp_path / "events.parquet")

    assert [(reject.line, reject.reason) for reject in result.rejects] == [
        (1, "a boolean where a number is expected: True"),
        (2, "missing required field"),
    ]


def test_parquet_repeated_column_raises(tmp_path):
    path = tmp_path / "events.parquet"
    table = pa.table([pa.array(["r1"]), pa.array(["key-1"]), pa.array(["key-2"])], names=["request_id", "key_id", "key_id"])
    pq.write_table(table, path)

    with pytest.raises(ReaderError, match="more than one column named key_id"):
        read_one(path)


def test_parquet_reject_line_is_row_plus_one(tmp_path):
    records = [make_record(number) for number in range(10)]
    records[8]["cost"] = -1.0
    result = read_one(write_parquet(tmp_path / "events.parquet", records))

    assert [(reject.line, reject.field) for reject in result.rejects] == [(9, "cost")]


def test_parquet_timestamp_column_read(tmp_path):
    table = pa.Table.from_pylist([make_record(1)]).set_column(
        1, "ts", pa.array([datetime(2026, 11, 23, 10, tzinfo=timezone.utc)], type=pa.timestamp("us", tz="UTC"))
    )
    pq.write_table(table, tmp_path / "events.parquet")

    frame = read_one(tmp_path / "events.parquet").frame

    assert frame["ts"].tolist() == [utc_epoch("2026-11-23T10:00:00+00:00")]


# validate_records


def test_validate_records_keeps_order_and_duplicates():
    records = [make_record(3), make_record(1), make_record(3)]

    frame, rejects = validate_records(records, "stream")

    assert frame["request_id"].tolist() == ["req-00003", "req-00001", "req-00003"]
    assert rejects == []


def test_validate_records_uses_given_lines():
    records = [make_record(1), make_record(2, ts="bad"), "not a record"]

    _, rejects = validate_records(records, "redis:events", lines=[10, 20, 30])

    assert [reject.format() for reject in rejects] == [
        "redis:events:20: ts: not an RFC 3339 time or epoch seconds: 'bad'",
        "redis:events:30: -: not a JSON object: got string",
    ]


def test_validate_records_first_line_offset():
    _, rejects = validate_records([make_record(1), make_record(2, plan="")], "stream", first_line=100)

    assert [reject.line for reject in rejects] == [101]


def test_validate_records_empty_list():
    frame, rejects = validate_records([], "stream")

    assert frame.empty
    assert list(frame.columns) == list(COLUMNS)
    assert rejects == []


def test_validate_records_mismatched_lines_raises():
    with pytest.raises(ValueError, match="lines has 1 entries for 2 records"):
        validate_records([make_record(1), make_record(2)], "stream", lines=[1])


def test_validate_records_huge_integer_rejected():
    _, rejects = validate_records([make_record(1, prompt_tokens=10**400)], "stream")

    assert [reject.field for reject in rejects] == ["prompt_tokens"]


# Access logs

ACCESS_LINE = '{host} - {user} [23/Nov/2026:10:00:0{second} +0100] "GET {path} HTTP/1.1" {status} 512 "-" "{agent}"'


def access_line(second: int = 0, host: str = "198.51.100.7", user: str = "-", path: str = "/v1/models", status: int = 200, agent: str = "curl/8.5.0") -> str:
    return ACCESS_LINE.format(second=second, host=host, user=user, path=path, status=status, agent=agent)


def test_access_log_client_address_is_subject(tmp_path):
    row = read_one(write_lines(tmp_path / "access.log", [access_line()])).frame.iloc[0]

    assert row["key_id"] == "198.51.100.7"
    assert row["account_id"] == "198.51.100.7"
    assert row["ip"] == "198.51.100.7"
    assert row["subject_type"] == "ip"


def test_access_log_remote_user_is_subject(tmp_path):
    row = read_one(write_lines(tmp_path / "access.log", [access_line(user="alice")])).frame.iloc[0]

    assert row["key_id"] == "alice"
    assert row["account_id"] == "alice"
    assert row["ip"] == "198.51.100.7"
    assert row["subject_type"] == "key"


def test_access_log_fields_mapped(tmp_path):
    line = access_line(second=5, path="/v1/images/generations?size=1024&n=2", status=429)
    row = read_one(write_lines(tmp_path / "access.log", [line])).frame.iloc[0]

    assert row["endpoint"] == "/v1/images/generations"
    assert row["ts"] == utc_epoch("2026-11-23T09:00:05+00:00")
    assert row["status"] == 429
    assert row["user_agent"] == "curl/8.5.0"
    assert row["plan"] == "default"
    assert row["model"] == ""
    assert row["cost"] == 0.0
    assert row["stream"] is np.False_


def access_log_id_prefix(path: Path) -> str:
    """Return the request_id prefix that the access-log reader gives the file at path."""
    return f"access.log@{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"


def test_access_log_request_ids_stable(tmp_path):
    path = write_lines(tmp_path / "access.log", [access_line(second=1), access_line(second=2)])
    prefix = access_log_id_prefix(path)

    first = read_one(path).frame["request_id"].tolist()
    second = read_one(path).frame["request_id"].tolist()

    assert first == [f"{prefix}:1", f"{prefix}:2"]
    assert second == first


def test_access_log_ids_ignore_working_directory(tmp_path, monkeypatch):
    path = write_lines(tmp_path / "access.log", [access_line(second=1)])
    absolute = read_one(path).frame["request_id"].tolist()

    monkeypatch.chdir(tmp_path)
    relative = read_one(Path("access.log")).frame["request_id"].tolist()

    assert relative == absolute


def test_access_log_ids_same_through_symlink(tmp_path):
    path = write_lines(tmp_path / "access.log", [access_line(second=1)])
    link = tmp_path / "current.log"
    link.symlink_to(path)

    assert read_one(link).frame["request_id"].tolist() == read_one(path).frame["request_id"].tolist()


def test_same_named_access_logs_get_distinct_ids(tmp_path):
    paths = []
    for folder in ("web1", "web2"):
        (tmp_path / folder).mkdir()
        paths.append(write_lines(tmp_path / folder / "access.log", [access_line(second=1)]))

    result = read_events(paths)

    assert result.duplicates == 0
    assert len(result.frame) == 2
    assert result.frame["request_id"].str.startswith("access.log@").all()


def test_access_log_gzip_ids_match_plain(tmp_path):
    path = write_lines(tmp_path / "access.log", [access_line(second=1)])
    prefix = access_log_id_prefix(path)

    assert read_one(gzip_copy(path)).frame["request_id"].tolist() == [f"{prefix}:1"]


def test_access_log_malformed_line_rejected(tmp_path):
    lines = [access_line(second=1), "this is not a log line", "", access_line(second=2)]
    result = read_one(write_lines(tmp_path / "access.log", lines))

    assert [(reject.line, reject.field) for reject in result.rejects] == [(2, "-")]
    assert result.rejects[0].reason == "not an Apache/nginx combined log line: 'this is not a log line'"
    prefix = access_log_id_prefix(tmp_path / "access.log")
    assert result.frame["request_id"].tolist() == [f"{prefix}:1", f"{prefix}:4"]
    assert result.records == 3


def test_access_log_escaped_quote_in_agent(tmp_path):
    line = access_line(agent='say \\"hi\\"')
    result = read_one(write_lines(tmp_path / "access.log", [line]))

    assert result.rejects == []
    assert result.frame["user_agent"].tolist() == ['say \\"hi\\"']


def test_access_log_garbage_request_kept(tmp_path):
    line = '198.51.100.7 - - [23/Nov/2026:10:00:00 +0000] "\\x16\\x03\\x01" 400 0 "-" "-"'
    row = read_one(write_lines(tmp_path / "access.log", [line])).frame.iloc[0]

    assert row["endpoint"] == "\\x16\\x03\\x01"
    assert row["status"] == 400
    assert row["user_agent"] == ""


def test_access_log_ipv6_subject_canonical(tmp_path):
    lines = [access_line(second=1, host="2001:0DB8::0001"), access_line(second=2, host="::ffff:192.0.2.1")]
    frame = read_one(write_lines(tmp_path / "access.log", lines)).frame

    assert frame["key_id"].tolist() == ["2001:db8::1", "192.0.2.1"]
    assert frame["account_id"].tolist() == ["2001:db8::1", "192.0.2.1"]
    assert frame["ip"].tolist() == ["2001:db8::1", "192.0.2.1"]


def test_access_log_zone_id_same_subject(tmp_path):
    lines = [access_line(second=1, host="fe80::1%eth0"), access_line(second=2, host="fe80::1")]
    result = read_one(write_lines(tmp_path / "access.log", lines))

    assert result.rejects == []
    assert result.frame["key_id"].tolist() == ["fe80::1", "fe80::1"]


def test_access_log_secret_user_hashed(tmp_path):
    path = write_lines(tmp_path / "access.log", [access_line(second=1, user=SECRET)])

    result = read_one(path)

    assert result.frame["key_id"].tolist()[0].startswith("sha256:")
    assert result.frame["account_id"].tolist() == result.frame["key_id"].tolist()
    assert SECRET not in result.frame.to_csv()


def test_access_log_reject_hides_secret(tmp_path):
    line = access_line(second=1, user=SECRET).removesuffix(' "curl/8.5.0"')
    result = read_one(write_lines(tmp_path / "access.log", [line]))

    assert [reject.field for reject in result.rejects] == ["-"]
    assert SECRET not in result.rejects[0].reason


def test_real_access_log_reads(tmp_path):
    result = read_one(REAL_ACCESS_LOG)

    assert result.records == 10_000
    assert len(result.frame) == 9_999
    assert [(reject.line, reject.field) for reject in result.rejects] == [(8899, "-")]
    assert all(reject.reason for reject in result.rejects)
    assert result.duplicates == 0
    assert result.frame["ts"].is_monotonic_increasing


# Property


record_numbers = st.lists(st.integers(min_value=0, max_value=99_999), min_size=1, max_size=40, unique=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(numbers=record_numbers, seed=st.integers(min_value=0, max_value=2**32 - 1), time_style=st.sampled_from(["epoch", "rfc3339"]))
def test_shuffled_records_read_back_sorted(tmp_path, numbers, seed, time_style):
    records = [make_record(number) for number in numbers]
    if time_style == "rfc3339":
        for record in records:
            record["ts"] = datetime.fromtimestamp(record["ts"], timezone.utc).isoformat()
    np.random.default_rng(seed).shuffle(records)

    frame = read_one(write_jsonl(tmp_path / f"events-{seed}.jsonl", records)).frame

    assert frame["ts"].is_monotonic_increasing
    assert sorted(frame["request_id"]) == sorted(record["request_id"] for record in records)
    assert not math.isnan(frame["ts"].sum())


def test_read_json_lines_numbers_items():
    items = [orjson.dumps(make_record(1)), b"{broken", orjson.dumps(make_record(2)).replace(b",", b",\n"), b"[1]"]

    result = read_json_lines(items, "stream")

    assert list(result.frame["request_id"]) == [make_record(1)["request_id"], make_record(2)["request_id"]]
    assert [(reject.line, reject.field) for reject in result.rejects] == [(2, "-"), (4, "-")]


@pytest.mark.parametrize(
    ("ts", "epoch"),
    [
        ("2016-12-31T23:59:60Z", 1483228800.0),
        ("2016-12-31T23:59:60.25Z", 1483228800.25),
        ("2017-01-01T00:59:60+01:00", 1483228800.0),
    ],
)
def test_leap_second_read_as_next_second(ts, epoch):
    frame, rejects = validate_records([make_record(1, ts=ts), make_record(2)], "stream")

    assert rejects == []
    assert frame.loc[frame["request_id"] == "req-00001", "ts"].item() == epoch


def test_second_61_rejected():
    _, rejects = validate_records([make_record(1, ts="2016-12-31T23:59:61Z")], "stream")

    assert [reject.field for reject in rejects] == ["ts"]


def test_access_log_with_cut_first_line_detected(tmp_path):
    lines = gzip.decompress(REAL_ACCESS_LOG.read_bytes()).splitlines()[:20]
    path = tmp_path / "access.log"
    path.write_bytes(lines[0][37:] + b"\n" + b"\n".join(lines[1:]) + b"\n")

    result = read_events([path])

    assert [reject.line for reject in result.rejects] == [1]
    assert len(result.frame) == 19


def test_json_lines_with_cut_first_line_detected(tmp_path):
    path = tmp_path / "events.txt"
    records = [json.dumps(make_record(number)) for number in range(5)]
    path.write_text(records[0][20:] + "\n" + "\n".join(records[1:]) + "\n")

    result = read_events([path])

    assert [reject.line for reject in result.rejects] == [1]
    assert len(result.frame) == 4


def test_mixed_lines_after_cut_line_not_guessed(tmp_path):
    path = tmp_path / "events.txt"
    path.write_text('ut": 3}\n{"a": 1}\n127.0.0.1 - - [23/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "x"\n')

    with pytest.raises(ReaderError, match="cannot tell the format"):
        read_events([path])


def test_per_line_parse_one_batch():
    # A type that changes on every other line sends the whole block through the per-line parser.
    from detector.readers.base import RawBatch

    records = [make_record(number, prompt_tokens=100 if number % 2 else "100") for number in range(2000)]
    data = "".join(json.dumps(record) + "\n" for record in records).encode()

    items = list(jsonl_module.parse_json_lines(data, 1, "events.jsonl"))

    batches = [item for item in items if isinstance(item, RawBatch)]
    assert len(batches) == 1
    assert batches[0].lines.tolist() == list(range(1, 2001))
