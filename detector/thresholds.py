"""Detector thresholds: read from TOML, checked against each detector's fields, applied when building detectors."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from detector.detectors import (
    AbnormalCostDetector,
    AnomalyDetector,
    AutomationDetector,
    ImageQuotaDetector,
    KeySharingDetector,
)
from detector.plans import ConfigError, _read_toml

# Detector class per section; ``reason`` and ``version`` are not thresholds.
DETECTOR_CLASSES: dict[str, type] = {
    "abnormal_cost": AbnormalCostDetector,
    "key_sharing": KeySharingDetector,
    "automation": AutomationDetector,
    "anomaly": AnomalyDetector,
}
_NOT_THRESHOLDS = {"reason", "version", "model", "as_of", "hosting"}

Thresholds = dict[str, dict[str, float | int]]


def threshold_names(section: str) -> dict[str, type]:
    """Return the tunable field names of a section's detector with their Python types."""
    detector = DETECTOR_CLASSES[section]
    return {
        item.name: (int if item.type in ("int", int) else float)
        for item in fields(detector)
        if item.name not in _NOT_THRESHOLDS
    }


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """Load thresholds from TOML, or the shipped ``thresholds.toml`` when ``path`` is None."""
    source, document = _read_toml(path, "thresholds.toml")
    return check_thresholds(document, source)


def check_thresholds(document: dict[str, Any], source: str) -> Thresholds:
    """Return ``document`` as checked thresholds; raise ConfigError naming the bad entry."""
    checked: Thresholds = {}
    for section, values in document.items():
        if section not in DETECTOR_CLASSES:
            raise ConfigError(f"{source}: unknown section [{section}]; expected one of {sorted(DETECTOR_CLASSES)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table of name = number")
        names = threshold_names(section)
        checked[section] = {}
        for name, value in values.items():
            if name not in names:
                raise ConfigError(f"{source}: [{section}] {name}: unknown threshold; expected one of {sorted(names)}")
            checked[section][name] = _checked_value(value, names[name], f"{source}: [{section}] {name}")
    return checked


def build_detectors(thresholds: Thresholds, model=None) -> list:
    """Return the shipped detectors with ``thresholds`` applied; the anomaly detector only with a model."""
    detectors: list = [
        AbnormalCostDetector(**thresholds.get("abnormal_cost", {})),
        KeySharingDetector(**thresholds.get("key_sharing", {})),
        AutomationDetector(**thresholds.get("automation", {})),
        ImageQuotaDetector(),
    ]
    if model is not None:
        detectors.append(AnomalyDetector(model, **thresholds.get("anomaly", {})))
    return detectors


def merged(base: Thresholds, override: Thresholds) -> Thresholds:
    """Return ``base`` with every value in ``override`` put over it, section by section."""
    result = {section: dict(values) for section, values in base.items()}
    for section, values in override.items():
        result.setdefault(section, {}).update(values)
    return result


def _checked_value(value: Any, kind: type, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: expected a finite number ≥ 0, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return int(value)
    return float(value)
