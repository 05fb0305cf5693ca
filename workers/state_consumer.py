"""The state worker: gateway events scored on in-memory per-subject state, one owner per partition.

Where the window worker (``workers.consumer``) scores each subject's stored
7-day window again with every micro-batch, this worker keeps each detector's
incremental state (``detector.state.scorer.StateScorer``) in memory and
gives it only the new events. docs/streaming-state.md gives the design.

- Partitions. Events are split by account (``fairuse_gateway.partitions``).
  With one partition the stream is ``{prefix}:events``, else partition n's
  is ``{prefix}:events:{n}``. Each worker holds leases on its share of the
  partitions (``workers.partitions.PartitionLeases``) and keeps one
  ``PartitionState`` per partition it owns.
- Reading. A partition's stream is read through the consumer group under
  the consumer name ``p{n}``, the partition's and not the process's, so a
  new owner finds the entries its predecessor read and did not acknowledge.
- Checkpoints. Every ``checkpoint_seconds`` (longer when writing one
  would take more than ``checkpoint_share`` of the time), and before a
  partition is given up, the partition's state goes to ``{prefix}:state:{n}``
  (``workers.checkpoint``) with the id of the last entry it contains. Only
  then are the entries up to that id acknowledged. A new owner loads the
  checkpoint, acknowledges the pending entries up to its id and applies
  the ones after it, in order. So each entry is applied to the state once,
  whether a worker stops, hands a partition over or is killed.
- Each batch: entries are parsed, with dead letters as in the window
  worker, and for events of other partitions or more than ``CLOCK_MARGIN``
  seconds (or the lateness, if longer) ahead of this worker's clock.
  Requests seen within ``repeat_horizon`` seconds of event time are
  dropped (``workers.repeats``). The rest go to the partition's tail
  (``detector.state.tail``), which releases, sorted by time, the events
  older than the partition's newest event time minus ``lateness``. The
  state scores the released events. The policy
  decides on the findings through ``detector.pipeline.apply_policy``, the
  function the batch command uses, with the subjects' stored findings of the
  merge window as context. Findings are stored, then decisions are
  published and stored (each idempotent on its id). Publishing first means
  a crash between the two leaves no stored decision unpublished.
- Redis losing its data. The worker keeps its in-memory states, takes
  its leases back and writes their checkpoints again (``check_epoch``).
- Quiet keys. Every ``close_seconds`` each partition's anomaly days that
  ended before its watermark are scored (``StateScorer.close``). A
  partition without events closes them on the clock ticks that the hourly
  ``rescore_quiet_keys`` job appends (``workers.entries``).
- Case charts. Each partition keeps 7 days of every subject's hourly
  counts in its checkpoint (``workers.state_activity``). After each batch
  the ``subject_activity`` rows of its subjects with a decision or an
  open case are written from them, as the window worker writes them from
  its windows. On a simulated 500-key week this took 7 to 8% of the
  batches' CPU time and 3.3 MB per partition (scripts/bench_state_activity.py).
- Models. Given a ``ModelSwitch``, each round re-reads the registry when
  due; a newly activated model's anomaly detector replaces the old one in
  every owned partition's state, which is kept, and a shadow scores the
  anomaly days each batch closes (``workers.state_models``).

Late events. An event that arrives after later-started events of its
subject, but no more than ``lateness`` seconds of event time after the
partition's newest event, is applied in time order, so its findings equal
the batch command's. The cost is latency: findings wait ``lateness``
seconds of event time. The tail is part of the checkpoint, and a partition
without entries for ``lateness`` seconds of clock time releases it.

Events later than that (``BatchOutcome.beyond_lateness``) and plan changes
can make a subject inexact: its findings may differ from a batch pass. They
are counted in ``BatchOutcome.inexact`` and logged at DEBUG. Re-scoring
such subjects is not built (see docs/streaming-state.md, "Late events are
the normal case").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import redis
import sqlalchemy.exc

from detector.detectors import Detector, Finding
from detector.model_switch import ModelSwitch
from detector.pipeline import apply_policy
from detector.plans import PlanCatalogue
from detector.policy import Policy
from detector.shadow import prior_without_shadow
from detector.state.chunk import Chunk
from detector.state.scorer import STREAM_RETENTION, StateScorer
from detector.features.keyday import DAY
from detector.state.tail import DEFAULT_LATENESS, EventTail
from detector.store import DecisionStore
from detector.store.allowlist import StaffAllowlist
from fairuse_gateway.partitions import partition_stream
from workers.checkpoint import (
    DEFAULT_MAX_BYTES,
    CheckpointError,
    Checkpoints,
    PartitionState,
    dump_state,
    load_state,
)
from workers.consumer import BatchOutcome
from workers.entries import clock_tick, dead_letter, parse_entries, stream_entries, unparsed_reader
from workers.partitions import PartitionLeases, partition_of
from workers.progress import ProgressLog
from workers.publish import DecisionPublisher
from workers.repeats import DEFAULT_HORIZON, RepeatedRequests
from workers.retry import RetryDelay
from workers.state_activity import record_activity
from workers.state_models import StateModels

logger = logging.getLogger(__name__)

# Seconds a clock tick stays behind the time it names before it closes days. A gateway appends an event when its
# request ends, with the time the request started, and a request to a model can take minutes.
CLOCK_MARGIN = 900.0


class PartitionCountError(ValueError):
    """Workers of one key prefix were started with different ``--partitions``."""


class WindowWorkersError(RuntimeError):
    """Window workers read the stream that a state worker was started on."""


@dataclass(frozen=True, slots=True)
class StateSettings:
    """Names, limits and periods of the state worker. Times are in seconds unless the name says ms."""

    prefix: str = "fairuse"
    group: str = "fairuse-workers"
    partitions: int = 1
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    batch_size: int = 50_000
    block_ms: int = 1000
    checkpoint_seconds: float = 5.0
    # The largest share of the worker's time that checkpoints may take: a partition whose last checkpoint took d
    # seconds waits at least d / checkpoint_share seconds for the next one. Ignored when checkpoint_seconds is 0.
    # A batch waits for a checkpoint: at 10,000 events/s the p95 latency was 1.55-2.37 s at 5 %, 1.42-1.54 s at 2 %.
    checkpoint_share: float = 0.02
    # The maximum spacing, whatever a write took: entries wait unacknowledged that long, and a gateway that trims
    # the stream by length must keep more than that, or a new owner finds the pending entries gone.
    checkpoint_max_seconds: float = 60.0
    close_seconds: float = 60.0
    repeat_horizon: float = DEFAULT_HORIZON
    # Seconds of event time an event may arrive after the partition's newest one and still be scored exactly
    # (detector.state.tail). Findings come that much event time later; 0 applies every event at once.
    lateness: float = DEFAULT_LATENESS
    lease_ttl_ms: int = 10_000
    # Longer than the retention, so a checkpoint outlives every event it summarises.
    checkpoint_ttl_seconds: int = int(STREAM_RETENTION) + 86400
    # A larger checkpoint is rejected before it is read, and its partition starts empty.
    checkpoint_max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def stream(self) -> str:
        return f"{self.prefix}:events"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}:events:dead"

    @property
    def partitions_key(self) -> str:
        """The Redis key with the partition count that the workers of this prefix run."""
        return f"{self.prefix}:state-partitions"

    @property
    def window_workers_key(self) -> str:
        """The Redis key where window workers of this prefix note that they run (``workers.consumer``)."""
        return f"{self.prefix}:window-workers"

    def partition_stream(self, partition: int) -> str:
        return partition_stream(self.stream, partition, self.partitions)


class StateConsumer:
    """Own partitions of the event stream and score their events on in-memory state; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        store: DecisionStore,
        *,
        plans: PlanCatalogue,
        policy: Policy,
        detectors: Sequence[Detector],
        publisher: DecisionPublisher,
        settings: StateSettings = StateSettings(),
        clock: Callable[[], float] = time.monotonic,
        models: ModelSwitch | None = None,
    ) -> None:
        """With ``models``, a newly activated model replaces the anomaly detector and the shadow runs (``workers.state_models``)."""
        self.client = client
        self._reader = unparsed_reader(client)
        self.store = store
        self.plans = plans
        self.policy = policy
        # Replaced by a new list when a newly activated model is swapped in (StateModels.refresh).
        self.models = StateModels(detectors, models)
        self.detectors = self.models.detectors
        self.publisher = publisher
        self.settings = settings
        self.clock = clock
        self.leases = PartitionLeases(
            client, prefix=settings.prefix, partitions=settings.partitions, owner=settings.owner,
            ttl_ms=settings.lease_ttl_ms,
        )
        self.checkpoints = Checkpoints(
            client, prefix=settings.prefix, ttl_seconds=settings.checkpoint_ttl_seconds, max_bytes=settings.checkpoint_max_bytes,
        )
        self.owned: dict[int, PartitionState] = {}
        # Partitions whose in-memory state may hold events of a failed batch: reloaded before the next read.
        self._stale: set[int] = set()
        self._checkpointed_at: dict[int, float] = {}
        # Seconds the last checkpoint of each partition took to write.
        self._checkpoint_took: dict[int, float] = {}
        # Owned partitions whose state changed since their last checkpoint.
        self._changed: set[int] = set()
        self._closed_at = clock()
        # Clock time of each owned partition's last entry, to release the tail of a partition gone quiet.
        self._entries_at: dict[int, float] = {}
        self._next_block = 0
        # The token this worker found at {prefix}:state-epoch; another one, or none, means Redis lost its data.
        self._epoch: bytes | None = None
        # Until then (clock time) no free partition is taken, so that other workers can take theirs back first.
        self._claim_after = -1e18

    @property
    def epoch_key(self) -> str:
        return f"{self.settings.prefix}:state-epoch"

    def applied_key(self, partition: int) -> str:
        """Return the key of the id of the last entry applied to the partition's state, checkpointed or not.

        The entries between the checkpoint's id and this one are those a new
        owner would replay. ``scripts/bench_stream.py`` waits for it.
        """
        return f"{self.settings.prefix}:state-applied:{partition}"

    # Loop ---------------------------------------------------------------------

    @property
    def partitions_key(self) -> str:
        return self.settings.partitions_key

    def ensure_groups(self) -> None:
        """Check that no window worker runs beside this one and the prefix's partition count, then create the groups.

        The first worker of a prefix notes its partition count in Redis. A
        worker with another count raises ``PartitionCountError``: it would
        contend for the same leases and checkpoint keys while reading other
        streams, and leave some partitions unread.
        """
        # Checked first: a refused worker notes no partition count, which would keep window workers from starting.
        self._check_no_window_workers()
        self.client.set(self.partitions_key, self.settings.partitions, nx=True)
        noted = int(self.client.get(self.partitions_key))
        if noted != self.settings.partitions:
            raise PartitionCountError(
                f"{self.partitions_key} says the workers of this prefix run {noted} partitions, this worker "
                f"{self.settings.partitions}; start every worker and gateway with the same --partitions, or, once "
                f"none runs, delete {self.partitions_key} to change the count"
            )
        for partition in range(self.settings.partitions):
            try:
                self.client.xgroup_create(self.settings.partition_stream(partition), self.settings.group, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    def _check_no_window_workers(self) -> None:
        """Raise ``WindowWorkersError`` while window workers note that they run on this worker's stream.

        With one partition both kinds read ``{prefix}:events`` through the same
        consumer group, so each would see only part of the events. With more,
        gateways append to the partitions' streams, which window workers do not read.
        """
        if self.settings.partitions != 1:
            return
        key = self.settings.window_workers_key
        running = self.client.zcount(key, int(time.time() * 1000), "+inf")
        if running:
            raise WindowWorkersError(
                f"{running} window worker(s) noted in {key} read {self.settings.stream} through the same consumer "
                "group; a state worker beside them would read part of its entries. Stop them ('fairuse worker "
                "--window', or RQ jobs with FAIRUSE_STATE=0), then start the state worker"
            )

    def run(self, stop: threading.Event | None = None, max_idle_rounds: int | None = None) -> None:
        """Process rounds until ``stop`` is set, then write every owned partition's state and give it up.

        Redis and database outages are retried with a backoff of up to 30 s.
        ``max_idle_rounds`` ends the loop after that many rounds without entries (for tests).
        """
        stop = stop or threading.Event()
        delay = RetryDelay()
        idle = 0
        connected = False
        logger.info("state worker %s started on %d partitions of %s", self.settings.owner, self.settings.partitions, self.settings.stream)
        progress = ProgressLog(logger, f"state worker {self.settings.owner}")
        try:
            while not stop.is_set():
                try:
                    if not connected:
                        self.reconnect()
                        connected = True
                    outcome = self.process_once()
                    delay.reset()
                except (redis.ConnectionError, redis.TimeoutError) as error:
                    # Redis may come back from a snapshot, its streams and groups behind the states: every
                    # state is reloaded from its checkpoint then, unless Redis came back empty (check_epoch).
                    connected = False
                    self._stale |= set(self.owned)
                    logger.warning("state worker %s: Redis unreachable, retrying in %.1f s: %s", self.settings.owner, delay.seconds, error)
                    delay.wait(stop)
                    continue
                except redis.ResponseError as error:
                    # NOGROUP: the client reconnected by itself to a Redis that lost its data. UNBLOCKED: the
                    # stream was deleted (FLUSHALL, DEL) while this worker waited in XREADGROUP.
                    if not str(error).startswith(("NOGROUP", "UNBLOCKED")):
                        raise
                    connected = False
                    logger.warning("state worker %s: stream or consumer group missing, Redis lost its data: %s",
                                   self.settings.owner, error)
                    delay.wait(stop)
                    continue
                except sqlalchemy.exc.DBAPIError as error:
                    logger.warning("state worker %s: database unreachable, retrying in %.1f s: %s", self.settings.owner, delay.seconds, error.orig)
                    delay.wait(stop)
                    continue
                progress.add(outcome)
                idle = idle + 1 if outcome.entries == 0 else 0
                if max_idle_rounds is not None and idle >= max_idle_rounds:
                    break
        finally:
            self.stop()
        logger.info("state worker %s stopped", self.settings.owner)

    def reconnect(self) -> None:
        """Recreate the groups, keep the owned states if Redis lost its data, and republish decisions in force."""
        self.ensure_groups()
        self.check_epoch()
        published = self.publisher.republish(self.store)
        logger.info("state worker %s: connected; republished %d decisions in force", self.settings.owner, published)

    def check_epoch(self) -> bool:
        """Notice that Redis lost its data since the last call, and keep the owned states then; return whether it did.

        Leases, checkpoints and pending entries are gone with the data, and
        the in-memory states are the only copy of what they summarised. So
        this worker takes its partitions' leases back and writes their
        checkpoints again, instead of starting them empty.
        """
        token = uuid.uuid4().hex.encode()
        self.client.set(self.epoch_key, token, nx=True)
        current = self.client.get(self.epoch_key)
        lost = self._epoch is not None and current != self._epoch
        self._epoch = current
        if lost:
            self._claim_after = self.clock() + self.settings.lease_ttl_ms / 1000
            for partition in sorted(self.owned):
                self._keep_after_data_loss(partition)
        return lost

    def _keep_after_data_loss(self, partition: int) -> None:
        if not self.client.set(self.leases.key(partition), self.settings.owner, nx=True, px=self.settings.lease_ttl_ms):
            self._drop(partition)
            return
        self.leases.owned.add(partition)
        state = self.owned[partition]
        # The entries are gone from Redis; a failed batch's events stay applied, as nothing can replay them.
        state.unacknowledged.clear()
        self._stale.discard(partition)
        self._changed.add(partition)
        self._checkpointed_at[partition] = -1e18
        logger.warning(
            "partition %d: Redis lost its data; keeping the in-memory state up to entry %s and writing %s again",
            partition, _text(state.last_id), self.checkpoints.key(partition),
        )

    def stop(self) -> None:
        """Write the state of every owned partition, acknowledge what it contains, and give up the leases."""
        self.checkpoint(set(self.owned))
        self.leases.stop()
        self.owned.clear()
        self._changed.clear()

    def process_once(self) -> BatchOutcome:
        """Rebalance the leases, read and process one batch per owned partition, then checkpoint and close when due."""
        self.detectors = self.models.refresh(state.scorer for state in self.owned.values())
        self.rebalance()
        outcome = BatchOutcome()
        caught_up = set()
        for partition in sorted(self.owned):
            # A round over several partitions can outlast a lease, so each is renewed before every batch.
            self._renew()
            if partition not in self.owned:
                continue
            read = self._read_new(partition, block_ms=None)
            if read.entries == 0:
                caught_up.add(partition)
            outcome.add(read)
        if outcome.entries == 0 and self.owned:
            # Wait for entries on one partition, taking them in turn, so that an idle worker does not spin.
            partitions = sorted(self.owned)
            partition = partitions[self._next_block % len(partitions)]
            self._next_block += 1
            outcome.add(self._read_new(partition, block_ms=max(self.settings.block_ms // len(partitions), 1)))
        elif not self.owned:
            time.sleep(self.settings.block_ms / 1000)

        now = self.clock()
        outcome.add(self._release_quiet_tails(caught_up, now))
        due = {partition for partition in self.owned if now - self._checkpointed_at.get(partition, -1e18) >= self._checkpoint_interval(partition)}
        self.checkpoint(due)
        outcome.add(self._adopt_orphans(caught_up | due))
        if now - self._closed_at >= self.settings.close_seconds:
            self._closed_at = now
            outcome.add(self.close_quiet_keys())
        return outcome

    # Ownership ----------------------------------------------------------------

    def rebalance(self) -> dict[int, int]:
        """Renew leases, write and give up partitions above the fair share, and take over free ones.

        Returns each partition taken over (or reloaded after a failed batch)
        with the number of pending entries replayed onto its checkpoint.
        """
        if self._epoch is None:
            self.check_epoch()
        self._renew()
        if self.clock() < self._claim_after:
            gained, lost = set(), set()
        else:
            gained, lost = self.leases.rebalance(before_release=self.checkpoint)
        for partition in lost:
            self._drop(partition)
        self._stale &= set(self.owned) | gained
        taken = {}
        for partition in sorted(gained | self._stale):
            # Loading and replaying can take seconds per partition, longer than a lease if not renewed.
            self._renew()
            if partition in self.leases.owned:
                taken[partition] = self._take_over(partition)
        return taken

    def _renew(self) -> None:
        """Extend the leases, and drop the partitions whose lease expired or another worker took.

        Leases lost because Redis lost its data are taken back, with the states kept (``check_epoch``).
        """
        lost = self.leases.renew()
        if lost:
            self.check_epoch()
        for partition in lost - self.leases.owned:
            self._drop(partition)

    def _drop(self, partition: int) -> None:
        """Forget a partition this worker no longer owns, without writing its state."""
        self._changed.discard(partition)
        self._stale.discard(partition)
        self._entries_at.pop(partition, None)
        self.leases.owned.discard(partition)
        if self.owned.pop(partition, None) is not None:
            logger.info("state worker %s gave up partition %d", self.settings.owner, partition)

    def _take_over(self, partition: int) -> int:
        """Load the partition's checkpoint, then apply its pending entries after the checkpoint's last id; return how many."""
        self._stale.discard(partition)
        self.owned[partition] = self._load_checkpoint(partition)
        self.owned[partition].tail.lateness = self.settings.lateness
        self._entries_at[partition] = self.clock()
        self._checkpointed_at[partition] = self.clock()
        replayed = self._replay_pending(partition)
        logger.info(
            "state worker %s owns partition %d from entry %s, %d pending entries replayed",
            self.settings.owner, partition, _text(self.owned[partition].last_id), replayed,
        )
        return replayed

    def _load_checkpoint(self, partition: int) -> PartitionState:
        try:
            data = self.checkpoints.load(partition)
            if data is None:
                logger.warning(
                    "partition %d: no checkpoint at %s, starting with empty state (expected on the partition's first start)",
                    partition, self.checkpoints.key(partition),
                )
                return self._empty_state()
            return load_state(
                data, self.detectors, self.plans, self.settings.partitions, max_bytes=self.settings.checkpoint_max_bytes
            )
        except CheckpointError as error:
            logger.error("partition %d: checkpoint %s not loaded, starting with empty state: %s",
                         partition, self.checkpoints.key(partition), error)
            return self._empty_state()

    def _empty_state(self) -> PartitionState:
        scorer = StateScorer(detectors=self.detectors, plans=self.plans, retention=STREAM_RETENTION)
        return PartitionState(
            scorer=scorer, repeats=RepeatedRequests(self.settings.repeat_horizon), partitions=self.settings.partitions,
            tail=EventTail(self.settings.lateness),
        )

    def _replay_pending(self, partition: int) -> int:
        """Acknowledge the partition's pending entries the checkpoint contains and apply the others; return how many."""
        stream = self.settings.partition_stream(partition)
        state = self.owned[partition]
        start = b"0"
        replayed = 0
        while True:
            entries = self._read(partition, start, block_ms=None)
            if not entries:
                return replayed
            start = entries[-1][0]
            covered = [entry_id for entry_id, _ in entries if state.last_id is not None and not _after(entry_id, state.last_id)]
            if covered:
                self.client.xack(stream, self.settings.group, *covered)
            newer = entries[len(covered):]
            if newer:
                replayed += len(newer)
                self.process_entries(partition, newer)

    # Batches ------------------------------------------------------------------

    def _read_new(self, partition: int, block_ms: int | None) -> BatchOutcome:
        entries = self._read(partition, b">", block_ms)
        if not entries:
            return BatchOutcome()
        return self.process_entries(partition, entries)

    def _read(self, partition: int, start: bytes, block_ms: int | None) -> list:
        response = self._reader.xreadgroup(
            self.settings.group, f"p{partition}", {self.settings.partition_stream(partition): start},
            count=self.settings.batch_size, block=block_ms,
        )
        return stream_entries(response)

    def process_entries(self, partition: int, entries: list) -> BatchOutcome:
        """Apply one batch of the partition's entries to its state, then decide, store and publish.

        The entries stay pending until a checkpoint contains them. A batch
        that fails leaves the partition to be reloaded from its checkpoint.
        """
        try:
            return self._process(partition, entries)
        except BaseException:
            self._stale.add(partition)
            raise

    def _process(self, partition: int, entries: list) -> BatchOutcome:
        stream = self.settings.partition_stream(partition)
        state = self.owned[partition]
        outcome = BatchOutcome(entries=len(entries))
        parsed = parse_entries(entries, stream)
        frame, misrouted = _without_misrouted(parsed.frame, partition, self.settings.partitions, stream)
        parsed.dead.extend(misrouted)
        frame, ahead = _without_future(frame, time.time(), self._clock_margin, stream)
        parsed.dead.extend(ahead)
        outcome.dead = len(parsed.dead)

        if not frame.empty:
            first_seen = state.repeats.first_seen(frame)
            outcome.duplicates = parsed.duplicates + int((~first_seen).sum())
            frame = frame[first_seen].reset_index(drop=True)
        if not frame.empty:
            outcome.events = len(frame)
            self._score(partition, state, frame, outcome)
        if parsed.clock is not None:
            self._follow_clock(partition, state, parsed.clock, outcome)

        dead_letter(self.client, self.settings.dead_letter, parsed.dead, f"{self.settings.owner}/p{partition}")
        # Entries of a previous owner (see _adopt_orphans) may come before the last id; it never moves back.
        if state.last_id is None or _after(entries[-1][0], state.last_id):
            state.last_id = entries[-1][0]
            self.client.set(self.applied_key(partition), state.last_id, ex=self.settings.checkpoint_ttl_seconds)
        state.unacknowledged.extend(entry_id for entry_id, _ in entries)
        self._changed.add(partition)
        self._entries_at[partition] = self.clock()
        logger.debug(
            "state worker %s: partition %d: %d entries, %d events, %d dead, %d repeated, %d beyond lateness, "
            "%d inexact, %d new decisions",
            self.settings.owner, partition, outcome.entries, outcome.events, outcome.dead, outcome.duplicates,
            outcome.beyond_lateness, outcome.inexact, outcome.decisions,
        )
        return outcome

    def _score(self, partition: int, state: PartitionState, frame: pd.DataFrame, outcome: BatchOutcome) -> None:
        newest = float(frame["ts"].max())
        state.newest = newest if state.newest is None else max(state.newest, newest)
        in_closed_days = _in_clock_closed_days(frame["ts"].to_numpy(), state)
        released = state.tail.add(frame)
        outcome.beyond_lateness = released.beyond_lateness + in_closed_days
        if in_closed_days:
            logger.debug("partition %d: %d events of days a clock tick closed", partition, in_closed_days)
        if released.frame is not None:
            self._apply(partition, state, released.frame, outcome)

    def _apply(self, partition: int, state: PartitionState, frame: pd.DataFrame, outcome: BatchOutcome) -> None:
        """Update the state with events released by its tail, then decide on the findings."""
        chunk = Chunk(frame, self.plans)
        result, closed = self.models.score(state.scorer, chunk)
        touched = state.activity.add(chunk)
        if len(result.inexact):
            inexact = result.inexact[["subject_type", "subject"]].drop_duplicates().shape[0]
            outcome.inexact += inexact
            logger.debug(
                "partition %d: %d subjects inexact: %s", partition, inexact,
                result.inexact.groupby("why").size().to_dict(),
            )
        since = float(frame["ts"].min())
        self._decide(result.findings, since, outcome)
        record_activity(self.store, state.activity, chunk.keys, touched)
        self.models.score_shadow(result.findings, closed, store=self.store, since=since)

    def _decide(self, findings: list[Finding], since: float, outcome: BatchOutcome) -> None:
        """Decide on ``findings`` as the batch command does, given the stored findings from ``since`` minus the merge window."""
        if not findings:
            return
        since = min(since, min(finding.detected_at for finding in findings))
        policy_outcome, _ = apply_policy(
            findings, self.policy, prior=prior_without_shadow(self.store), suspensions=self.store.suspensions_between,
            allowlisted=StaffAllowlist(self.store.engine).active_among, stored_findings=self.store.findings_between,
            context_since=since,
        )
        self.store.save_findings(findings)
        outcome.findings += len(findings)
        # Published before they are stored: a batch applied again after a crash finds stored decisions covering
        # its findings and makes no new ones, so decisions stored and never published would stay unpublished.
        self.publisher.publish(policy_outcome.decisions)
        outcome.decisions += self.store.save_decisions(policy_outcome.decisions)

    def close_quiet_keys(self) -> BatchOutcome:
        """Score, in every owned partition, the anomaly days that ended before the partition's newest event."""
        outcome = BatchOutcome()
        for partition, state in sorted(self.owned.items()):
            if state.newest is None:
                continue
            # A held event may still belong to a day that ended before the newest event.
            watermark = state.tail.watermark
            as_of = state.newest if watermark is None else min(state.newest, watermark)
            try:
                self._close_days(state, as_of, outcome)
            except BaseException:
                self._stale.add(partition)
                raise
            # Closing changes the state without an entry, so the next checkpoint must write it.
            self._changed.add(partition)
        return outcome

    def _close_days(self, state: PartitionState, as_of: float, outcome: BatchOutcome) -> None:
        """Score the partition's anomaly days that ended before ``as_of`` and decide on the findings."""
        findings, closed = self.models.close(state.scorer, as_of)
        self._decide(findings, as_of, outcome)
        # A subject first acted on here gets the rows of its past hours.
        flagged = {(finding.subject_type, finding.subject) for finding in findings}
        record_activity(self.store, state.activity, flagged, np.empty(0, np.int64))
        self.models.score_shadow(findings, closed, store=self.store, since=as_of)

    @property
    def _clock_margin(self) -> float:
        """Seconds a clock tick or an event may be ahead of this worker's clock, or a tick behind the time it closes."""
        return max(self.settings.lateness, CLOCK_MARGIN)

    def _follow_clock(self, partition: int, state: PartitionState, clock: float, outcome: BatchOutcome) -> None:
        """Close a partition's days up to a clock tick minus a margin, when no event of it is that recent.

        Only events move a partition's watermark, so without traffic its
        quiet keys' days would stay open until its next event. The hourly
        ``rescore_quiet_keys`` job appends a tick to every partition. A
        partition with an event newer than the tick minus the margin closes
        its days by event time as before. In any other, the held events are
        applied and the days that ended before the tick minus the margin
        are scored. The margin is the larger of the lateness and
        ``CLOCK_MARGIN``. A request that started before that and is appended
        after the tick starts its day again, and the day is scored twice.
        Such events count as beyond the lateness.
        A tick ahead of this worker's own clock by more than the margin is
        ignored with a warning.
        """
        margin = self._clock_margin
        if clock > time.time() + margin:
            logger.warning(
                "state worker %s: partition %d: clock tick %.0f is more than %.0f s ahead of this worker's clock; "
                "ignored. Check the clocks of the RQ workers, or that the tick is in seconds, not milliseconds",
                self.settings.owner, partition, clock, margin,
            )
            return
        as_of = clock - margin
        if state.newest is None or state.newest >= as_of:
            return
        state.clock_closed = as_of if state.clock_closed is None else max(state.clock_closed, as_of)
        released = state.tail.release_all()
        if released is not None:
            self._apply(partition, state, released, outcome)
        decisions = outcome.decisions
        self._close_days(state, as_of, outcome)
        logger.info(
            "state worker %s: partition %d: clock tick %.0f closed the days ended by %.0f, %d new decisions",
            self.settings.owner, partition, clock, as_of, outcome.decisions - decisions,
        )

    def release_tails(self, partitions: Iterable[int]) -> BatchOutcome:
        """Apply every held event of the owned ``partitions`` and decide on the findings.

        An event of those partitions that arrives later, older than their
        newest event, counts as beyond the lateness.
        """
        outcome = BatchOutcome()
        for partition in sorted(set(partitions) & set(self.owned)):
            state = self.owned[partition]
            released = state.tail.release_all()
            if released is None:
                continue
            try:
                self._apply(partition, state, released, outcome)
            except BaseException:
                self._stale.add(partition)
                raise
            self._changed.add(partition)
        return outcome

    def _release_quiet_tails(self, caught_up: set[int], now: float) -> BatchOutcome:
        """Release the tails of partitions without entries for ``lateness`` seconds of clock time.

        On a stream without traffic the watermark does not move, so
        without this the last ``lateness`` seconds of events would wait for
        the next event. Here clock time replaces event time: an event
        that a gateway appends later than that is older than the watermark.
        """
        quiet = {
            partition for partition in caught_up
            if len(self.owned[partition].tail) and now - self._entries_at.get(partition, now) >= self.settings.lateness
        }
        return self.release_tails(quiet) if quiet else BatchOutcome()

    # Checkpoints --------------------------------------------------------------

    def _checkpoint_interval(self, partition: int) -> float:
        """Return the seconds between checkpoints of ``partition``: ``checkpoint_seconds``, longer for a large state.

        States of 55 to 90 MB took 0.4 to 0.9 s to write at 10,000 events/s (scripts/bench_stream.py
        --only latency), and the next batch waits for the write.
        """
        seconds = self.settings.checkpoint_seconds
        if seconds == 0:
            return 0.0
        spaced = min(self._checkpoint_took.get(partition, 0.0) / self.settings.checkpoint_share, self.settings.checkpoint_max_seconds)
        return max(seconds, spaced)

    def checkpoint(self, partitions: Iterable[int]) -> set[int]:
        """Write the changed state of ``partitions`` to Redis, then acknowledge the entries it contains; return those written.

        A partition whose last batch failed is skipped: its state is reloaded,
        not written. So is one whose lease another worker holds now.
        """
        written: set[int] = set()
        for partition in sorted(set(partitions) & self._changed):
            if partition in self._stale or partition not in self.owned:
                continue
            state = self.owned[partition]
            started = self.clock()
            data = dump_state(state, self.detectors, self.plans)
            saved = self._save_checkpoint(partition, data)
            # The acknowledgements below grow with the entries read, so counting them would space checkpoints further.
            took = self.clock() - started
            if not saved:
                logger.warning(
                    "state worker %s: partition %d is owned by another worker now; its state was not written",
                    self.settings.owner, partition,
                )
                self._drop(partition)
                continue
            acknowledged = len(state.unacknowledged)
            stream = self.settings.partition_stream(partition)
            for first in range(0, acknowledged, 10_000):
                self.client.xack(stream, self.settings.group, *state.unacknowledged[first : first + 10_000])
            state.unacknowledged.clear()
            self._changed.discard(partition)
            self._checkpointed_at[partition] = self.clock()
            self._checkpoint_took[partition] = took
            written.add(partition)
            logger.debug(
                "partition %d: checkpoint of %d bytes up to entry %s in %.3f s, %d entries acknowledged",
                partition, len(data), _text(state.last_id), self._checkpoint_took[partition], acknowledged,
            )
        return written

    def _save_checkpoint(self, partition: int, data: bytes) -> bool:
        """Write the partition's checkpoint while this worker holds its lease; return whether it was written.

        A missing lease can also mean that Redis lost its data after this
        round renewed the leases. The in-memory state is then the only copy,
        so the lease is taken back (``check_epoch``) and the write retried,
        instead of the state being dropped.
        """
        lease_key = self.leases.key(partition)
        if self.checkpoints.save(partition, data, lease_key=lease_key, owner=self.settings.owner):
            return True
        if not self.check_epoch() or partition not in self.owned:
            return False
        return self.checkpoints.save(partition, data, lease_key=lease_key, owner=self.settings.owner)

    def _adopt_orphans(self, partitions: set[int]) -> BatchOutcome:
        """Apply the entries pending in ``partitions`` once a checkpoint acknowledged everything this worker read.

        Only a previous owner that kept reading after its lease ran out leaves
        such entries: it read them as ``p{n}`` and then failed to write its
        checkpoint. They are applied now, possibly as late events.
        """
        outcome = BatchOutcome()
        for partition in sorted((partitions & set(self.owned)) - self._stale):
            if self.owned[partition].unacknowledged:
                continue  # this worker's own entries are pending too, so the pending ones are not all orphans
            entries = self._read(partition, b"0", block_ms=None)
            if entries:
                logger.warning(
                    "partition %d: %d entries read by a previous owner after its lease ended, applied now",
                    partition, len(entries),
                )
                outcome.add(self.process_entries(partition, entries))
        return outcome


def append_clock_ticks(client: redis.Redis, prefix: str, now: float) -> int:
    """Append a clock tick for ``now`` to every partition stream of the state workers of ``prefix``; return how many.

    The partition count is the one the workers noted in Redis, so nothing is
    appended before a state worker has run on this prefix.
    """
    noted = client.get(StateSettings(prefix=prefix).partitions_key)
    if noted is None:
        return 0
    settings = StateSettings(prefix=prefix, partitions=int(noted))
    pipeline = client.pipeline(transaction=False)
    for partition in range(settings.partitions):
        pipeline.xadd(settings.partition_stream(partition), clock_tick(now))
    pipeline.execute()
    return settings.partitions


def _in_clock_closed_days(ts: np.ndarray, state: PartitionState) -> int:
    """Return how many of the events at ``ts`` belong to days a clock tick closed, and not already beyond the lateness."""
    if state.clock_closed is None:
        return 0
    watermark = state.tail.watermark
    closed = (ts // DAY + 1) * DAY <= state.clock_closed
    if watermark is not None:
        closed &= ts >= watermark
    return int(np.count_nonzero(closed))


def _without_misrouted(
    frame: pd.DataFrame, partition: int, partitions: int, stream: str
) -> tuple[pd.DataFrame, list[tuple[bytes, str]]]:
    """Return ``frame`` without the events of other partitions' subjects, and a dead letter for each.

    A gateway that appends with another partition count, or by another
    hash, would split a subject's state between partitions. The parsed
    frame has no entry ids, so these dead letters carry the event's request
    id in their ``entry`` field.
    """
    if partitions == 1 or frame.empty:
        return frame, []
    owners = partition_of(frame["account_id"], frame["key_id"], partitions)
    wrong = owners != partition
    if not wrong.any():
        return frame, []
    rows = zip(frame["request_id"][wrong], frame["account_id"][wrong], frame["key_id"][wrong], owners[wrong])
    dead = [(str(request_id).encode(), _misrouted_reason(stream, request_id, account, key, owner, partition, partitions))
            for request_id, account, key, owner in rows]
    return frame[~wrong].reset_index(drop=True), dead


def _without_future(
    frame: pd.DataFrame, now: float, margin: float, stream: str
) -> tuple[pd.DataFrame, list[tuple[bytes, str]]]:
    """Return ``frame`` without the events more than ``margin`` seconds after ``now``, and a dead letter for each.

    One event from a gateway whose clock runs far ahead would move its
    partition's newest event time, and with it the watermark. Every later
    event would then be beyond the lateness, and the days of every quiet key
    would be closed early and scored again. Like ``_without_misrouted``,
    the dead letters carry the event's request id in their ``entry`` field.
    NOTE: saved events replayed with ``fairuse push`` are checked against
    the clock as well, so a simulated input dated after today is rejected.
    """
    if frame.empty:
        return frame, []
    ahead = frame["ts"].to_numpy() > now + margin
    if not ahead.any():
        return frame, []
    rows = zip(frame["request_id"][ahead], frame["ts"][ahead])
    dead = [
        (str(request_id).encode(), f"{stream}: request {request_id}: ts {float(ts):.3f} is {float(ts) - now:.0f} s "
         f"ahead of this worker's clock, more than the {margin:.0f} s allowed; fix the clock of the gateway that sent it")
        for request_id, ts in rows
    ]
    return frame[~ahead].reset_index(drop=True), dead


def _misrouted_reason(stream, request_id, account, key, owner: int, partition: int, partitions: int) -> str:
    return (
        f"{stream}: request {request_id}: account {str(account)[:64]!r} (key {str(key)[:64]!r}) belongs to "
        f"partition {owner} of {partitions}, not {partition}; does a gateway append with another partition count?"
    )


def _after(entry_id: bytes, last_id: bytes) -> bool:
    """Return whether stream entry id ``entry_id`` comes after ``last_id``."""
    return _id_parts(entry_id) > _id_parts(last_id)


def _id_parts(entry_id: bytes) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition(b"-")
    return int(milliseconds), int(sequence or 0)


def _text(entry_id: bytes | None) -> str:
    return "none" if entry_id is None else entry_id.decode()


__all__ = ["PartitionCountError", "StateConsumer", "StateSettings"]
