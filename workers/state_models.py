"""The anomaly model and the shadow of a running state worker, re-read from the model registry.

``StateModels`` wraps a ``detector.model_switch.ModelSwitch``, which re-reads
the registry every ``refresh_seconds`` and loads a newly activated model. When
the active model changes, its anomaly detector replaces the old one in every
owned partition's ``StateScorer`` (``swap_detectors``). The anomaly state
keeps each subject's open day as counts and sums. They depend on the
features the model was trained on, not on the model, so the state carries
on. The days that close from then on are scored by the new model, and their
findings and decisions name it in their origin (``anomaly/iforest-VERSION``).

A model is not switched to, with an error in the log, when

- its features are not the ones the state counts (``KEYDAY_FEATURES``).
  ``load_model`` already rejects such an artifact; the check here keeps a
  state from being scored by a model that reads other columns.
- it changes the set of detectors, as a model activated in a worker that
  started without one (no artifact, or ``--no-model``) would. A new anomaly
  state would start in the middle of every subject's day and score partial
  days. The model is used after a restart, and the partitions then start empty,
  because their checkpoints hold other detectors.

Thresholds that a model brings for the other detectors are not applied while
the worker runs: their states were built with the old values (the automation
state sizes its load windows by ``min_parallel``). A warning names them, and
they apply after a restart, which loads the checkpoints with them.

The shadow scores the anomaly days that closed in the batch with its own
model. Its other findings are the active detectors' (see ``score_shadow``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Self

import pandas as pd

from detector.decisions import Decision
from detector.detectors import AnomalyDetector, Detector, Finding
from detector.features.keyday import KEYDAY_FEATURES
from detector.model_switch import ModelSwitch
from detector.pipeline import apply_policy
from detector.shadow import Shadow, as_shadow, shadow_decisions
from detector.state.anomaly import AnomalyDayState
from detector.state.chunk import Chunk, ChunkFindings
from detector.state.scorer import StateScorer
from detector.store import DecisionStore

logger = logging.getLogger(__name__)

# (prepared, day columns, feature matrix) of the anomaly days closed in one scoring; see AnomalyDayState.closed_days.
ClosedDays = list[tuple]


class StateModels:
    """The detectors a state worker scores with, and its shadow, refreshed from a ``ModelSwitch``.

    Without a switch the detectors stay those given and no shadow runs.
    """

    def __init__(self, detectors: Sequence[Detector], switch: ModelSwitch | None = None) -> None:
        self.detectors = list(detectors)
        self.switch = switch
        # The switch's detector list last looked at: a new list means a new active model.
        self._offered = switch.detectors() if switch is not None else None
        # The version last rejected, so that a rejection is logged once per version.
        self._rejected: str | None = None

    @property
    def version(self) -> str | None:
        """Return the version of the model the anomaly detector scores with, or None without one."""
        for detector in self.detectors:
            if isinstance(detector, AnomalyDetector):
                return detector.version
        return None

    def refresh(self, scorers: Iterable[StateScorer]) -> list[Detector]:
        """Re-read the registry when due; on a new active model, swap its anomaly detector into ``scorers``.

        Returns the detectors to score with from now on, the same list object when nothing changed.
        """
        if self.switch is None:
            return self.detectors
        offered = self.switch.detectors()
        if offered is self._offered:
            return self.detectors
        self._offered = offered
        swapped = self._compatible(offered)
        if swapped is None:
            return self.detectors
        previous = self.version
        scorers = list(scorers)
        for scorer in scorers:
            swap_detectors(scorer, swapped)
        self.detectors = swapped
        logger.info(
            "state worker now scores anomaly days with model %s (was %s) in %d partitions; their state is kept",
            self.version, previous, len(scorers),
        )
        return self.detectors

    def _compatible(self, offered: Sequence[Detector]) -> list[Detector] | None:
        """Return the current detectors with ``offered``'s anomaly detectors, or None when the model cannot be swapped in."""
        current = [type(detector).__name__ for detector in self.detectors]
        requested = [type(detector).__name__ for detector in offered]
        version = _model_version(offered)
        if current != requested:
            self._reject(
                version,
                f"model {version} not used by the state worker: it changes the detectors from {current} to {requested}; "
                "restart the worker to use it (its partitions then start with empty state)",
            )
            return None
        swapped: list[Detector] = []
        unchanged_thresholds: list[str] = []
        for old, new in zip(self.detectors, offered):
            if isinstance(new, AnomalyDetector):
                features = tuple(new.model.metadata.get("features", ()))
                if features != KEYDAY_FEATURES:
                    self._reject(
                        version,
                        f"model {version} not used by the state worker, which keeps {self.version}: it was trained on "
                        f"features {list(features)}, and the state counts {list(KEYDAY_FEATURES)}",
                    )
                    return None
                swapped.append(new)
                continue
            if new != old:
                unchanged_thresholds.append(old.reason)
            swapped.append(old)
        if unchanged_thresholds:
            logger.warning(
                "model %s brings thresholds for %s; the state worker keeps the ones it started with until a restart",
                version, unchanged_thresholds,
            )
        self._rejected = None
        return swapped

    def _reject(self, version: str | None, message: str) -> None:
        if self._rejected != version:
            logger.error(message)
            self._rejected = version

    # Shadow -------------------------------------------------------------------

    def shadow(self) -> Shadow | None:
        """Return the shadow to run beside the active detectors, if any."""
        return self.switch.shadow() if self.switch is not None else None

    def score(self, scorer: StateScorer, chunk: Chunk) -> tuple[ChunkFindings, ClosedDays]:
        """Update ``scorer`` with ``chunk``; return its findings and, while a shadow runs, the anomaly days it closed."""
        with _ClosedDaysOf(scorer, self.shadow() is not None) as closed:
            result = scorer.update(chunk)
        return result, closed.days

    def close(self, scorer: StateScorer, as_of: float) -> tuple[list[Finding], ClosedDays]:
        """Close ``scorer``'s anomaly days that ended before ``as_of``; return the findings and the closed days as ``score``."""
        with _ClosedDaysOf(scorer, self.shadow() is not None) as closed:
            findings = scorer.close(as_of)
        return findings, closed.days

    def score_shadow(
        self, findings: list[Finding], closed: ClosedDays, *, store: DecisionStore, since: float
    ) -> list[Decision]:
        """Decide as the shadow on a batch's findings, with its own model on the closed anomaly days; store the decisions.

        The shadow's findings are the active ``findings`` without the anomaly
        ones, plus the shadow model's findings on the ``closed`` days. Its
        policy decides on them, as a simulated run with the shadow's earlier
        decisions as prior, and the decisions are stored with a ``shadow/``
        origin (``detector.shadow.as_shadow``). They are never published, and
        no enforced decision depends on them. Returns the decisions of this pass.

        NOTE: the shadow's other detectors do not run: their findings are the
        active detectors', so a shadow model's thresholds for them are not
        applied here, unlike in the window worker. A worker started without
        the anomaly detector closes no days, so its shadow makes no anomaly
        findings even when the shadow has a model.
        """
        shadow = self.shadow()
        if shadow is None:
            return []
        anomaly = _anomaly_detector(shadow.detectors)
        active = _anomaly_detector(self.detectors)
        if anomaly is not None and active is not None and anomaly == active:
            # A shadow of a policy alone scores with the active model: its anomaly findings are the active ones.
            found = list(findings)
        else:
            found = [finding for finding in findings if finding.reason != "anomaly"]
            for prepared, columns, features in closed if anomaly is not None else ():
                found.extend(_flagged(anomaly, prepared, columns, features))
        if not found:
            return []
        since = min(since, min(finding.detected_at for finding in found))

        def stored_findings(subjects, start, end):
            # The stored anomaly findings are the active model's, not context for another model's decisions.
            context = store.findings_between(subjects, start, end)
            return [
                finding for finding in context
                if finding.reason != "anomaly" or (anomaly is not None and finding.origin == _origin(anomaly))
            ]

        # As in Shadow.score, the shadow has no suspension cap and no staff allowlist.
        outcome, _ = apply_policy(
            found, shadow.policy, prior=lambda subjects: shadow_decisions(store.decisions_for(subjects)),
            stored_findings=stored_findings, context_since=since, simulated=True,
        )
        decisions = [as_shadow(decision, shadow.label) for decision in outcome.decisions]
        stored = store.save_decisions(decisions)
        logger.debug("shadow %s: %d findings, %d decisions, %d new", shadow.label, len(found), len(decisions), stored)
        return decisions


def swap_detectors(scorer: StateScorer, detectors: Sequence[Detector]) -> None:
    """Put ``detectors`` in place of ``scorer``'s, position by position, in the scorer and in every state.

    The detectors must be of the same types in the same order, since each
    state was built for the detector at its position.
    """
    if [type(detector) for detector in detectors] != [type(detector) for detector in scorer.detectors]:
        raise ValueError(
            f"cannot swap detectors {[type(detector).__name__ for detector in scorer.detectors]} "
            f"for {[type(detector).__name__ for detector in detectors]}"
        )
    for position, detector in enumerate(detectors):
        scorer.detectors[position] = detector
        for state in scorer.states[position]:
            state.detector = detector


class _ClosedDaysOf:
    """Collect the anomaly days that a scorer closes inside the ``with`` block, when ``enabled``."""

    def __init__(self, scorer: StateScorer, enabled: bool) -> None:
        self.states = [state for states in scorer.states for state in states if isinstance(state, AnomalyDayState)] if enabled else []
        self.days: ClosedDays = []

    def __enter__(self) -> Self:
        for state in self.states:
            state.closed_days = self.days
        return self

    def __exit__(self, *_) -> None:
        for state in self.states:
            state.closed_days = None


def _flagged(detector: AnomalyDetector, prepared, columns: dict, features) -> list[Finding]:
    """Return ``detector``'s findings on closed days, as ``AnomalyDayState`` builds them with its own detector."""
    anomaly = detector.model.anomaly_scores(features)
    flagged = anomaly > detector.model.threshold
    if not flagged.any():
        return []
    rows = pd.DataFrame({name: column[flagged] for name, column in columns.items()})
    return detector.flagged_findings(prepared, rows, anomaly[flagged])


def _anomaly_detector(detectors: Sequence[Detector]) -> AnomalyDetector | None:
    return next((detector for detector in detectors if isinstance(detector, AnomalyDetector)), None)


def _model_version(detectors: Sequence[Detector]) -> str | None:
    detector = _anomaly_detector(detectors)
    return detector.version if detector is not None else None


def _origin(detector: AnomalyDetector) -> str:
    return f"{detector.reason}/iforest-{detector.version}"


__all__ = ["StateModels", "swap_detectors"]
