"""Vectorised checks of single contract fields.

Each check takes a ``RawColumn`` and returns a ``Checked``: the field's values
in their canonical form and a ``Problem`` code per row. Checks work on whole
Arrow or numpy arrays. Python code runs at most once per distinct value (IP
addresses that are not plain IPv4, country codes, stream words, API key
secrets).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from detector.events import MAX_TEXT_LENGTH
from detector.readers.api_keys import redact_secrets_in, replace_secrets
from detector.readers.columns import Kind, Part, RawColumn, character_data, null_mask, true_mask
from detector.readers.reasons import MAX_COST, MAX_LATENCY_MS, Problem

# Maximum count: float64 represents every whole number up to 2**53 exactly.
MAX_COUNT = 2.0**53

PROMPT_HASH_PATTERN = r"^[A-Za-z0-9+/=_:.\-]+$"
MAX_PROMPT_HASH_LENGTH = 128
# Dotted-quad IPv4 exactly as ipaddress prints it (no leading zeros), so it needs no rewrite.
CANONICAL_IPV4_PATTERN = (
    r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"
)
TRUE_STRINGS = frozenset({"true", "1"})
FALSE_STRINGS = frozenset({"false", "0"})


@dataclass(slots=True)
class Checked:
    """A field's canonical values and a Problem code per row (0 where valid)."""

    # numpy array, or Arrow string array for text. Entries at invalid rows are undefined.
    values: np.ndarray | pa.Array
    errors: np.ndarray
    # Values that contained API key secrets and were replaced by their hash.
    secrets_replaced: int = 0


def flag(errors: np.ndarray, condition: np.ndarray, problem: Problem) -> None:
    """Set problem on the rows where condition is true and no earlier problem was found."""
    errors[(errors == Problem.OK) & condition] = problem


def wrong_type_problems(part: Part, problem: Problem) -> np.ndarray | Problem:
    """Return problem for each row of a part of the wrong type, MISSING where its value is null."""
    if part.values is None:
        return problem
    return np.where(null_mask(part.values), Problem.MISSING, problem)


def scatter(target: np.ndarray, rows: np.ndarray | None, values: object) -> None:
    """Write values into target at rows, or into every entry when rows is None."""
    if rows is None:
        target[:] = values
    else:
        target[rows] = values


# Text


def text_values(column: RawColumn) -> tuple[pa.Array, np.ndarray]:
    """Return the column as one Arrow string array, with MISSING and NOT_TEXT problems."""
    errors = np.zeros(column.length, dtype=np.uint8)
    only = column.parts[0]
    if len(column.parts) == 1 and only.kind is Kind.STRING:
        errors[null_mask(only.values)] = Problem.MISSING
        return only.values, errors
    if len(column.parts) == 1 and only.kind is Kind.NULL:
        errors[:] = Problem.MISSING
        return pa.nulls(column.length, type=pa.string()), errors

    strings = np.full(column.length, None, dtype=object)
    for part in column.parts:
        if part.kind is Kind.STRING:
            scatter(strings, part.rows, part.values.to_numpy(zero_copy_only=False))
            problems = np.where(null_mask(part.values), Problem.MISSING, Problem.OK)
        elif part.kind is Kind.NULL:
            problems = Problem.MISSING
        else:
            problems = wrong_type_problems(part, Problem.NOT_TEXT)
        scatter(errors, part.rows, problems)
    return pa.array(strings, type=pa.string()), errors


def shorten_long_text(strings: pa.Array) -> pa.Array:
    """Cut strings longer than MAX_TEXT_LENGTH characters, ending them with a hash of the whole.

    A long user agent or path is still the request it belongs to: rejecting
    it would let a client hide a flood behind a 600-character user agent. The
    hash keeps two long values that share a beginning apart.
    """
    byte_lengths = pc.binary_length(strings)
    if (pc.max(byte_lengths).as_py() or 0) <= MAX_TEXT_LENGTH:
        return strings
    too_long = true_mask(pc.greater(pc.utf8_length(strings), MAX_TEXT_LENGTH))
    shortened = map_distinct(strings.filter(pa.array(too_long)), shorten)
    return pc.replace_with_mask(strings, pa.array(too_long), pa.array(shortened.row_strings(), type=strings.type))


def shorten(text: str) -> str:
    """Return ``text`` cut to MAX_TEXT_LENGTH characters, the last 24 being "~sha256:" and 16 hex digits."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return text[: MAX_TEXT_LENGTH - 24] + "~sha256:" + digest


def check_text(column: RawColumn, *, allow_empty: bool, default: str | None = None) -> Checked:
    """Check a text field. A missing value takes default when one is given."""
    strings, errors = text_values(column)
    if default is not None:
        missing = errors == Problem.MISSING
        if missing.any():
            errors[missing] = Problem.OK
            strings = pc.fill_null(strings, default)

    strings, replaced = redact_secrets_in(strings)
    if not allow_empty:
        flag(errors, blank_mask(strings), Problem.EMPTY)
    return Checked(shorten_long_text(strings), errors, secrets_replaced=replaced)


def blank_mask(strings: pa.Array) -> np.ndarray:
    """Mark the empty strings and those of whitespace only."""
    return true_mask(pc.equal(pc.binary_length(strings), 0)) | true_mask(pc.utf8_is_space(strings))


def check_identifier(column: RawColumn) -> Checked:
    """Check a required, non-empty text field such as request_id or plan."""
    return check_text(column, allow_empty=False)


def check_model(column: RawColumn) -> Checked:
    """Check the model name, which may be empty for endpoints that use no model."""
    return check_text(column, allow_empty=True)


def check_user_agent(column: RawColumn) -> Checked:
    """Check the optional user agent, "" when missing."""
    return check_text(column, allow_empty=True, default="")


def check_subject_type(column: RawColumn) -> Checked:
    """Check the internal subject type, "key" unless an access-log reader set "ip"."""
    return check_text(column, allow_empty=False, default="key")


def check_subject_identifier(column: RawColumn) -> Checked:
    """Check key_id or account_id, first replacing values that contain API key secrets by their hash."""
    strings, errors = text_values(column)
    strings, replaced = replace_secrets(strings)
    flag(errors, blank_mask(strings), Problem.EMPTY)
    return Checked(shorten_long_text(strings), errors, secrets_replaced=replaced)


@dataclass(slots=True)
class DistinctMapping:
    """A function's result for each distinct string of an array, and each row's result index."""

    # One result per distinct value, then None for null rows.
    results: list
    indices: np.ndarray

    def invalid_rows(self) -> np.ndarray:
        """Return a mask of the rows whose result is None: nulls and rejected values."""
        invalid = np.array([result is None for result in self.results], dtype=bool)
        return invalid[self.indices]

    def row_strings(self) -> pa.Array:
        """Return each row's result as an Arrow string array, null where it is None."""
        return pa.array(self.results, type=pa.string()).take(pa.array(self.indices))


def map_distinct(strings: pa.Array, function: Callable[[str], object]) -> DistinctMapping:
    """Apply function once per distinct string instead of once per row."""
    encoded = pc.dictionary_encode(strings)
    results = [function(value) for value in encoded.dictionary.to_pylist()] + [None]
    indices = pc.fill_null(encoded.indices, len(results) - 1).to_numpy()
    return DistinctMapping(results, indices)


def normalize_ip(text: str) -> str | None:
    """Return the canonical form of an IPv4 or IPv6 address, or None if text is not one.

    IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) become the IPv4 address, and
    an IPv6 zone id (``fe80::1%eth0``) is dropped, so one client has one
    spelling. A zone id names a network interface on the host that recorded
    the address, not the client, and it may be any length.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))  # rebuilt from the number, without the zone id
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return str(address)


def canonical_ips(strings: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Rewrite every IP address in strings to its canonical spelling.

    Returns the new strings and a mask of the non-null values that are no IP
    address. Those values are kept as they are.
    """
    invalid = np.zeros(len(strings), dtype=bool)
    canonical = true_mask(pc.match_substring_regex(strings, CANONICAL_IPV4_PATTERN))
    others = np.flatnonzero(~canonical & ~null_mask(strings))
    if len(others) == 0:
        return strings, invalid

    normalized = map_distinct(strings.take(pa.array(others)), normalize_ip)
    not_addresses = normalized.invalid_rows()
    invalid[others[not_addresses]] = True
    rewrite = np.zeros(len(strings), dtype=bool)
    rewrite[others[~not_addresses]] = True
    replacements = normalized.row_strings().filter(pa.array(~not_addresses))
    return pc.replace_with_mask(strings, pa.array(rewrite), replacements), invalid


def check_ip(column: RawColumn) -> Checked:
    """Check the client address and store it in ipaddress's canonical spelling.

    ``""`` is valid and means the gateway did not record the address: new-api
    records it only for users who turn IP logging on. Detectors that compare
    networks treat such requests as having no network.
    """
    strings, errors = text_values(column)
    strings, invalid = canonical_ips(strings)
    invalid &= ~true_mask(pc.equal(strings, ""))
    flag(errors, invalid, Problem.NOT_IP)
    return Checked(strings, errors)


def normalize_country(text: str) -> str | None:
    """Return a two-letter country code in upper case, "" for "", or None if invalid."""
    if text == "":
        return ""
    if len(text) == 2 and text.isascii() and text.isalpha():
        return text.upper()
    return None


def check_country(column: RawColumn) -> Checked:
    """Check the optional ISO 3166-1 alpha-2 country code, "" when missing."""
    strings, errors = text_values(column)
    errors[errors == Problem.MISSING] = Problem.OK
    codes = map_distinct(strings, normalize_country)
    flag(errors, codes.invalid_rows() & ~null_mask(strings), Problem.NOT_COUNTRY)
    return Checked(pc.fill_null(codes.row_strings(), ""), errors)


_HASH_CHARACTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_:.-"


def only_hash_characters(strings: pa.Array) -> bool:
    """Return True when every byte of every value is one PROMPT_HASH_PATTERN allows.

    Deleting the allowed bytes from the character data took a small fraction of
    the time of the regular expression on each value (pyarrow 26).
    """
    data = character_data(strings)
    return data is not None and not bytes(data).translate(None, _HASH_CHARACTERS)


def check_prompt_hash(column: RawColumn) -> Checked:
    """Check the optional prompt hash: hex or base64-like, no spaces, at most 128 characters."""
    strings, errors = text_values(column)
    errors[errors == Problem.MISSING] = Problem.OK
    strings, replaced = replace_secrets(pc.fill_null(strings, ""))

    lengths = pc.binary_length(strings).to_numpy()
    if only_hash_characters(strings):
        # Every value is made of PROMPT_HASH_PATTERN's characters, so the non-empty ones match it.
        looks_like_hash = lengths > 0
    else:
        looks_like_hash = true_mask(pc.match_substring_regex(strings, PROMPT_HASH_PATTERN))
    valid = (lengths == 0) | (looks_like_hash & (lengths <= MAX_PROMPT_HASH_LENGTH))
    flag(errors, ~valid, Problem.NOT_HASH)
    return Checked(strings, errors, secrets_replaced=replaced)


# Numbers


def parse_number_strings(strings: pa.Array) -> np.ndarray:
    """Return strings parsed as float64, NaN where a string is not a number."""
    try:
        return pc.cast(strings, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        objects = pd.Series(strings.to_numpy(zero_copy_only=False), dtype=object)
        return pd.to_numeric(objects, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def number_values(column: RawColumn) -> tuple[np.ndarray, np.ndarray]:
    """Return the column as float64 with MISSING, NOT_NUMBER and BOOLEAN_FOR_NUMBER problems.

    Numbers given as strings ("12") are accepted, as CSV has no other way to write them.
    """
    result = np.zeros(column.length, dtype=np.float64)
    errors = np.zeros(column.length, dtype=np.uint8)
    for part in column.parts:
        if part.kind is Kind.NUMBER:
            numbers = pc.cast(part.values, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
            scatter(result, part.rows, numbers)
            scatter(errors, part.rows, np.where(null_mask(part.values), Problem.MISSING, Problem.OK))
        elif part.kind is Kind.STRING:
            numbers = parse_number_strings(part.values)
            absent = null_mask(part.values)
            problems = np.where(absent, Problem.MISSING, np.where(np.isnan(numbers), Problem.NOT_NUMBER, Problem.OK))
            scatter(result, part.rows, numbers)
            scatter(errors, part.rows, problems)
        elif part.kind is Kind.NULL:
            scatter(errors, part.rows, Problem.MISSING)
        elif part.kind is Kind.BOOLEAN:
            scatter(errors, part.rows, wrong_type_problems(part, Problem.BOOLEAN_FOR_NUMBER))
        else:
            scatter(errors, part.rows, wrong_type_problems(part, Problem.NOT_NUMBER))
    return result, errors


def check_amount(column: RawColumn) -> Checked:
    """Check a non-negative finite number such as cost or latency_ms."""
    numbers, errors = number_values(column)
    flag(errors, ~np.isfinite(numbers), Problem.NOT_FINITE)
    flag(errors, numbers < 0, Problem.NEGATIVE)
    return Checked(numbers, errors)


def check_cost(column: RawColumn) -> Checked:
    """Check the cost: a non-negative finite number of at most ``MAX_COST`` credits."""
    checked = check_amount(column)
    flag(checked.errors, checked.values > MAX_COST, Problem.COST_TOO_LARGE)
    return checked


def check_latency(column: RawColumn) -> Checked:
    """Check latency_ms: a non-negative finite number of at most ``MAX_LATENCY_MS``."""
    checked = check_amount(column)
    flag(checked.errors, checked.values > MAX_LATENCY_MS, Problem.LATENCY_TOO_LARGE)
    return checked


def whole_numbers(column: RawColumn, default: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return non-negative whole numbers as int64 with their problems."""
    numbers, errors = number_values(column)
    if default is not None:
        missing = errors == Problem.MISSING
        errors[missing] = Problem.OK
        numbers[missing] = default

    flag(errors, ~np.isfinite(numbers), Problem.NOT_FINITE)
    flag(errors, numbers < 0, Problem.NEGATIVE)
    flag(errors, numbers != np.floor(numbers), Problem.NOT_WHOLE)
    flag(errors, numbers > MAX_COUNT, Problem.TOO_LARGE)
    integers = np.where(errors == Problem.OK, numbers, 0).astype(np.int64)
    return integers, errors


def check_count(column: RawColumn) -> Checked:
    """Check a required count such as prompt_tokens."""
    return Checked(*whole_numbers(column, default=None))


def check_images(column: RawColumn) -> Checked:
    """Check the optional image count, 0 when missing."""
    return Checked(*whole_numbers(column, default=0))


def check_status(column: RawColumn) -> Checked:
    """Check the HTTP status code, 100 to 599."""
    statuses, errors = whole_numbers(column, default=None)
    flag(errors, (statuses < 100) | (statuses > 599), Problem.NOT_STATUS)
    return Checked(statuses, errors)


# Booleans


def parse_boolean_strings(strings: pa.Array) -> np.ndarray:
    """Return 1 for "true"/"1", 0 for "false"/"0" (any case), -1 otherwise, per row."""

    def parse(text: str) -> int:
        word = text.strip().lower()
        if word in TRUE_STRINGS:
            return 1
        if word in FALSE_STRINGS:
            return 0
        return -1

    parsed = map_distinct(strings, parse)
    return np.array(parsed.results, dtype=np.float64)[parsed.indices]


def check_stream(column: RawColumn) -> Checked:
    """Check the stream flag: true/false, 0/1, or those words as strings."""
    flags = np.zeros(column.length, dtype=bool)
    errors = np.zeros(column.length, dtype=np.uint8)
    for part in column.parts:
        if part.kind is Kind.BOOLEAN:
            scatter(flags, part.rows, true_mask(part.values))
            scatter(errors, part.rows, np.where(null_mask(part.values), Problem.MISSING, Problem.OK))
            continue
        if part.kind in (Kind.NULL, Kind.UNSUPPORTED, Kind.TIMESTAMP):
            scatter(errors, part.rows, wrong_type_problems(part, Problem.NOT_BOOLEAN))
            continue

        if part.kind is Kind.NUMBER:
            numbers = pc.cast(part.values, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        else:
            numbers = parse_boolean_strings(part.values)
        absent = null_mask(part.values)
        invalid = (numbers != 0) & (numbers != 1)
        problems = np.where(absent, Problem.MISSING, np.where(invalid, Problem.NOT_BOOLEAN, Problem.OK))
        scatter(flags, part.rows, numbers == 1)
        scatter(errors, part.rows, problems)
    return Checked(flags, errors)
