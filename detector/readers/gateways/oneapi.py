"""one-api's ``logs`` table as events.

Column layout from songquanpeng/one-api ``model/log.go`` (the ``Log`` struct
of v0.6, with ``request_id``, ``elapsed_time`` in milliseconds and
``is_stream``; the stored copy at commit 2ab7d25a predates those three, so
they are optional here). ``type`` 2 is a consumed request; one-api logs no
failed requests and no client address. The log names the token only by
``token_name``, so the key is the user id with the token name, and the plan
comes from the ``group`` column of the ``users`` table when the database has it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.exc import SQLAlchemyError

from detector.readers.gateways.base import Mapped, whole_number
from detector.readers.gateways.logs_table import LogsTableReader

logger = logging.getLogger(__name__)

CONSUME = 2


class OneApiReader(LogsTableReader):
    """Map one-api log rows: user id and token name are the key, elapsed_time the latency in ms."""

    kind = "oneapi"
    required = (*LogsTableReader.required, "token_name")
    optional = ("elapsed_time", "is_stream")
    hint = "point --from at one-api's database (LOG_SQL_DSN when logs are kept apart)"

    def __init__(self, engine, settings) -> None:
        super().__init__(engine, settings)
        self.groups: dict[int, str] = {}
        self.warned = False

    def prepare(self, rows: list[Any]) -> None:
        """Look up the group of every user in ``rows`` not looked up yet."""
        wanted = sorted({row["user_id"] for row in rows if row["user_id"] is not None} - self.groups.keys())
        if not wanted:
            return
        users = table("users", column("id"), column("group"))
        try:
            with self.engine.connect() as connection:
                found = connection.execute(select(users.c.id, users.c.group).where(users.c.id.in_(wanted))).all()
        except SQLAlchemyError as error:
            if not self.warned:
                logger.warning("%s: users' groups unreadable, so every plan is 'default': %s", self.source, error)
                self.warned = True
            found = []
        self.groups.update({user_id: group or "" for user_id, group in found})

    def to_record(self, row: Any) -> Mapped:
        if row["type"] != CONSUME:
            return None
        problem = self.unusable(row)
        if problem:
            return problem
        token_name = row["token_name"] or ""
        if not token_name:
            return ("key_id", "token_name is empty: the row names no token, so it has no key")

        record = self.common_fields(row)
        record.update(
            key_id=f"{self.settings.name}:token:{row['user_id']}:{token_name}",
            plan=self.settings.plan_of(self.groups.get(row["user_id"])),
            endpoint=self.settings.default_endpoint,
            images=0,
            ip="",
            status=200,
            latency_ms=float(whole_number(row.get("elapsed_time"))),
            stream=bool(row.get("is_stream")),
        )
        return record
