"""The event contract: one record per gateway request, and its columnar form.

Every reader turns its input into a ``pandas.DataFrame`` with exactly the
columns of ``COLUMNS`` and the dtypes below. ``read_events`` also sorts it by
``ts`` and keeps each ``request_id`` once. docs/events.md documents the fields
for gateway authors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Column name -> pandas dtype of the canonical frame. Text columns use pandas'
# Arrow-backed "str" dtype, which factorises several times faster than object.
# ``ts`` is UTC epoch seconds as float64 so window arithmetic stays plain numpy.
# ``subject_type`` is internal: "key" for gateway events, "ip" where an access
# log had no remote user and the client address takes the key's place.
COLUMNS: dict[str, str] = {
    "request_id": "str",
    "ts": "float64",
    "account_id": "str",
    "key_id": "str",
    "plan": "str",
    "endpoint": "str",
    "model": "str",
    "prompt_tokens": "int64",
    "completion_tokens": "int64",
    "images": "int64",
    "cost": "float64",
    "ip": "str",
    "user_agent": "str",
    "status": "int64",
    "latency_ms": "float64",
    "stream": "bool",
    "prompt_hash": "str",
    "country": "str",
    "subject_type": "str",
}

REQUIRED_FIELDS: tuple[str, ...] = (
    "request_id",
    "ts",
    "account_id",
    "key_id",
    "plan",
    "endpoint",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "ip",
    "status",
    "latency_ms",
    "stream",
)

# Optional fields and the value a record gets when it leaves them out.
DEFAULTS: dict[str, object] = {
    "images": 0,
    "user_agent": "",
    "prompt_hash": "",
    "country": "",
    "subject_type": "key",
}

IMAGE_ENDPOINTS: frozenset[str] = frozenset(
    {"/v1/images/generations", "/v1/images/edits", "/v1/images/variations"}
)

# Maximum length of a text field. Longer values are cut to this length and end
# in a hash of the whole value, so two long values with the same beginning stay apart.
MAX_TEXT_LENGTH = 512


@dataclass(frozen=True, slots=True)
class Reject:
    """One record that broke the contract, with where it came from and why."""

    source: str
    line: int
    field: str
    reason: str

    def format(self) -> str:
        """Return the ``file:line: field: reason`` line written to the rejects file."""
        return f"{self.source}:{self.line}: {self.field}: {self.reason}"


def empty_frame() -> pd.DataFrame:
    """Return a canonical frame with no rows."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in COLUMNS.items()})


def is_image_endpoint(endpoints: pd.Series) -> np.ndarray:
    """Return a boolean mask of the rows whose endpoint generates or edits images."""
    return endpoints.isin(IMAGE_ENDPOINTS).to_numpy()
