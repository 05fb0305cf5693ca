"""Small builders of canonical event frames for detector and policy tests."""

from __future__ import annotations

from collections.abc import Sequence
import time
from itertools import count

import numpy as np
import pandas as pd

from detector.events import COLUMNS

# 2026-11-23T00:00:00Z, a Monday.
T0 = 1795392000.0
HOUR = 3600.0
DAY = 86400.0

_ids = count()


def events(
    key: str,
    times: Sequence[float] | np.ndarray,
    *,
    plan: str = "text",
    ip: str | Sequence[str] = "198.51.100.7",
    cost: float | Sequence[float] = 0.01,
    images: int = 0,
    endpoint: str = "/v1/chat/completions",
    user_agent: str | Sequence[str] = "OpenAI/Python 1.51.0",
    prompt_hash: str | Sequence[str] = "",
    country: str | Sequence[str] = "DE",
    latency_ms: float = 900.0,
    account: str | None = None,
    subject_type: str = "key",
) -> pd.DataFrame:
    """Return one canonical row per time in ``times`` (epoch seconds) for ``key``."""
    times = np.asarray(times, dtype=np.float64)
    size = len(times)
    return pd.DataFrame(
        {
            "request_id": [f"{key}-{next(_ids)}" for _ in range(size)],
            "ts": times,
            "account_id": account or f"acct-{key}",
            "key_id": key,
            "plan": plan,
            "endpoint": endpoint,
            "model": "gpt-4o-mini",
            "prompt_tokens": 200,
            "completion_tokens": 80,
            "images": images,
            "cost": _column(cost, size),
            "ip": _column(ip, size),
            "user_agent": _column(user_agent, size),
            "status": 200,
            "latency_ms": latency_ms,
            "stream": False,
            "prompt_hash": _column(prompt_hash, size),
            "country": _column(country, size),
            "subject_type": subject_type,
        }
    )


def frame(*parts: pd.DataFrame) -> pd.DataFrame:
    """Concatenate parts into one canonical frame sorted by time."""
    combined = pd.concat(parts, ignore_index=True).astype(COLUMNS)
    return combined.sort_values("ts", kind="stable").reset_index(drop=True)


def human_times(rng: np.random.Generator, days: int, per_day: int, start: float = T0) -> np.ndarray:
    """Return working-hours request times: a few sessions a day, heavy-tailed gaps."""
    times = []
    for day in range(days):
        for _ in range(max(1, per_day // 8)):
            session_start = start + day * DAY + rng.uniform(8, 19) * HOUR
            gaps = rng.lognormal(mean=3.5, sigma=1.2, size=8)
            times.extend(session_start + np.cumsum(gaps))
    return np.sort(np.asarray(times))


def _column(value, size: int):
    if isinstance(value, (str, int, float)):
        return [value] * size
    values = list(value)
    assert len(values) == size, f"expected {size} values, got {len(values)}"
    return values


def record(number: int, *, ts: float, key: str = "key-1", **changes) -> dict:
    """Return one contract record as a gateway sends it (JSON-ready), numbered ``number``."""
    values = {
        "request_id": f"req-{key}-{number}", "ts": ts, "account_id": f"acct-{key}", "key_id": key,
        "plan": "text", "endpoint": "/v1/chat/completions", "model": "gpt-4o-mini", "prompt_tokens": 100,
        "completion_tokens": 20, "cost": 0.01, "ip": "198.51.100.7", "status": 200, "latency_ms": 800.0,
        "stream": False,
    }
    values.update(changes)
    return values


def wait_until(condition, seconds: float) -> bool:
    """Poll ``condition`` every 50 ms until it is true or ``seconds`` pass; Redis connection errors count as false."""
    import redis

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except redis.ConnectionError:
            pass
        time.sleep(0.05)
    return False
