"""The gateways' own tables, column by column, for tests that fill them and import.

Sources: new-api's ``model/log.go`` (QuantumNous/new-api at 00423442) and
``model/token.go`` (at 0067bd93); one-api's v0.6 ``Log`` struct in
``model/log.go`` and ``model/token.go`` (songquanpeng/one-api at 0b8ccb94);
the ``User`` struct both share (id, username, role, status, group). LiteLLM:
``LiteLLM_SpendLogs`` and ``LiteLLM_VerificationToken`` of litellm 1.110.2's
``schema.prisma``. gorm names columns in snake case; Prisma keeps the field
names, quoted. Columns no reader or stand-in touches are left out.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON, BigInteger, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, Text,
)
from sqlalchemy.dialects import postgresql


def newapi_tables(metadata: MetaData) -> dict[str, Table]:
    logs = Table(
        "logs", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_id", Integer, index=True),
        Column("created_at", BigInteger, index=True),
        Column("type", Integer),
        Column("content", Text),
        Column("username", String(191), server_default=""),
        Column("token_name", String(191), server_default=""),
        Column("model_name", String(191), server_default=""),
        Column("quota", Integer, server_default="0"),
        Column("prompt_tokens", Integer, server_default="0"),
        Column("completion_tokens", Integer, server_default="0"),
        Column("use_time", Integer, server_default="0"),
        Column("is_stream", Boolean),
        Column("channel_id", Integer),
        Column("token_id", Integer, server_default="0"),
        Column("group", String(191)),
        Column("ip", String(191), server_default=""),
        Column("other", Text),
    )
    return {"logs": logs, **_accounts(metadata, key_length=128)}


def oneapi_tables(metadata: MetaData) -> dict[str, Table]:
    logs = Table(
        "logs", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_id", Integer, index=True),
        Column("created_at", BigInteger),
        Column("type", Integer),
        Column("content", Text),
        Column("username", String(191), server_default=""),
        Column("token_name", String(191), server_default=""),
        Column("model_name", String(191), server_default=""),
        Column("quota", Integer, server_default="0"),
        Column("prompt_tokens", Integer, server_default="0"),
        Column("completion_tokens", Integer, server_default="0"),
        Column("channel_id", Integer),
        Column("request_id", String(191), server_default=""),
        Column("elapsed_time", BigInteger, server_default="0"),
        Column("is_stream", Boolean, server_default="0"),
        Column("system_prompt_reset", Boolean, server_default="0"),
    )
    return {"logs": logs, **_accounts(metadata, key_length=48)}


def _accounts(metadata: MetaData, key_length: int) -> dict[str, Table]:
    tokens = Table(
        "tokens", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_id", Integer, index=True),
        Column("key", String(key_length), unique=True),
        Column("status", Integer, server_default="1"),
        Column("name", String(191), index=True),
        Column("created_time", BigInteger),
        Column("accessed_time", BigInteger),
        Column("expired_time", BigInteger, server_default="-1"),
        Column("remain_quota", BigInteger, server_default="0"),
        Column("unlimited_quota", Boolean, server_default="0"),
        Column("used_quota", BigInteger, server_default="0"),
    )
    users = Table(
        "users", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("username", String(191), unique=True),
        Column("password", String(191)),
        Column("display_name", String(191)),
        Column("role", Integer, server_default="1"),
        Column("status", Integer, server_default="1"),
        Column("quota", BigInteger, server_default="0"),
        Column("group", String(64), server_default="default"),
    )
    return {"tokens": tokens, "users": users}


def litellm_tables(metadata: MetaData) -> dict[str, Table]:
    jsonb = JSON().with_variant(postgresql.JSONB(), "postgresql")
    spend_logs = Table(
        "LiteLLM_SpendLogs", metadata,
        Column("request_id", Text, primary_key=True),
        Column("call_type", Text, nullable=False),
        Column("api_key", Text, nullable=False, server_default=""),
        Column("spend", Float, nullable=False, server_default="0"),
        Column("total_tokens", Integer, nullable=False, server_default="0"),
        Column("prompt_tokens", Integer, nullable=False, server_default="0"),
        Column("completion_tokens", Integer, nullable=False, server_default="0"),
        Column("startTime", DateTime(timezone=False), nullable=False),
        Column("endTime", DateTime(timezone=False), nullable=False),
        Column("request_duration_ms", Integer),
        Column("completionStartTime", DateTime(timezone=False)),
        Column("model", Text, nullable=False, server_default=""),
        Column("model_id", Text, server_default=""),
        Column("model_group", Text, server_default=""),
        Column("api_base", Text, server_default=""),
        Column("user", Text, server_default=""),
        Column("metadata", jsonb),
        Column("cache_hit", Text, server_default=""),
        Column("request_tags", jsonb),
        Column("team_id", Text),
        Column("organization_id", Text),
        Column("end_user", Text),
        Column("requester_ip_address", Text),
        Column("messages", jsonb),
        Column("response", jsonb),
        Column("session_id", Text),
        Column("status", Text),
        Column("proxy_server_request", jsonb),
        Column("litellm_call_id", Text),
    )
    tokens = Table(
        "LiteLLM_VerificationToken", metadata,
        Column("token", Text, primary_key=True),
        Column("key_name", Text),
        Column("key_alias", Text),
        Column("user_id", Text),
        Column("team_id", Text),
        Column("blocked", Boolean),
        Column("tpm_limit", BigInteger),
        Column("rpm_limit", BigInteger),
    )
    return {"LiteLLM_SpendLogs": spend_logs, "LiteLLM_VerificationToken": tokens}
