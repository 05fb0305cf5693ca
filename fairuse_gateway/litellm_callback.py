"""A LiteLLM custom logger that appends each call's metadata to the fairuse event stream.

Register it on a LiteLLM proxy (``litellm_settings: callbacks:
fairuse_gateway.litellm_callback.proxy_handler_instance``) or in code
(``litellm.callbacks = [FairuseLogger()]``). It reads LiteLLM's standard
logging payload and sends the fields of the event contract: never the
messages, and for the key only the hash the proxy already computed
(``user_api_key_hash``). Calls without a client address (library use, not the
proxy) are sent with an empty ``ip``, which the contract reads as an address
that was not recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import redis
from litellm.integrations.custom_logger import CustomLogger

from fairuse_gateway.litellm_endpoints import ENDPOINTS
from fairuse_gateway.partitions import event_stream

logger = logging.getLogger(__name__)


class FairuseLogger(CustomLogger):
    """Append one fairuse event per LiteLLM call to a Redis stream.

    ``plan_of`` maps LiteLLM's logging metadata to a plan name (default: the
    team alias, else ``default``). ``credits_per_usd`` converts LiteLLM's
    ``response_cost`` (US dollars) into plan credits. With ``partitions``
    above 1, each event goes to its partition's stream, ``{stream}:{n}``
    (see ``fairuse_gateway.partitions``); every gateway and worker must use the same number.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        stream: str = "fairuse:events",
        maxlen: int = 1_000_000,
        partitions: int = 1,
        credits_per_usd: float = 1.0,
        plan_of: Callable[[Mapping[str, Any]], str] | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        super().__init__()
        url = redis_url or os.environ.get("FAIRUSE_REDIS_URL", "redis://127.0.0.1:6379/0")
        self.client = client or redis.Redis.from_url(url, socket_timeout=0.1, socket_connect_timeout=0.1)
        self.stream = stream
        self.maxlen = maxlen
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {partitions}")
        self.partitions = partitions
        self.credits_per_usd = credits_per_usd
        self.plan_of = plan_of or _team_alias_or_default
        self.failures = 0

    def log_success_event(self, kwargs, response_obj, start_time, end_time) -> None:
        self._append(kwargs, response_obj, status=200)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time) -> None:
        self._append(kwargs, response_obj, status=200)

    def log_failure_event(self, kwargs, response_obj, start_time, end_time) -> None:
        self._append(kwargs, response_obj, status=_status_of(kwargs))

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time) -> None:
        self._append(kwargs, response_obj, status=_status_of(kwargs))

    def event(self, kwargs: Mapping[str, Any], response_obj: Any, status: int) -> dict[str, Any] | None:
        """Return the fairuse event for one call, or None when LiteLLM gave no logging payload."""
        payload = kwargs.get("standard_logging_object")
        if not payload:
            return None
        metadata = payload.get("metadata") or {}
        key = metadata.get("user_api_key_hash") or metadata.get("user_api_key_alias") or payload.get("end_user") or "anonymous"
        account = metadata.get("user_api_key_user_id") or metadata.get("user_api_key_team_id") or key
        start = float(payload.get("startTime") or 0.0)
        end = float(payload.get("endTime") or start)
        call_type = str(payload.get("call_type") or "")
        return {
            "request_id": str(payload.get("id") or payload.get("litellm_call_id")),
            "ts": start,
            "account_id": str(account),
            "key_id": str(key),
            "plan": self.plan_of(metadata),
            "endpoint": ENDPOINTS.get(call_type, f"/v1/{call_type}"),
            "model": str(payload.get("model") or ""),
            "prompt_tokens": int(payload.get("prompt_tokens") or 0),
            "completion_tokens": int(payload.get("completion_tokens") or 0),
            "images": _image_count(call_type, response_obj),
            "cost": float(payload.get("response_cost") or 0.0) * self.credits_per_usd,
            "ip": str(payload.get("requester_ip_address") or metadata.get("requester_ip_address") or ""),
            "user_agent": str(metadata.get("user_agent") or ""),
            "status": status,
            "latency_ms": max(end - start, 0.0) * 1000,
            "stream": bool(payload.get("stream")),
        }

    def _append(self, kwargs, response_obj, status: int) -> None:
        record = self.event(kwargs, response_obj, status)
        if record is None:
            return
        try:
            stream = event_stream(self.stream, record["account_id"], record["key_id"], self.partitions)
            self.client.xadd(stream, {"event": orjson.dumps(record)}, maxlen=self.maxlen, approximate=True)
        except redis.RedisError as error:
            # Never fail the user's call because moderation is unreachable.
            self.failures += 1
            logger.warning("fairuse event for request %s not sent (%d so far): %s", record["request_id"], self.failures, error)


def _team_alias_or_default(metadata: Mapping[str, Any]) -> str:
    return str(metadata.get("user_api_key_team_alias") or "default")


def _status_of(kwargs: Mapping[str, Any]) -> int:
    status = getattr(kwargs.get("exception"), "status_code", None)
    return int(status) if isinstance(status, int) and 100 <= status <= 599 else 500


def _image_count(call_type: str, response_obj: Any) -> int:
    if "image" not in call_type:
        return 0
    data = getattr(response_obj, "data", None)
    return len(data) if data else 1


proxy_handler_instance = None
if os.environ.get("FAIRUSE_LITELLM_AUTOSTART") == "1":
    proxy_handler_instance = FairuseLogger(partitions=int(os.environ.get("FAIRUSE_PARTITIONS", "1")))
