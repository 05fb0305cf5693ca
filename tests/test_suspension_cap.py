"""The hourly cap on automatic suspensions applies across runs into one store."""

from collections import Counter

import orjson

from detector.batch import BatchOptions, run_batch
from detector.store import open_store
from tests.factories import DAY, HOUR, T0


def _spiking_keys(path, prefix, count):
    """Write keys with a week of small hourly spend, then ten credits within ten minutes."""
    lines = []
    for index in range(count):
        key = f"{prefix}{index}"
        quiet = [(f"{key}-h{hour}", T0 + hour * HOUR + 60 + index, 0.1) for hour in range(7 * 24)]
        spike = [(f"{key}-s{step}", T0 + 7 * DAY + HOUR + step * 60 + index, 1.0) for step in range(10)]
        for request_id, ts, cost in quiet + spike:
            lines.append(orjson.dumps({
                "request_id": request_id, "ts": ts, "account_id": f"acct-{key}", "key_id": key, "plan": "coding",
                "endpoint": "/v1/chat/completions", "model": "m", "prompt_tokens": 10, "completion_tokens": 5,
                "cost": cost, "ip": "203.0.113.9", "status": 200, "latency_ms": 5, "stream": False,
            }))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_second_run_respects_suspensions_of_the_first(tmp_path, sqlite_url):
    first = _spiking_keys(tmp_path / "a.jsonl", "ka", 15)
    second = _spiking_keys(tmp_path / "b.jsonl", "kb", 15)

    run_batch(BatchOptions(paths=[first], database_url=sqlite_url, use_model=False))
    report = run_batch(BatchOptions(paths=[second], database_url=sqlite_url, use_model=False))

    suspensions = [decision for decision in open_store(sqlite_url).all_decisions() if decision.action == "suspend"]
    per_hour = Counter(int(decision.detected_at.timestamp() // HOUR) for decision in suspensions)
    assert len(suspensions) >= 15  # the first run alone suspends every key
    assert max(per_hour.values()) <= 20
    assert any("past the limit of 20 per hour" in warning for warning in report.warnings)
