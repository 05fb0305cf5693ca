"""Arrival times: human sessions on a daily cycle and machine schedules.

All times are UTC epoch seconds as float64, and returned times are sorted
ascending. session_arrivals, parallel_waves and spread_in_sessions can run
past the end of the window, so their callers clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOUR = 3600.0
DAY = 86400.0

# Minimum pause between two sessions of one person, in seconds.
SESSION_PAUSE = 300.0


def _hour_weights(values: list[float]) -> np.ndarray:
    weights = np.array(values, dtype=float)
    return weights / weights.sum()


# Relative activity per local hour 0..23.
EVERYDAY_HOURS = _hour_weights(
    [0.3, 0.15, 0.08, 0.05, 0.05, 0.1, 0.3, 0.7, 1.2, 1.6, 1.8, 1.7, 1.3, 1.5, 1.7, 1.7, 1.5, 1.3, 1.1, 1.2, 1.4, 1.4, 1.1, 0.6]
)
OFFICE_HOURS = _hour_weights(
    [0.02, 0.01, 0.01, 0.01, 0.01, 0.03, 0.1, 0.5, 1.5, 2.0, 2.0, 1.8, 1.0, 1.6, 1.9, 1.9, 1.7, 1.2, 0.5, 0.3, 0.25, 0.2, 0.1, 0.05]
)
EVENING_HOURS = _hour_weights(
    [0.5, 0.3, 0.1, 0.05, 0.05, 0.1, 0.4, 0.9, 1.0, 0.8, 0.7, 0.8, 1.1, 0.9, 0.8, 0.8, 0.9, 1.2, 1.5, 1.8, 2.0, 2.0, 1.6, 1.0]
)


@dataclass(frozen=True, slots=True)
class Persona:
    """Usage pattern of one person: active days, sessions a day and the cadence inside a session.

    ``weekday_active`` and ``weekend_active`` are the chances that a day of
    that type has any session. Sessions per day and requests per session are
    means, and ``hour_weights`` gives the share of sessions starting in each
    local hour.
    """

    weekday_active: float
    weekend_active: float
    sessions_per_day: float
    requests_per_session: float
    gap_median_s: float
    hour_weights: np.ndarray


CASUAL = Persona(0.75, 0.5, 2.2, 6.0, 45.0, EVERYDAY_HOURS)
WORKER = Persona(0.9, 0.15, 3.0, 7.0, 60.0, OFFICE_HOURS)
POWER = Persona(0.95, 0.35, 10.0, 17.0, 30.0, OFFICE_HOURS)
PHONE = Persona(0.8, 0.7, 3.0, 4.0, 40.0, EVERYDAY_HOURS * 0.5 + EVENING_HOURS * 0.5)
CUSTOMER = Persona(0.8, 0.7, 2.0, 8.0, 40.0, EVERYDAY_HOURS)


def local_days(start: float, end: float, utc_offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the UTC start times and weekdays (Monday = 0) of the local days overlapping the window."""
    shift = utc_offset * HOUR
    first = np.floor((start + shift) / DAY)
    last = np.floor((end + shift) / DAY)
    day_numbers = np.arange(first, last + 1)
    weekdays = ((day_numbers + 3) % 7).astype(np.int64)  # 1970-01-01 was a Thursday.
    return day_numbers * DAY - shift, weekdays


def session_starts(
    rng: np.random.Generator,
    persona: Persona,
    start: float,
    end: float,
    utc_offset: float,
    min_sessions: int = 1,
) -> np.ndarray:
    """Draw session start times: active days by weekday, hours from the persona's daily cycle.

    When the draw leaves fewer than ``min_sessions`` sessions in the window,
    sessions at uniformly random times in the window are added to make up the number.
    """
    day_starts, weekdays = local_days(start, end, utc_offset)
    active_share = np.where(weekdays < 5, persona.weekday_active, persona.weekend_active)
    active = rng.random(day_starts.size) < active_share
    counts = np.where(active, 1 + rng.poisson(max(persona.sessions_per_day - 1.0, 0.0), day_starts.size), 0)

    days = np.repeat(day_starts, counts)
    hours = rng.choice(24, size=days.size, p=persona.hour_weights)
    starts = days + hours * HOUR + rng.uniform(0.0, HOUR, days.size)
    starts = starts[(starts >= start) & (starts < end)]

    missing = min_sessions - starts.size
    if missing > 0:
        extra = rng.uniform(start, end, missing)
        starts = np.concatenate([starts, extra])
    return np.sort(starts)


def session_arrivals(
    rng: np.random.Generator,
    persona: Persona,
    starts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill sessions with requests; return request times and each request's session index.

    Requests per session are log-normal around the persona's mean, and the gaps
    between requests are log-normal (heavy right tail) around its median gap.
    Sessions are pushed later where needed so that one person never has two
    sessions open at once.
    """
    if starts.size == 0:
        return np.empty(0), np.empty(0, dtype=np.int64)

    mean = persona.requests_per_session
    sigma = 0.8
    counts = np.maximum(1, np.rint(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, starts.size))).astype(np.int64)
    session = np.repeat(np.arange(starts.size), counts)
    gaps = rng.lognormal(np.log(persona.gap_median_s), 1.0, session.size)

    first_of_session = np.concatenate([[0], np.cumsum(counts)[:-1]])
    gaps[first_of_session] = 0.0
    elapsed = np.cumsum(gaps)
    offsets = elapsed - np.repeat(elapsed[first_of_session], counts)

    durations = offsets[np.cumsum(counts) - 1]
    shifted = _serialise_sessions(starts, durations)
    return shifted[session] + offsets, session


def _serialise_sessions(starts: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """Delay sessions so each starts at least SESSION_PAUSE after the previous one ends.

    This is the recurrence s'[k] = max(s[k], s'[k-1] + d[k-1] + pause), solved
    with a running maximum: s'[k] = max over j <= k of (s[j] - D[j]) + D[k],
    where D[k] is the sum of (d + pause) over sessions before k.
    """
    before = np.concatenate([[0.0], np.cumsum(durations + SESSION_PAUSE)[:-1]])
    return np.maximum.accumulate(starts - before) + before


def hourly_runs(rng: np.random.Generator, start: float, end: float, jitter_s: float) -> np.ndarray:
    """Return one run time per whole UTC hour in the window, each off the hour by a few seconds."""
    first = np.ceil(start / HOUR) * HOUR
    hours = np.arange(first, end, HOUR)
    jitter = np.clip(rng.normal(0.0, jitter_s / 2.0, hours.size), -jitter_s, jitter_s)
    runs = hours + jitter
    return runs[(runs >= start) & (runs < end)]


def poisson_hours(
    rng: np.random.Generator,
    start: float,
    end: float,
    hourly_rates: np.ndarray,
) -> np.ndarray:
    """Draw a Poisson process whose rate is ``hourly_rates[i]`` requests in the i-th hour after ``start``."""
    counts = rng.poisson(np.maximum(hourly_rates, 0.0))
    hour_starts = start + np.arange(hourly_rates.size) * HOUR
    times = np.repeat(hour_starts, counts) + rng.uniform(0.0, HOUR, int(counts.sum()))
    return np.sort(times[times < end])


def steady_hours(
    rng: np.random.Generator,
    start: float,
    end: float,
    hourly_rates: np.ndarray,
) -> np.ndarray:
    """Draw arrivals whose count per hour tracks ``hourly_rates`` to within one request.

    Counts come from systematic sampling of the cumulative rate, so a smooth
    rate gives smooth traffic. Times inside each hour are uniform.
    """
    cumulative = np.floor(np.cumsum(np.maximum(hourly_rates, 0.0)) + rng.uniform())
    counts = np.diff(np.concatenate([[0.0], cumulative])).astype(np.int64)
    hour_starts = start + np.arange(hourly_rates.size) * HOUR
    times = np.repeat(hour_starts, counts) + rng.uniform(0.0, HOUR, int(counts.sum()))
    return np.sort(times[times < end])


def office_rates(start: float, end: float, utc_offset: float, rate: float, first_hour: int, last_hour: int) -> np.ndarray:
    """Return per-hour rates: ``rate`` in local weekday hours [first_hour, last_hour), else zero."""
    hour_starts = start + np.arange(int(np.ceil((end - start) / HOUR))) * HOUR
    local = hour_starts + utc_offset * HOUR
    local_hour = np.floor(local % DAY / HOUR)
    weekday = (np.floor(local / DAY) + 3) % 7
    working = (weekday < 5) & (local_hour >= first_hour) & (local_hour < last_hour)
    return np.where(working, rate, 0.0)


def regular_cadence(rng: np.random.Generator, start: float, end: float, period_s: float, jitter_share: float) -> np.ndarray:
    """Return times every ``period_s`` seconds, each interval jittered by a small share of the period."""
    count = max(1, int((end - start) / period_s))
    intervals = np.maximum(period_s * (1.0 + rng.normal(0.0, jitter_share, count)), 0.1)
    intervals[0] = 0.0
    times = start + np.cumsum(intervals)
    return times[times < end]


def back_to_back(rng: np.random.Generator, start: float, end: float, low_s: float, high_s: float) -> np.ndarray:
    """Return times where each request follows the previous one after ``low_s``..``high_s`` seconds."""
    count = max(1, int((end - start) / ((low_s + high_s) / 2.0)) + 1)
    intervals = rng.uniform(low_s, high_s, count)
    intervals[0] = 0.0
    times = start + np.cumsum(intervals)
    return times[times < end]


def parallel_waves(
    rng: np.random.Generator,
    start: float,
    duration_s: float,
    wave_every_s: float,
    wave_size: tuple[int, int],
) -> np.ndarray:
    """Return a burst: every ``wave_every_s`` seconds a wave of requests sent within half a second."""
    wave_starts = start + np.arange(0.0, duration_s, wave_every_s) + rng.uniform(0.0, 1.0)
    sizes = rng.integers(wave_size[0], wave_size[1] + 1, wave_starts.size)
    times = np.repeat(wave_starts, sizes) + rng.uniform(0.0, 0.5, int(sizes.sum()))
    return np.sort(times)


def spread_in_sessions(rng: np.random.Generator, count: int, starts: np.ndarray, gap_median_s: float) -> np.ndarray:
    """Place ``count`` requests into the given sessions, a log-normal gap apart inside each."""
    session = np.sort(rng.integers(0, starts.size, count))
    gaps = rng.lognormal(np.log(gap_median_s), 0.6, count)
    first = np.concatenate([[True], session[1:] != session[:-1]])
    gaps[first] = 0.0
    elapsed = np.cumsum(gaps)
    session_base = np.maximum.accumulate(np.where(first, elapsed, 0.0))
    return np.sort(starts[session] + elapsed - session_base)
