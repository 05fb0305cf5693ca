"""The gateway-log front door: rows read after a cursor, then scored into the store or sent to the stream.

``import_once`` reads every settled row after the stored cursor in batches
and validates the mapped records as every reader does. Bad rows become
rejects with their place, never an error. The valid events go to a sink, and
only then does the cursor move. So a rerun reads only new rows, and a crash between a
sink and the cursor resends some events, which both sinks drop as duplicates
of their ``request_id``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import pandas as pd
import redis
from sqlalchemy import Engine

from detector.events import Reject, empty_frame
from detector.model_registry import AnomalyModel
from detector.pipeline import default_detectors, score_events
from detector.shadow import prior_without_shadow
from detector.plans import PlanCatalogue
from detector.policy import Policy
from detector.readers.gateways import LogBatch, LogReader, load_cursor, save_cursor
from detector.readers.validate import validate_records
from detector.store import DecisionStore
from fairuse_gateway.partitions import event_stream

logger = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """Counts of one import pass, and its rejects."""

    rows: int = 0
    events: int = 0
    skipped: int = 0
    rejects: list[Reject] = field(default_factory=list)
    findings: int = 0
    decisions: int = 0
    warnings: list[str] = field(default_factory=list)

    def add(self, other: ImportReport) -> None:
        self.rows += other.rows
        self.events += other.events
        self.skipped += other.skipped
        self.rejects.extend(other.rejects)
        self.findings += other.findings
        self.decisions += other.decisions
        self.warnings.extend(warning for warning in other.warnings if warning not in self.warnings)


class StoreSink:
    """Score events with the batch core and store findings and decisions.

    Each batch is scored together with the rows of the last ``context_seconds``
    before it, read again from the gateway, so windows that span two imports
    (a day of key sharing, an hour of spend) still see their earlier events.
    """

    def __init__(self, store: DecisionStore, *, plans: PlanCatalogue, policy: Policy,
                 model: AnomalyModel | None, context_seconds: float, simulated: bool = False) -> None:
        self.store = store
        self.plans = plans
        self.policy = policy
        self.detectors = default_detectors(model)
        self.context_seconds = context_seconds
        self.simulated = simulated

    def send(self, events: pd.DataFrame, context: pd.DataFrame, report: ImportReport) -> None:
        frame = pd.concat([context, events], ignore_index=True).drop_duplicates("request_id", keep="last")
        frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
        result = score_events(frame, plans=self.plans, policy=self.policy, detectors=self.detectors,
                              prior=prior_without_shadow(self.store),
                              suspensions=self.store.suspensions_between, simulated=True if self.simulated else None)
        self.store.save_findings(result.findings)
        report.findings += len(result.findings)
        report.decisions += self.store.save_decisions(result.decisions)
        report.warnings.extend(warning for warning in result.outcome.warnings if warning not in report.warnings)


class StreamSink:
    """Append events to the Redis stream the workers consume, one ``event`` field of JSON each.

    With ``partitions`` above 1, each event goes to its partition's stream
    (see ``fairuse_gateway.partitions``).
    """

    context_seconds = 0.0

    def __init__(self, client: redis.Redis, stream: str, maxlen: int = 1_000_000, partitions: int = 1) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {partitions}")
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.partitions = partitions

    def send(self, events: pd.DataFrame, context: pd.DataFrame, report: ImportReport) -> None:
        pipeline = self.client.pipeline(transaction=False)
        for record in events.drop(columns=["subject_type"]).to_dict("records"):
            stream = event_stream(self.stream, record["account_id"], record["key_id"], self.partitions)
            pipeline.xadd(stream, {"event": orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)},
                          maxlen=self.maxlen, approximate=True)
        pipeline.execute()


@dataclass
class Importer:
    """Move one gateway's new log rows into a sink, remembering the position in the store."""

    reader: LogReader
    store_engine: Engine
    sink: StoreSink | StreamSink
    batch_size: int = 5_000
    settle_seconds: float = 60.0
    clock: Callable[[], float] = lambda: datetime.now(UTC).timestamp()

    @property
    def cursor_name(self) -> str:
        return f"import:{self.reader.settings.name}"

    def import_once(self) -> ImportReport:
        """Read every settled row after the cursor, batch by batch, and send its events to the sink."""
        report = ImportReport()
        while True:
            batch_report, rows = self._import_batch()
            report.add(batch_report)
            if rows < self.batch_size:
                return report

    def follow(self, stop: threading.Event, interval: float, on_pass: Callable[[ImportReport], None] | None = None) -> None:
        """Import, then wait ``interval`` seconds, until ``stop`` is set; a failed pass is retried with backoff."""
        delay = interval
        while not stop.is_set():
            try:
                report = self.import_once()
                delay = interval
                if on_pass:
                    on_pass(report)
            except Exception as error:  # noqa: BLE001 - a follower outlives any one failed pass
                delay = min(max(delay * 2, 1.0), 300.0)
                logger.warning("import %s failed, retrying in %.0f s: %s", self.cursor_name, delay, error, exc_info=True)
            stop.wait(delay)

    def _import_batch(self) -> tuple[ImportReport, int]:
        cursor = load_cursor(self.store_engine, self.cursor_name)
        now = self.clock()
        batch: LogBatch = self.reader.read_after(cursor, limit=self.batch_size,
                                                 settled_before=now - self.settle_seconds, now=now)
        report = ImportReport(rows=batch.rows, skipped=batch.skipped, rejects=list(batch.rejects))
        if batch.records:
            events, rejects = validate_records(batch.records, self.reader.source, lines=batch.lines)
            report.rejects.extend(rejects)
            report.rejects.sort(key=lambda reject: reject.line)
            report.events = len(events)
            if not events.empty:
                self.sink.send(events, self._context(cursor, events), report)
        if batch.rows:
            save_cursor(self.store_engine, self.cursor_name, self.reader.kind, batch.cursor)
        logger.info("import %s: %d rows, %d events, %d rejected, %d skipped",
                    self.cursor_name, report.rows, report.events, len(report.rejects), report.skipped)
        return report, batch.rows

    def _context(self, cursor, events: pd.DataFrame) -> pd.DataFrame:
        """Return the events already imported in the ``context_seconds`` before ``events``."""
        if self.sink.context_seconds <= 0:
            return empty_frame()
        since = float(events["ts"].min()) - self.sink.context_seconds
        earlier = self.reader.read_before(cursor, since)
        frame, _ = validate_records(earlier.records, self.reader.source, lines=earlier.lines)
        return frame
