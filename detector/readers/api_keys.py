"""API key secrets (sk-...) in input: found anywhere in a value, replaced by their hash.

A secret counts wherever it is in a value. In key_id, account_id and
prompt_hash, "Bearer sk-...", a secret with a trailing newline and a bare
secret all become the same hash, the key's identity. In other text, such as
a request id, only the secret is replaced and the text around it stays, so
distinct values stay distinct.
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa
import pyarrow.compute as pc

from detector.readers.columns import character_data

# "sk-" and at least 16 key characters, not preceded by a letter, digit or "_"
# (so "task-0123456789abcdef0" contains no secret). OpenAI project keys are "sk-proj-...".
SECRET_CHARACTERS = r"sk-[A-Za-z0-9_\-]{16,}"
SECRET_IN_TEXT = re.compile(rf"(?<![A-Za-z0-9_]){SECRET_CHARACTERS}")
# RE2, which Arrow uses, has no lookbehind, so the preceding character is matched instead.
SECRET_IN_ARROW_TEXT = rf"(?:^|[^A-Za-z0-9_])(?P<secret>{SECRET_CHARACTERS})"
SECRET_START = re.compile(b"sk-")
# In a repr, an escape such as "\\n" or "\\u200b" stands for the character before a
# secret, so the escape's last letter or digit must not hide the secret.
SECRET_IN_REPR = re.compile(
    r"(?:(?<![A-Za-z0-9_])|(?<=\\[abfnrtv])|(?<=\\x[0-9a-f]{2})|(?<=\\u[0-9a-f]{4})|(?<=\\U[0-9a-f]{8}))"
    + SECRET_CHARACTERS
)


def hash_secret(secret: str) -> str:
    """Return the stored stand-in for an API key secret: "sha256:" and 16 hex digits."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def redact_secrets(text: str) -> str:
    """Return text with every API key secret in it replaced by its hash."""
    if "sk-" not in text:
        return text
    return SECRET_IN_TEXT.sub(lambda match: hash_secret(match.group()), text)


def redact_secrets_in_repr(text: str) -> str:
    """Return a repr with every API key secret in it replaced by its hash, also right after an escape."""
    if "sk-" not in text:
        return text
    return SECRET_IN_REPR.sub(lambda match: hash_secret(match.group()), text)


def may_contain_secret(strings: pa.Array) -> bool:
    """Return False when no value of ``strings`` contains "sk-", by one search of its character data.

    The search spans the bytes of all values at once, so "...s" followed by
    "k-..." also counts. That only sends the array on to the exact per-value
    check. On a JSON-lines block it took about a quarter of the time of
    ``pc.match_substring`` (pyarrow 26).
    """
    data = character_data(strings)
    return data is None or SECRET_START.search(data) is not None


def has_secret_start(strings: pa.Array) -> bool:
    """Return True if a value of ``strings`` contains "sk-", the start of every secret."""
    return may_contain_secret(strings) and bool(pc.any(pc.match_substring(strings, "sk-")).as_py())


def replace_secrets(strings: pa.Array) -> tuple[pa.Array, int]:
    """Replace each value that contains an API key secret by the secret's hash.

    Returns the new strings and the number of values replaced. The whole value
    is replaced, so text around the secret ("Bearer ") is dropped.
    """
    if not has_secret_start(strings):
        return strings, 0
    found = pc.extract_regex(strings, SECRET_IN_ARROW_TEXT)
    has_secret = pc.fill_null(found.is_valid(), False)
    replaced = has_secret.true_count
    if not replaced:
        return strings, 0

    secrets = found.field("secret").filter(has_secret)
    # Hash each distinct secret once: a log may repeat one key on every line.
    encoded = pc.dictionary_encode(secrets)
    hashes = pa.array([hash_secret(secret) for secret in encoded.dictionary.to_pylist()], type=pa.string())
    return pc.replace_with_mask(strings, has_secret, hashes.take(encoded.indices)), replaced


def redact_secrets_in(strings: pa.Array) -> tuple[pa.Array, int]:
    """Replace each API key secret inside the values of ``strings`` by its hash, keeping the text around it.

    Returns the new strings and the number of values changed.
    """
    if not has_secret_start(strings):
        return strings, 0
    has_secret = pc.fill_null(pc.match_substring_regex(strings, SECRET_IN_ARROW_TEXT), False)
    changed = has_secret.true_count
    if not changed:
        return strings, 0

    # Redact each distinct value once: a log may repeat one value on every line.
    encoded = pc.dictionary_encode(strings.filter(has_secret))
    redacted = pa.array([redact_secrets(value) for value in encoded.dictionary.to_pylist()], type=pa.string())
    return pc.replace_with_mask(strings, has_secret, redacted.take(encoded.indices)), changed
