"""RQ jobs: stream consumption and maintenance, run by ``rq worker fairuse``.

``workers/cron_jobs.py`` schedules them with ``rq cron workers.cron_jobs``.
Settings come from the environment: ``FAIRUSE_DATABASE_URL`` (the store),
``FAIRUSE_PREFIX`` (Redis key prefix, default ``fairuse``),
``FAIRUSE_NO_MODEL`` (set to 1 to skip the anomaly model), and
``FAIRUSE_STATE`` (the state worker consumes unless it is 0, which selects
the window worker), ``FAIRUSE_PARTITIONS`` (the state worker's partitioned
streams, default 1) and ``FAIRUSE_LATENESS`` (its ``--lateness`` in seconds,
default 1). Each job uses the
Redis connection of the worker that runs it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

from rq import get_current_job

from detector.model_registry import ModelError, default_models_dir
from detector.model_switch import ModelSwitch, load_active_model, shadow_from
from detector.shadow import Shadow, prior_without_shadow
from detector.store.model_assignments import SHADOW, ModelAssignments
from detector.detectors import AnomalyDetector
from detector.pipeline import score_events
from detector.plans import load_plans
from detector.policy import load_policy
from detector.store import open_store
from detector.store.allowlist import StaffAllowlist
from workers.consumer import StreamConsumer, StreamSettings
from workers.publish import DecisionPublisher
from detector.state.tail import DEFAULT_LATENESS
from workers.state_consumer import StateConsumer, StateSettings, append_clock_ticks
from workers.window import EventWindows

logger = logging.getLogger(__name__)
QUEUE = "fairuse"


def consume_stream(seconds: float = 55.0, consumer: str | None = None) -> dict[str, int]:
    """Consume the event stream for up to ``seconds`` and return what was processed.

    Every run reads the registry for the active model and the shadow, so a
    version activated with ``fairuse models activate`` is used from the next
    run on, without restarting workers.
    """
    job = get_current_job()
    connection = job.connection
    prefix = os.environ.get("FAIRUSE_PREFIX", "fairuse")
    store = open_store(os.environ.get("FAIRUSE_DATABASE_URL"))
    name = consumer or f"rq-{job.id}"
    policy = load_policy()
    if os.environ.get("FAIRUSE_STATE", "1") != "0":
        return _consume_with_state(connection, store, prefix, f"{name}-{job.id}", seconds, policy)
    models = ModelSwitch(store, policy=policy, use_model=os.environ.get("FAIRUSE_NO_MODEL") != "1")
    stream_consumer = StreamConsumer(
        connection, store, plans=load_plans(), policy=policy, detectors=models.detectors(),
        windows=EventWindows(connection, prefix=prefix), publisher=DecisionPublisher(connection, prefix=prefix),
        settings=StreamSettings(
            stream=f"{prefix}:events", dead_letter=f"{prefix}:events:dead", consumer=name,
            state_partitions_key=StateSettings(prefix=prefix).partitions_key,
            window_workers_key=StateSettings(prefix=prefix).window_workers_key,
        ),
        models=models,
    )

    totals: dict = {"entries": 0, "events": 0, "dead": 0, "decisions": 0}
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        stream_consumer.ensure_group()
        while not stop.is_set():
            outcome = stream_consumer.process_once()
            for field in totals:
                totals[field] += getattr(outcome, field)
    finally:
        timer.cancel()
    totals["model"] = models.version
    logger.info("job %s consumed %s", job.id, totals)
    return totals


def _consume_with_state(connection, store, prefix: str, owner: str, seconds: float, policy) -> dict[str, int]:
    """Run the state worker for ``seconds`` on ``FAIRUSE_PARTITIONS`` partitions (default 1), then hand its partitions back.

    Each run loads its partitions' checkpoints and writes them when it ends,
    so the next run, on any RQ worker, continues from there.
    """
    models = ModelSwitch(store, policy=policy, use_model=os.environ.get("FAIRUSE_NO_MODEL") != "1")
    consumer = StateConsumer(
        connection, store, plans=load_plans(), policy=policy, detectors=models.detectors(),
        publisher=DecisionPublisher(connection, prefix=prefix),
        settings=StateSettings(
            prefix=prefix, partitions=int(os.environ.get("FAIRUSE_PARTITIONS", "1")), owner=owner,
            lateness=float(os.environ.get("FAIRUSE_LATENESS", DEFAULT_LATENESS)),
        ),
        models=models,
    )
    totals: dict = {"entries": 0, "events": 0, "dead": 0, "decisions": 0}
    deadline = time.monotonic() + seconds
    try:
        consumer.ensure_groups()
        while time.monotonic() < deadline:
            outcome = consumer.process_once()
            for field in totals:
                totals[field] += getattr(outcome, field)
        # A run is shorter than close_seconds, so each one closes the quiet keys' days once.
        totals["decisions"] += consumer.close_quiet_keys().decisions
    finally:
        consumer.stop()
    totals["model"] = models.version
    logger.info("state consumer %s consumed %s", owner, totals)
    return totals


def rescore_quiet_keys(batch_size: int = 500) -> dict[str, int]:
    """Score the closed days of keys that went quiet, as of now.

    The stream scores a key's finished day only when the key sends again; this
    job covers keys that went quiet. For the state workers it appends a clock
    tick to each of their partition streams, and the worker holding a
    partition without recent events scores the days that ended before it. For
    the window worker it scores every stored window's closed days with the
    anomaly model. A shadow with an anomaly model scores the same days beside it and
    stores its decisions as simulated.
    """
    job = get_current_job()
    connection = job.connection
    prefix = os.environ.get("FAIRUSE_PREFIX", "fairuse")
    store = open_store(os.environ.get("FAIRUSE_DATABASE_URL"))
    plans, policy = load_plans(), load_policy()
    now = time.time()
    ticks = append_clock_ticks(connection, prefix, now)
    model = _model(store)
    shadow = _quiet_key_shadow(store, model, policy, now)
    totals = {"clock_ticks": ticks, "subjects": 0, "findings": 0, "decisions": 0, "shadow_decisions": 0}
    if model is None and shadow is None:
        return totals

    # Each window is read once, so keeping them decoded would only hold memory.
    windows = EventWindows(connection, prefix=prefix, cache_bytes=0)
    publisher = DecisionPublisher(connection, prefix=prefix)
    detectors = [AnomalyDetector(model, as_of=now)] if model else []
    for subjects in _window_subjects(connection, prefix, batch_size):
        history = windows.load(subjects, now)
        if history.empty:
            continue
        history = history.sort_values("ts", kind="stable").reset_index(drop=True)
        totals["subjects"] += len(subjects)
        if detectors:
            result = score_events(
                history, plans=plans, policy=policy, detectors=detectors, prior=prior_without_shadow(store),
                suspensions=store.suspensions_between, allowlisted=StaffAllowlist(store.engine).active_among,
            )
            store.save_findings(result.findings)
            totals["decisions"] += store.save_decisions(result.decisions)
            publisher.publish(result.decisions)
            totals["findings"] += len(result.findings)
        if shadow is not None:
            # Counted as the decisions are: those stored by this run, not those an earlier run stored.
            totals["shadow_decisions"] += shadow.score(history, plans=plans, store=store).stored
    logger.info("job %s re-scored %s", job.id, totals)
    return totals


def _quiet_key_shadow(store, model, policy, now: float) -> Shadow | None:
    """Return the registry's shadow reduced to its anomaly detector as of ``now``, or None without one."""
    try:
        shadow = shadow_from(
            ModelAssignments(store.engine).current(SHADOW), active=model, policy=policy, models_dir=default_models_dir()
        )
    except (ModelError, ValueError) as error:
        logger.warning("shadow not run on quiet keys: %s", error)
        return None
    if shadow is None:
        return None
    anomaly = [
        dataclasses.replace(detector, as_of=now) for detector in shadow.detectors if isinstance(detector, AnomalyDetector)
    ]
    return dataclasses.replace(shadow, detectors=anomaly) if anomaly else None


def _window_subjects(connection, prefix: str, batch_size: int):
    """Yield lists of (subject_type, subject) for the stored windows, ``batch_size`` at a time."""
    marker = f"{prefix}:window:"
    batch = []
    for key in connection.scan_iter(match=f"{marker}*", count=1000):
        subject_type, _, subject = key.decode()[len(marker):].partition(":")
        batch.append((subject_type, subject))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def republish_decisions() -> int:
    """Publish every enforced decision in force from the SQL store to Redis."""
    job = get_current_job()
    prefix = os.environ.get("FAIRUSE_PREFIX", "fairuse")
    store = open_store(os.environ.get("FAIRUSE_DATABASE_URL"))
    return DecisionPublisher(job.connection, prefix=prefix).republish(store)


def _model(store):
    if os.environ.get("FAIRUSE_NO_MODEL") == "1":
        return None
    try:
        return load_active_model(store)
    except ModelError as error:
        logger.warning("anomaly detector skipped: %s", error)
        return None
