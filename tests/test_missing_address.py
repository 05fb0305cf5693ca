"""Requests without a client address: valid events, and key sharing reports what it could not measure."""

from __future__ import annotations

import numpy as np

from detector.detectors import AnomalyDetector, KeySharingDetector
from detector.features import prepare_events
from detector.model_registry import load_model
from detector.pipeline import default_detectors, score_events
from detector.readers.validate import validate_records
from tests.factories import DAY, T0, events, frame, record


def test_empty_ip_is_valid_event():
    valid, rejects = validate_records([record(1, ts=T0, ip="")], "gateway")

    assert rejects == []
    assert valid["ip"].tolist() == [""]


def test_missing_addresses_are_not_one_network(plans):
    # Three devices alternating within minutes, all without an address: with
    # addresses on three networks this is key sharing (see test_sharing.py).
    times = T0 + np.arange(0, 3600, 40.0)
    agents = ["phone", "laptop", "tablet"] * (len(times) // 3)
    prepared = prepare_events(events("key-a", times, ip="", user_agent=agents), plans)

    findings = KeySharingDetector().detect(prepared)
    gaps = KeySharingDetector().evidence_gaps(prepared)

    assert findings == []
    assert gaps == {0: f"network evidence unavailable: no client address on any of {len(times)} requests"}


def test_partial_addresses_reported(plans):
    with_address = events("key-a", T0 + np.arange(4) * 60.0, ip="198.51.100.7")
    without = events("key-a", T0 + DAY + np.arange(2) * 60.0, ip="")
    prepared = prepare_events(frame(with_address, without), plans)

    gaps = KeySharingDetector().evidence_gaps(prepared)

    assert gaps == {0: "network evidence partial: no client address on 2 of 6 requests"}


def test_scoring_reports_gap_per_subject(plans, policy):
    unknown = events("key-a", T0 + np.arange(5) * 60.0, ip="")
    known = events("key-b", T0 + np.arange(5) * 60.0, ip="198.51.100.7")

    result = score_events(frame(unknown, known), plans=plans, policy=policy, detectors=default_detectors())

    gaps = dict(zip(result.subjects["subject"], result.subjects["evidence_gaps"]))
    assert gaps == {"key-a": ["key_sharing: network evidence unavailable: no client address on any of 5 requests"],
                    "key-b": []}
    assert "key_sharing: network evidence unavailable for 1 subjects (see evidence_gaps in the subject scores)" in result.outcome.warnings


def test_anomaly_reports_missing_networks(plans):
    prepared = prepare_events(events("key-a", T0 + np.arange(3) * 60.0, ip=""), plans)

    gaps = AnomalyDetector(load_model()).evidence_gaps(prepared)

    assert gaps == {0: "networks feature unavailable: no client address on any of 3 requests"}
