"""Stream entries to events: payload lookup and the line numbering behind the dead letters."""

from __future__ import annotations

import orjson

from workers.entries import clock_tick, event_field, parse_entries

T0 = 1795428000


def _event(number: int, **changes) -> bytes:
    record = {
        "request_id": f"req-{number}", "ts": T0 + number, "account_id": "acct-1", "key_id": "key-1", "plan": "pro",
        "endpoint": "/v1/chat/completions", "model": "gpt-4o", "prompt_tokens": 10, "completion_tokens": 5,
        "cost": 0.1, "ip": "203.0.113.7", "status": 200, "latency_ms": 300, "stream": False,
    }
    record.update(changes)
    return orjson.dumps(record)


def test_event_field_in_flat_fields():
    assert event_field([b"event", b"{}"]) == b"{}"
    assert event_field([b"source", b"litellm", b"event", b"{}"]) == b"{}"
    assert event_field({b"event": b"{}"}) == b"{}"


def test_event_field_missing():
    assert event_field([b"other", b"{}"]) is None
    assert event_field([b"event"]) is None
    assert event_field([]) is None
    assert event_field(None) is None


def test_blank_payloads_dead_lettered():
    entries = [
        (b"1-0", [b"event", _event(1)]),
        (b"2-0", [b"event", b" \t\r\n "]),
        (b"3-0", [b"other", _event(3)]),
        (b"4-0", [b"event", b"{broken"]),
        (b"5-0", [b"event", _event(5)]),
    ]

    parsed = parse_entries(entries, "s")

    assert parsed.frame["request_id"].tolist() == ["req-1", "req-5"]
    assert [entry_id for entry_id, _ in parsed.dead] == [b"2-0", b"3-0", b"4-0"]
    assert "missing or empty 'event' field" in parsed.dead[0][1]


def test_payload_line_breaks_keep_numbering():
    # A raw line break inside a payload must not split it into two lines, or
    # every reject behind it would name the wrong entry.
    entries = [
        (b"1-0", [b"event", _event(1).replace(b",", b",\r\n")]),
        (b"2-0", [b"event", b"{broken\n"]),
        (b"3-0", [b"event", _event(3).replace(b",", b",\r")]),
        (b"4-0", [b"event", b"[1]"]),
    ]

    parsed = parse_entries(entries, "s")

    assert parsed.frame["request_id"].tolist() == ["req-1", "req-3"]
    assert [entry_id for entry_id, _ in parsed.dead] == [b"2-0", b"4-0"]


def test_clock_tick_not_dead_lettered():
    entries = [
        (b"1-0", [b"event", _event(1)]),
        (b"2-0", [b"clock", b"1795431600.0"]),
        (b"3-0", [b"clock", b"1795428000"]),
    ]

    parsed = parse_entries(entries, "s")

    assert parsed.clock == 1795431600.0
    assert parsed.dead == []
    assert parsed.frame["request_id"].tolist() == ["req-1"]


def test_invalid_clock_tick_dead_lettered():
    entries = [(b"1-0", [b"clock", b"yesterday"]), (b"2-0", [b"clock", b"nan"]), (b"3-0", [b"clock", b"-5"])]

    parsed = parse_entries(entries, "s")

    assert parsed.clock is None
    assert [entry_id for entry_id, _ in parsed.dead] == [b"1-0", b"2-0", b"3-0"]
    assert "s:1-0: 'clock' field b'yesterday' is not epoch seconds" in parsed.dead[0][1]
    assert "clock_tick" in parsed.dead[0][1]


def test_clock_tick_fields_round_trip():
    assert parse_entries([(b"1-0", clock_tick(1795431600.5))], "s").clock == 1795431600.5


def test_trimmed_entry_dead_lettered():
    parsed = parse_entries([(b"1-0", None), (b"2-0", [b"event", _event(2)])], "s")

    assert parsed.frame["request_id"].tolist() == ["req-2"]
    assert [entry_id for entry_id, _ in parsed.dead] == [b"1-0"]
    assert "trimmed from the stream before a worker acknowledged it" in parsed.dead[0][1]
