"""The model and shadow a scorer uses, re-read from the registry table every few seconds.

Activation is recorded in the database (``detector.store.model_assignments``),
so workers on several machines agree. A worker re-reads it at most every
``refresh_seconds`` and loads a newly activated version without a restart.
An artifact that fails its checksum or feature check is rejected with an
error in the log, and the worker keeps the model it has. A process starting
with such an assignment falls back to the newest earlier activation that
still loads.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from detector.detectors import Detector
from detector.model_registry import AnomalyModel, ModelError, default_models_dir, default_version, load_model
from detector.pipeline import default_detectors
from detector.plans import ConfigError
from detector.policy import Policy, load_policy
from detector.shadow import Shadow
from detector.store import DecisionStore
from detector.store.model_assignments import ACTIVE, SHADOW, Assignment, ModelAssignments

logger = logging.getLogger(__name__)


def active_version(store: DecisionStore, models_dir: Path) -> str | None:
    """Return the activated version, or the newest non-candidate artifact when none was activated."""
    assignment = ModelAssignments(store.engine).current(ACTIVE)
    if assignment is not None and assignment.version is not None:
        return assignment.version
    return default_version(models_dir)


def load_active_model(store: DecisionStore, models_dir: Path | None = None) -> AnomalyModel:
    """Load the active model; when its artifact is rejected, the newest earlier activation that loads.

    Raises ModelError when no version loads.
    """
    models_dir = models_dir or default_models_dir()
    requested = active_version(store, models_dir)
    if requested is None:
        raise ModelError(f"{models_dir}: no model activated and no shipped artifact; run `fairuse models activate VERSION`")
    try:
        return load_model(models_dir, requested)
    except ModelError as error:
        logger.error("active model %s rejected: %s", requested, error)
        first_error = error

    earlier = [item.version for item in ModelAssignments(store.engine).history(limit=100) if item.role == ACTIVE]
    earlier.append(default_version(models_dir))
    for version in earlier:
        if version is None or version == requested:
            continue
        try:
            model = load_model(models_dir, version)
        except ModelError:
            continue
        logger.warning("using earlier model %s instead of the rejected %s", version, requested)
        return model
    raise first_error


def shadow_from(
    assignment: Assignment | None, *, active: AnomalyModel | None, policy: Policy, models_dir: Path
) -> Shadow | None:
    """Build the shadow an assignment names, or None when the shadow is stopped.

    A shadow without its own model uses the active one; without its own policy, ``policy``.
    Raises ModelError or ConfigError when the candidate does not load.
    """
    if assignment is None or not assignment.is_set:
        return None
    model = load_model(models_dir, assignment.version) if assignment.version else active
    shadow_policy = policy_from_text(assignment.policy_toml, assignment.policy_name) if assignment.policy_toml else policy
    label_model = f"iforest-{model.version}" if model else "no-model"
    return Shadow(
        label=f"{label_model}+{shadow_policy.origin.removeprefix('policy/')}",
        detectors=default_detectors(model),
        policy=shadow_policy,
    )


def policy_from_text(text: str, name: str | None) -> Policy:
    """Parse a policy stored as TOML text, with the same checks as a policy file."""
    with tempfile.TemporaryDirectory(prefix="fairuse-policy-") as folder:
        path = Path(folder) / (Path(name).name if name else "shadow-policy.toml")
        path.write_text(text, "utf-8")
        return load_policy(path)


class ModelSwitch:
    """The detectors and shadow a long-running scorer uses, refreshed from the registry table."""

    def __init__(
        self,
        store: DecisionStore,
        *,
        policy: Policy,
        models_dir: Path | None = None,
        use_model: bool = True,
        refresh_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.policy = policy
        self.models_dir = models_dir or default_models_dir()
        self.use_model = use_model
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.model: AnomalyModel | None = None
        self._detectors: list[Detector] = default_detectors(None)
        self._shadow: Shadow | None = None
        self._shadow_key: tuple | None = None
        self._rejected: set[str] = set()
        self._config_error: str | None = None
        self._checked_at: float | None = None
        if use_model:
            self._start_model()
        self.refresh(force=True)

    @property
    def version(self) -> str | None:
        return self.model.version if self.model else None

    def detectors(self) -> list[Detector]:
        """Return the active detectors, after a refresh when one is due."""
        self.refresh()
        return self._detectors

    def shadow(self) -> Shadow | None:
        """Return the shadow to run beside the active detectors, if any."""
        self.refresh()
        return self._shadow

    def refresh(self, force: bool = False) -> None:
        """Re-read the registry when ``refresh_seconds`` passed since the last read, or when forced."""
        now = self.clock()
        if not force and self._checked_at is not None and now - self._checked_at < self.refresh_seconds:
            return
        self._checked_at = now
        try:
            assignments = ModelAssignments(self.store.engine)
            active = assignments.current(ACTIVE)
            shadow = assignments.current(SHADOW)
        except SQLAlchemyError as error:
            logger.warning("model registry unreadable, keeping model %s: %s", self.version, error)
            return
        if self.use_model:
            requested = active.version if active and active.version else default_version(self.models_dir)
            if requested is not None and requested != self.version:
                self._switch_to(requested)
        self._update_shadow(shadow)

    def _start_model(self) -> None:
        try:
            self._use(load_active_model(self.store, self.models_dir))
        except ModelError as error:
            logger.warning("anomaly detector skipped: %s", error)
            return
        logger.info("scoring with model %s", self.version)

    def _switch_to(self, version: str) -> None:
        try:
            model = load_model(self.models_dir, version)
        except ModelError as error:
            if version not in self._rejected:
                logger.error("model %s rejected, keeping %s: %s", version, self.version, error)
                self._rejected.add(version)
            return
        try:
            detectors = default_detectors(model)
        except ConfigError as error:
            # A configuration file changed under the running worker, so the switch is retried at the next refresh.
            if str(error) != self._config_error:
                logger.error("model %s not switched to, keeping %s: %s", version, self.version, error)
                self._config_error = str(error)
            return
        self._config_error = None
        logger.info("model %s active (was %s)", version, self.version)
        self._use(model, detectors)

    def _use(self, model: AnomalyModel, detectors: list[Detector] | None = None) -> None:
        self._detectors = detectors if detectors is not None else default_detectors(model)
        self.model = model
        self._shadow_key = None

    def _update_shadow(self, assignment: Assignment | None) -> None:
        key = None if assignment is None else (assignment.version, assignment.policy_toml, assignment.created_at)
        if key == self._shadow_key:
            return
        self._shadow_key = key
        try:
            self._shadow = shadow_from(assignment, active=self.model, policy=self.policy, models_dir=self.models_dir)
        except (ModelError, ValueError) as error:
            logger.error("shadow not started: %s", error)
            self._shadow = None
            return
        if self._shadow is not None:
            logger.info("shadow %s running beside model %s", self._shadow.label, self.version)
