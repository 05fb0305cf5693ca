"""Detector thresholds from TOML: the shipped file, bad entries, and thresholds carried by a model."""

import re
from dataclasses import fields

import pytest

from detector.model_registry import AnomalyModel
from detector.pipeline import default_detectors
from detector.plans import ConfigError
from detector.thresholds import DETECTOR_CLASSES, check_thresholds, load_thresholds


def test_shipped_thresholds_match_detector_defaults():
    shipped = load_thresholds()

    for section, detector in DETECTOR_CLASSES.items():
        defaults = {item.name: item.default for item in fields(detector) if item.name in shipped[section]}
        assert shipped[section] == defaults, section


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"sharing": {"min_switches": 2}}, r"unknown section \[sharing\]"),
        ({"key_sharing": {"min_friends": 2}}, r"\[key_sharing\] min_friends: unknown threshold"),
        ({"key_sharing": {"min_switches": 2.5}}, r"min_switches: expected a whole number, got 2.5"),
        ({"abnormal_cost": {"min_ratio": -1}}, r"min_ratio: expected a finite number ≥ 0, got -1"),
        ({"abnormal_cost": {"min_ratio": True}}, r"min_ratio: expected a finite number ≥ 0, got True"),
        ({"abnormal_cost": {"min_ratio": float("nan")}}, r"min_ratio: expected a finite number ≥ 0, got nan"),
        ({"automation": 3}, r"\[automation\] must be a table"),
    ],
)
def test_invalid_thresholds_rejected(document, message):
    with pytest.raises(ConfigError, match=message):
        check_thresholds(document, "candidate.toml")


def test_thresholds_file_error_names_file(tmp_path):
    path = tmp_path / "thresholds.toml"
    path.write_text("[automation]\nmin_parallel = 'eight'\n", "utf-8")

    with pytest.raises(ConfigError, match=re.escape(f"{path}: [automation] min_parallel")):
        load_thresholds(path)


def test_model_thresholds_reach_detectors():
    model = AnomalyModel(
        estimator=None,
        metadata={"version": "t", "threshold": 0.6, "thresholds": {"automation": {"min_parallel": 12}, "anomaly": {"ceiling": 0.9}}},
    )

    detectors = {detector.reason: detector for detector in default_detectors(model)}

    assert detectors["automation"].min_parallel == 12
    assert detectors["automation"].min_repeat_share == 0.5
    assert detectors["anomaly"].ceiling == 0.9
    assert detectors["abnormal_cost"].min_ratio == 8.0
