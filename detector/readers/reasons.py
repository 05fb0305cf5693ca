"""Reject reasons: one code per way a field can break the contract, and its message."""

from __future__ import annotations

from enum import IntEnum

from detector.events import MAX_TEXT_LENGTH
from detector.readers.api_keys import redact_secrets_in_repr

# Largest cost of one request, in plan credits, and largest latency. Larger values are a wrong unit or a
# broken record, and sums of them could overflow the detectors' integer micro-credit spend.
MAX_COST = 1_000_000
MAX_LATENCY_MS = 86_400_000
# Maximum length of a value repr in a reject message. Longer ones are cut and end in "...".
MAX_SHOWN_VALUE = 80


class Problem(IntEnum):
    """Reason code for a rejected field value. OK (0) marks a valid value in error arrays."""

    OK = 0
    MISSING = 1
    NOT_TEXT = 2
    EMPTY = 3
    TOO_LONG = 4
    NOT_NUMBER = 5
    BOOLEAN_FOR_NUMBER = 6
    NOT_FINITE = 7
    NEGATIVE = 8
    NOT_WHOLE = 9
    TOO_LARGE = 10
    NOT_STATUS = 11
    NOT_TIME = 12
    NO_OFFSET = 13
    YEAR_OUT_OF_RANGE = 14
    NOT_BOOLEAN = 15
    NOT_IP = 16
    NOT_COUNTRY = 17
    NOT_HASH = 18
    EPOCH_OUT_OF_RANGE = 19
    COST_TOO_LARGE = 20
    LATENCY_TOO_LARGE = 21


REASONS: dict[Problem, str] = {
    Problem.MISSING: "missing required field",
    Problem.NOT_TEXT: "not a string",
    Problem.EMPTY: "empty or blank string",
    Problem.TOO_LONG: f"longer than {MAX_TEXT_LENGTH} characters",
    Problem.NOT_NUMBER: "not a number",
    Problem.BOOLEAN_FOR_NUMBER: "a boolean where a number is expected",
    Problem.NOT_FINITE: "not a finite number",
    Problem.NEGATIVE: "negative",
    Problem.NOT_WHOLE: "not a whole number",
    Problem.TOO_LARGE: "larger than 2**53",
    Problem.NOT_STATUS: "not an HTTP status code (100-599)",
    Problem.NOT_TIME: "not an RFC 3339 time or epoch seconds",
    Problem.NO_OFFSET: "time has no UTC offset (add Z or +hh:mm)",
    Problem.YEAR_OUT_OF_RANGE: "outside the years 2000-2100 (check the gateway's clock)",
    Problem.EPOCH_OUT_OF_RANGE: "outside the years 2000-2100 (epoch seconds, not milliseconds)",
    Problem.NOT_BOOLEAN: "not a boolean (true/false or 0/1)",
    Problem.NOT_IP: "not an IPv4 or IPv6 address",
    Problem.NOT_COUNTRY: "not an ISO 3166-1 alpha-2 country code",
    Problem.COST_TOO_LARGE: f"larger than {MAX_COST:,} credits for one request (check the gateway's unit)",
    Problem.LATENCY_TOO_LARGE: f"larger than {MAX_LATENCY_MS:,} ms, a day (check the gateway's unit)",
    Problem.NOT_HASH: (
        "not a prompt hash (hex or base64, at most 128 characters, no spaces); "
        "the value is not shown because it may be prompt text"
    ),
}

# Problems whose message leaves out the value: it is absent, or it may be private text.
VALUE_HIDDEN = frozenset({Problem.MISSING, Problem.EMPTY, Problem.NOT_HASH})


def shorten(text: str, limit: int = MAX_SHOWN_VALUE) -> str:
    """Return text cut to limit characters, ending in "..." when something was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def format_value(value: object) -> str:
    """Return value's repr for a reject message, with API key secrets replaced by their hash, shortened.

    Secrets are replaced before the repr is cut, so no part of one is shown.
    """
    return shorten(redact_secrets_in_repr(repr(value)))


def describe(problem: Problem, value: object) -> str:
    """Return the reject reason for problem, followed by the offending value's repr."""
    reason = REASONS[problem]
    if problem in VALUE_HIDDEN:
        return reason

    if problem is Problem.TOO_LONG and isinstance(value, str):
        reason = f"{reason} ({len(value)})"

    return f"{reason}: {format_value(value)}"


def json_type_name(value: object) -> str:
    """Return the JSON name of a parsed value's type, such as "array" for a list."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
