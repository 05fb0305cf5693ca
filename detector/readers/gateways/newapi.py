"""new-api's ``logs`` table as events.

Column layout from QuantumNous/new-api ``model/log.go`` (the ``Log`` struct;
read at commit 00423442): ``type`` 2 is a consumed request and 5 a failed
one, whose ``other`` JSON contains ``status_code``; newer versions also store
``request_path`` there. ``ip`` stays empty unless the user turned on IP
logging in their settings.
"""

from __future__ import annotations

from typing import Any

import orjson

from detector.events import IMAGE_ENDPOINTS
from detector.readers.gateways.base import Mapped, whole_number
from detector.readers.gateways.logs_table import LogsTableReader

CONSUME = 2
ERROR = 5


class NewApiReader(LogsTableReader):
    """Map new-api log rows: token_id is the key, group the plan, use_time the latency in seconds."""

    kind = "newapi"
    optional = ("token_id", "group", "ip", "is_stream", "use_time", "other")
    hint = "point --from at new-api's database (LOG_SQL_DSN when logs are kept apart)"

    def to_record(self, row: Any) -> Mapped:
        if row["type"] not in (CONSUME, ERROR):
            return None
        problem = self.unusable(row)
        if problem:
            return problem
        token_id = whole_number(row.get("token_id"))
        if token_id <= 0:
            return ("key_id", f"token_id is {token_id}: the row names no token, so it has no key")

        other = _other(row.get("other"))
        status = 200 if row["type"] == CONSUME else _error_status(other)
        endpoint = str(other.get("request_path") or self.settings.default_endpoint)
        record = self.common_fields(row)
        record.update(
            key_id=f"{self.settings.name}:token:{token_id}",
            plan=self.settings.plan_of(row.get("group")),
            endpoint=endpoint,
            # The log has no image count: a request to an image endpoint counts as at least one.
            images=1 if endpoint in IMAGE_ENDPOINTS and status < 400 else 0,
            ip=row.get("ip") or "",
            status=status,
            latency_ms=whole_number(row.get("use_time")) * 1000.0,
            stream=bool(row.get("is_stream")),
        )
        return record


def _other(text: Any) -> dict[str, Any]:
    """Parse the ``other`` column; a value that is no JSON object gives {}."""
    if not text:
        return {}
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _error_status(other: dict[str, Any]) -> int:
    status = other.get("status_code")
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        return status
    return 500
