import numpy as np

from detector.detectors import KeySharingDetector
from detector.features import prepare_events
from tests.factories import DAY, HOUR, T0, events, frame


def _findings(plans, *parts):
    return KeySharingDetector().detect(prepare_events(frame(*parts), plans))


def test_four_places_at_once_is_sharing(plans):
    rng = np.random.default_rng(3)
    times = np.sort(T0 + rng.uniform(9 * HOUR, 17 * HOUR, 400))
    places = [f"198.51.{index}.20" for index in rng.integers(0, 4, 400)]

    findings = _findings(plans, events("shared", times, ip=places))

    assert findings
    assert findings[0].evidence["concurrent_networks"] >= 3
    assert findings[0].impact >= 3


def test_team_behind_one_nat_is_not_sharing(plans):
    rng = np.random.default_rng(4)
    times = np.sort(T0 + rng.uniform(9 * HOUR, 17 * HOUR, 600))
    agents = [f"client-{index}" for index in rng.integers(0, 8, 600)]

    assert _findings(plans, events("team", times, ip="192.0.2.10", user_agent=agents)) == []


def test_phone_moving_through_carrier_is_not_sharing(plans):
    # Eight carrier /24s, one after another, with requests every few minutes.
    times = T0 + np.arange(8 * 30) * 120.0
    addresses = [f"100.64.{index // 30}.{index % 200 + 1}" for index in range(8 * 30)]

    assert _findings(plans, events("phone", times, ip=addresses)) == []


def test_traveller_moving_once_is_not_sharing(plans):
    home = events("traveller", T0 + np.arange(50) * 300.0, ip="198.51.100.1", country="DE")
    away = events("traveller", T0 + DAY + np.arange(50) * 300.0, ip="203.0.113.1", country="JP")

    assert _findings(plans, home, away) == []


def test_two_countries_alternating_is_impossible_travel(plans):
    times = T0 + np.arange(40) * 45.0
    addresses = ["198.51.100.1" if index % 2 else "203.0.113.1" for index in range(40)]
    countries = ["DE" if index % 2 else "BR" for index in range(40)]

    findings = _findings(plans, events("hopper", times, ip=addresses, country=countries))

    assert findings
    assert findings[0].evidence["impossible_trips_24h"] > 0


def test_ipv6_same_48_one_network(plans):
    times = T0 + np.arange(200) * 30.0
    addresses = [f"2001:db8:abcd:{index % 5}::{index % 7 + 1}" for index in range(200)]

    assert _findings(plans, events("v6-home", times, ip=addresses)) == []


def test_two_countries_most_days_is_sharing(plans):
    # Two people, one SDK user agent, in Germany and Brazil, each a few hours every day.
    berlin = events("pair", [T0 + day * DAY + 9 * HOUR + minute * 600.0 for day in range(4) for minute in range(6)], ip="198.51.100.1", country="DE")
    recife = events("pair", [T0 + day * DAY + 20 * HOUR + minute * 600.0 for day in range(4) for minute in range(6)], ip="203.0.113.1", country="BR")

    findings = _findings(plans, berlin, recife)

    assert findings
    assert findings[0].evidence["kind"] == "countries"
    assert findings[0].evidence["countries_same_day"] == 2
    # The second day with two countries, at the second request from the second country.
    assert findings[0].detected_at == T0 + DAY + 20 * HOUR + 600.0


def test_one_trip_abroad_and_back_is_not_sharing(plans):
    home = events("tourist", T0 + np.arange(30) * 900.0, ip="198.51.100.1", country="DE")
    away = events("tourist", T0 + 3 * DAY + np.arange(30) * 900.0, ip="203.0.113.1", country="ES")
    back = events("tourist", T0 + 6 * DAY + 12 * HOUR + np.arange(30) * 900.0, ip="198.51.100.1", country="DE")

    assert _findings(plans, home, away, back) == []


def test_second_sharer_abroad_found_within_minutes(plans):
    # The owner works in Germany all morning; from 11:00 a friend in Poland, on
    # their own line and client, takes turns with the owner every few minutes.
    owner = events("pair", T0 + 8 * HOUR + np.arange(60) * 300.0, ip="198.51.100.1",
                   user_agent="OpenAI/Python 1.51.0", country="DE")
    friend = events("pair", T0 + 11 * HOUR + 60.0 + np.arange(20) * 300.0, ip="203.0.113.9",
                    user_agent="curl/8.5.0", country="PL")

    findings = _findings(plans, owner, friend)

    assert findings
    assert findings[0].detected_at - (T0 + 11 * HOUR + 60.0) <= 10 * 60
    assert findings[0].evidence["kind"] == "devices"
    assert findings[0].evidence["countries_same_day"] == 2


def test_phone_and_laptop_not_sharing(plans):
    # One person in Germany takes turns between a phone on three carrier /24s
    # and a laptop on the home line, every few minutes, all day.
    times = T0 + 8 * HOUR + np.arange(120) * 240.0
    on_phone = (np.arange(120) // 3) % 2 == 1
    addresses = [f"100.64.{index % 3}.{index % 200 + 1}" if phone else "198.51.100.1"
                 for index, phone in enumerate(on_phone)]
    agents = ["Dart/3.5 (dart:io)" if phone else "curl/8.5.0" for phone in on_phone]

    assert _findings(plans, events("person", times, ip=addresses, user_agent=agents)) == []


def test_three_devices_across_midnight_is_sharing(plans):
    # Three people on their own lines and clients, the third after UTC midnight.
    first = events("night", T0 + 23 * HOUR + np.arange(4) * 60.0, ip="198.51.100.1", user_agent="curl/8.5.0")
    second = events("night", T0 + 23.5 * HOUR + np.arange(4) * 60.0, ip="198.51.101.1", user_agent="axios/1.7.7")
    third = events("night", T0 + DAY + 0.5 * HOUR + np.arange(4) * 60.0, ip="198.51.102.1",
                   user_agent="Go-http-client/2.0")

    findings = _findings(plans, first, second, third)

    assert findings
    assert findings[0].evidence["device_components"] == 3
    assert findings[0].detected_at < T0 + DAY + HOUR


def test_ci_runners_in_one_country_are_not_sharing(plans):
    # A laptop all day; every 20 minutes a CI run of eight requests from a fresh
    # cloud runner in the same country, interleaved with the laptop's requests.
    laptop = events("dev", T0 + 9 * HOUR + np.arange(240) * 30.0, ip="198.51.100.1", user_agent="curl/8.5.0")
    runs = [
        events("dev", T0 + 9 * HOUR + run * 1200.0 + 5.0 + np.arange(8) * 6.0, ip=f"192.0.{run}.10",
               user_agent="python-requests/2.32.3")
        for run in range(6)
    ]

    assert _findings(plans, laptop, *runs) == []


def _sessions(key, days, hours, ip, user_agent, requests=6):
    """One session a day at each of ``hours`` (UTC), ``requests`` requests a minute apart."""
    times = [T0 + day * DAY + hour * HOUR + minute * 60.0 for day in days for hour in hours for minute in range(requests)]
    return events(key, times, ip=ip, user_agent=user_agent)


def _new_device_findings(findings):
    return [finding for finding in findings if finding.evidence["new_device"] == 1]


def test_friend_new_device_found_within_minutes(plans):
    # The owner has used the key from home for three days. On day 3 at 15:00 a friend
    # in the same country starts using it from their own line and client.
    owner = _sessions("shared", range(5), (9, 13, 20), "198.51.100.7", "Mozilla/5.0 (Windows NT 10.0) Firefox/133.0")
    friend = _sessions("shared", range(3, 5), (15,), "203.0.113.40", "Mozilla/5.0 (Macintosh) Safari/605.1.15")
    onset = T0 + 3 * DAY + 15 * HOUR

    findings = _findings(plans, owner, friend)
    found = _new_device_findings(findings)

    assert found
    assert found[0].detected_at >= onset
    assert found[0].detected_at - onset <= 2 * 60
    assert found[0].evidence["device_components"] == 2
    assert found[0].impact == 2


def test_phone_and_laptop_taking_turns_no_new_device(plans):
    # One person takes turns every session between a phone on mobile data and a
    # laptop at home, from the first day on. Each device keeps its own network and client.
    phone_hours, laptop_hours = (8, 12, 18), (10, 15, 21)
    phone = [
        events("person", T0 + day * DAY + hour * HOUR + np.arange(5) * 60.0,
               ip=f"100.64.{(day * 3 + index) % 4}.{day * 10 + index + 2}", user_agent="ChatApp/4.2 (iPhone; iOS 18.1)")
        for day in range(5) for index, hour in enumerate(phone_hours)
    ]
    laptop = _sessions("person", range(5), laptop_hours, "198.51.100.7", "Mozilla/5.0 (X11; Linux) Firefox/133.0")

    findings = _findings(plans, *phone, laptop)

    assert _new_device_findings(findings) == []
    assert findings == []


def test_new_device_needs_an_established_one(plans):
    # Two devices on two lines in one country, both used from the key's first hours: no new device.
    first = _sessions("young", range(3), (9, 14), "198.51.100.7", "Mozilla/5.0 (Windows NT 10.0) Firefox/133.0")
    second = _sessions("young", range(3), (11, 19), "203.0.113.40", "Mozilla/5.0 (Macintosh) Safari/605.1.15")

    assert _new_device_findings(_findings(plans, first, second)) == []


def test_known_client_on_new_network_not_new_device(plans):
    # The owner's laptop at a café, and a new browser on the known home line, are the owner's devices.
    home = _sessions("owner", range(4), (9, 20), "198.51.100.7", "Mozilla/5.0 (Windows NT 10.0) Firefox/133.0")
    cafe = _sessions("owner", (3,), (14,), "203.0.113.40", "Mozilla/5.0 (Windows NT 10.0) Firefox/133.0")
    new_browser = _sessions("owner", (3,), (16,), "198.51.100.7", "Mozilla/5.0 (Windows NT 10.0) Chrome/131.0")

    assert _new_device_findings(_findings(plans, home, cafe, new_browser)) == []


def test_friend_after_idle_owner_is_new(plans):
    # The owner used the key on days 0 to 2, skipped day 3, and a friend starts on day 4:
    # the owner's device is outside the 24-hour graph but still the key's established one.
    owner = _sessions("idle", range(3), (9, 20), "198.51.100.7", "Mozilla/5.0 (Windows NT 10.0) Firefox/133.0")
    friend = _sessions("idle", (4,), (15,), "203.0.113.40", "Mozilla/5.0 (Macintosh) Safari/605.1.15")
    onset = T0 + 4 * DAY + 15 * HOUR

    found = _new_device_findings(_findings(plans, owner, friend))

    assert found
    assert found[0].detected_at - onset <= 2 * 60
    assert found[0].evidence["device_components"] == 1
    assert found[0].impact == 2


def test_device_after_long_break_not_new(plans):
    # A person back after four idle days on a new laptop and network: the old device is
    # no longer in use, so the new one replaces it rather than joining it.
    old = _sessions("break", range(2), (9, 20), "198.51.100.7", "Mozilla/5.0 (Windows NT 10.0) Firefox/133.0")
    new = _sessions("break", (6,), (10, 16), "203.0.113.40", "Mozilla/5.0 (Macintosh) Safari/605.1.15")

    assert _new_device_findings(_findings(plans, old, new)) == []


def test_phone_laptop_idle_day_not_new(plans):
    # One person's phone and laptop, both used from the first day, then a day off:
    # neither device is new when it comes back.
    phone = _sessions("person", (0, 1, 3, 4), (8, 18), "100.64.3.9", "ChatApp/4.2 (iPhone; iOS 18.1)")
    laptop = _sessions("person", (0, 1, 3, 4), (10, 15), "198.51.100.7", "Mozilla/5.0 (X11; Linux) Firefox/133.0")

    assert _findings(plans, phone, laptop) == []


def test_own_late_device_is_new_device(plans):
    # Known limit: a person's phone used for the first time on day 3, on mobile data,
    # looks the same as a friend's device, so policy only reviews it.
    laptop = _sessions("late", range(4), (9, 20), "198.51.100.7", "Mozilla/5.0 (X11; Linux) Firefox/133.0")
    phone = _sessions("late", (3,), (12,), "100.64.3.9", "ChatApp/4.2 (iPhone; iOS 18.1)")

    found = _new_device_findings(_findings(plans, laptop, phone))

    assert found
    assert found[0].score <= 75
    assert found[0].impact == 2
