"""Hosting networks: the ranges file, and key sharing leaving cloud servers out of the device graph."""

import numpy as np
import pytest

from detector.detectors import KeySharingDetector
from detector.features import prepare_events
from detector.features.hosting import ENVIRONMENT_VARIABLE, HostingNetworks
from detector.pipeline import default_detectors
from detector.plans import ConfigError
from tests.factories import HOUR, T0, events, frame

RANGES = HostingNetworks.from_lines(["# cloud", "", "192.0.0.0/16  # region a", "192.0.2.0/24", "2001:db8::/32"], "ranges")


def test_ranges_merge_and_match():
    assert len(RANGES) == 2
    assert RANGES.contains("192.0.7.0/24")
    assert RANGES.contains("2001:db8:1234::/48")
    assert not RANGES.contains("198.51.100.0/24")
    assert not RANGES.contains("2001:db9::/48")
    assert not RANGES.contains("")


def test_bad_line_names_file_line_and_fix():
    with pytest.raises(ConfigError) as raised:
        HostingNetworks.from_lines(["192.0.2.0/24", "cloud.example"], "hosting.txt")

    assert "hosting.txt:2: not an IPv4 or IPv6 network: 'cloud.example'" in str(raised.value)
    assert "one CIDR per line" in str(raised.value)


def test_missing_file_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=ENVIRONMENT_VARIABLE):
        HostingNetworks.load(tmp_path / "absent.txt")


def _ci_developer():
    # A laptop in Germany; CI runs from fresh cloud runners in a region abroad.
    laptop = events("dev", T0 + 9 * HOUR + np.arange(240) * 30.0, ip="198.51.100.1", user_agent="curl/8.5.0",
                    country="DE")
    runs = [
        events("dev", T0 + 9 * HOUR + run * 1200.0 + 5.0 + np.arange(8) * 6.0, ip=f"192.0.{run}.10",
               user_agent="python-requests/2.32.3", country="US")
        for run in range(6)
    ]
    return frame(laptop, *runs)


def test_cloud_runners_abroad_not_a_second_person(plans):
    prepared = prepare_events(_ci_developer(), plans)

    without = KeySharingDetector().detect(prepared)
    with_ranges = KeySharingDetector(hosting=RANGES).detect(prepared)

    assert [finding.evidence["kind"] for finding in without] == ["devices"]
    assert with_ranges == []


def test_friend_abroad_still_found_with_ranges(plans):
    owner = events("pair", T0 + 8 * HOUR + np.arange(60) * 300.0, ip="198.51.100.1",
                   user_agent="OpenAI/Python 1.51.0", country="DE")
    friend = events("pair", T0 + 11 * HOUR + 60.0 + np.arange(20) * 300.0, ip="203.0.113.9",
                    user_agent="curl/8.5.0", country="PL")

    findings = KeySharingDetector(hosting=RANGES).detect(prepare_events(frame(owner, friend), plans))

    assert findings
    assert findings[0].evidence["kind"] == "devices"


def test_environment_file_reaches_key_sharing(tmp_path, monkeypatch):
    path = tmp_path / "hosting.txt"
    path.write_text("192.0.0.0/16\n")
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(path))

    sharing = next(detector for detector in default_detectors() if isinstance(detector, KeySharingDetector))

    assert sharing.hosting is not None
    assert sharing.hosting.contains("192.0.5.0/24")


def test_score_stops_on_bad_ranges_file(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from detector.cli import main

    ranges = tmp_path / "hosting.txt"
    ranges.write_text("192.0.2.0/24\nnot-a-net\n")
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, str(ranges))
    events = tmp_path / "events.jsonl"
    events.write_text('{"request_id": "r1"}\n')

    result = CliRunner().invoke(main, ["score", str(events), "--db", f"sqlite:///{tmp_path}/f.db"])

    assert result.exit_code == 2
    assert f"{ranges}:2: not an IPv4 or IPv6 network: 'not-a-net'" in result.output


def test_range_narrower_than_network_matches():
    # Events are grouped by /24 and /48, and a provider's range can be narrower than that.
    narrow = HostingNetworks.from_lines(["192.0.2.64/28", "2001:db8:1234:ff00::/56"], "narrow")

    assert narrow.contains("192.0.2.0/24")
    assert narrow.contains("2001:db8:1234::/48")
    assert not narrow.contains("192.0.3.0/24")
    assert not narrow.contains("2001:db8:1235::/48")
    assert not narrow.contains("192.0.2.0/26")


def test_server_in_narrow_range_makes_no_device(plans):
    narrow = HostingNetworks.from_lines([f"192.0.{run}.8/29" for run in range(6)], "narrow")

    assert KeySharingDetector(hosting=narrow).detect(prepare_events(_ci_developer(), plans)) == []


def test_whole_address_space_warns(caplog):
    with caplog.at_level("WARNING"):
        ranges = HostingNetworks.from_lines(["0.0.0.0/0", "203.0.113.0/24"], "hosting.txt")

    assert ranges.contains("198.51.100.0/24")
    assert "hosting.txt:1: 0.0.0.0/0 covers all of the address space" in caplog.text
    assert "203.0.113.0/24" not in caplog.text
