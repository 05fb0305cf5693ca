"""The real Apache access log: clock-driven clients are automation, people browsing are not.

User agents are the labels here and nothing else: the detectors never read
them as a signal of automation.
"""

import re
from pathlib import Path

import pytest

from detector.pipeline import default_detectors, score_events
from detector.readers import read_events

LOG = Path(__file__).parent / "data" / "real" / "apache_combined_2015.log.gz"
POLLERS = re.compile(r"UniversalFeedParser|Tiny Tiny RSS|Feedfetcher-Google")
CRAWLERS = re.compile(r"bot|crawl|spider|slurp|archive\.org", re.IGNORECASE)
MACHINES = re.compile(POLLERS.pattern + "|" + CRAWLERS.pattern + r"|feed|rss|subscriber|^-$", re.IGNORECASE)
# A subject needs this many requests before cadence or time of day can tell anything.
MIN_REQUESTS = 20


@pytest.fixture(scope="module")
def scored(plans, policy):
    read = read_events([LOG])
    result = score_events(read.frame, plans=plans, policy=policy, detectors=default_detectors())
    agents = read.frame.groupby("key_id")["user_agent"].agg(lambda values: values.value_counts().index[0])
    requests = read.frame.groupby("key_id").size()
    automation = {finding.subject for finding in result.findings if finding.reason == "automation"}
    return read, result, agents, requests, automation


def test_real_log_reads_every_line(scored):
    read, *_ = scored

    assert read.records == 10_000
    # One line is not a combined log line; the 595-character path on line 3029 is cut, not rejected.
    assert [(reject.line, reject.field) for reject in read.rejects] == [(8899, "-")]
    assert len(read.frame) == 9_999
    assert set(read.frame["subject_type"]) == {"ip"}


def test_feed_pollers_found_as_automation(scored):
    _, _, agents, requests, automation = scored
    pollers = [address for address, agent in agents.items() if POLLERS.search(agent) and requests[address] >= MIN_REQUESTS]

    assert len(pollers) >= 4
    missed = [address for address in pollers if address not in automation]
    assert missed == []


def test_busy_crawlers_mostly_found(scored):
    _, _, agents, requests, automation = scored
    crawlers = [address for address, agent in agents.items() if CRAWLERS.search(agent) and requests[address] >= 50]

    found = [address for address in crawlers if address in automation]
    assert len(crawlers) >= 5
    assert len(found) / len(crawlers) >= 0.7


def test_people_browsing_almost_never_automation(scored):
    _, _, agents, _, automation = scored
    people = [address for address, agent in agents.items() if agent.startswith("Mozilla/") and not MACHINES.search(agent)]

    flagged = [address for address in people if address in automation]
    assert len(people) >= 1000
    assert len(flagged) / len(people) <= 0.005


def test_no_enforcement_on_free_web_traffic(scored):
    _, result, *_ = scored

    throttles = [decision for decision in result.decisions if decision.action != "review"]
    assert throttles == []
