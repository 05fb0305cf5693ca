"""Readers of AI gateways' own request logs: new-api, one-api and LiteLLM.

Each reader maps the rows of one gateway's log table, after a stored cursor,
to records of the event contract (docs/events.md). ``open_log_reader``
picks the reader for a gateway kind.
"""

from __future__ import annotations

from sqlalchemy import Engine

from detector.readers.gateways.base import LogBatch, LogReader
from detector.readers.gateways.cursor import Cursor, load_cursor, save_cursor
from detector.readers.gateways.litellm import LiteLLMReader
from detector.readers.gateways.newapi import NewApiReader
from detector.readers.gateways.oneapi import OneApiReader
from detector.readers.gateways.settings import KINDS, GatewaySettings, gateway_settings, load_gateways

READERS = {"newapi": NewApiReader, "oneapi": OneApiReader, "litellm": LiteLLMReader}


def open_log_reader(engine: Engine, settings: GatewaySettings) -> NewApiReader | OneApiReader | LiteLLMReader:
    """Return the reader of ``settings.kind`` on the gateway database behind ``engine``."""
    return READERS[settings.kind](engine, settings)


__all__ = [
    "KINDS",
    "Cursor",
    "GatewaySettings",
    "LogBatch",
    "LogReader",
    "gateway_settings",
    "load_cursor",
    "load_gateways",
    "open_log_reader",
    "save_cursor",
]
