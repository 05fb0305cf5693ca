"""Tests for the traffic simulator: determinism, the event contract, and the behaviour of each kind."""

from __future__ import annotations

import gzip
import re
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd
import pytest

from detector.events import DEFAULTS, IMAGE_ENDPOINTS, REQUIRED_FIELDS
from detector.simulate import simulate_traffic
from detector.simulate.network import subnet_of
from detector.simulate.population import KINDS, count_kinds

START = datetime(2026, 11, 23, tzinfo=UTC)
WINDOW_START = START.timestamp()
DAYS = 7
WINDOW_END = WINDOW_START + DAYS * 86400.0
HOUR = 3600.0

ABUSE_KINDS = {kind.name for kind in KINDS if kind.is_abuse}
BENIGN_KINDS = {kind.name for kind in KINDS if not kind.is_abuse}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("simulation")
    result = simulate_traffic(out_dir, keys=500, days=DAYS, seed=11, start=START)
    lines = result.events_path.read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    labels = pd.read_csv(result.labels_path, dtype=str, keep_default_na=False)
    return result, records, labels


@pytest.fixture(scope="module")
def events(simulation):
    _, records, labels = simulation
    frame = pd.DataFrame(records)
    frame["t"] = (pd.to_datetime(frame["ts"]) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    frame = frame.merge(labels[["key_id", "kind", "onset"]], on="key_id", how="left")
    frame["onset_t"] = (pd.to_datetime(frame["onset"].replace("", None)) - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return frame


def keys_of(events: pd.DataFrame, kind: str):
    """Yield (key_id, events of that key in time order) for every key of ``kind``."""
    for key_id, rows in events[events["kind"] == kind].groupby("key_id"):
        yield key_id, rows.sort_values("t", kind="stable")


def after_onset(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["t"] >= rows["onset_t"]]


# --- determinism ------------------------------------------------------------


def test_same_seed_same_bytes(tmp_path):
    first = simulate_traffic(tmp_path / "a", keys=60, days=2, seed=5, start=START)
    second = simulate_traffic(tmp_path / "b", keys=60, days=2, seed=5, start=START)
    assert first.events_path.read_bytes() == second.events_path.read_bytes()
    assert first.labels_path.read_bytes() == second.labels_path.read_bytes()


def test_different_seed_different_bytes(tmp_path):
    first = simulate_traffic(tmp_path / "a", keys=60, days=2, seed=5, start=START)
    second = simulate_traffic(tmp_path / "b", keys=60, days=2, seed=6, start=START)
    assert first.events_path.read_bytes() != second.events_path.read_bytes()


def test_gzip_output_matches_plain(tmp_path):
    plain = simulate_traffic(tmp_path / "plain", keys=60, days=2, seed=5, start=START)
    packed = simulate_traffic(tmp_path / "packed", keys=60, days=2, seed=5, start=START, compress=True)
    again = simulate_traffic(tmp_path / "again", keys=60, days=2, seed=5, start=START, compress=True)
    assert packed.events_path.name == "events.jsonl.gz"
    assert gzip.decompress(packed.events_path.read_bytes()) == plain.events_path.read_bytes()
    assert packed.events_path.read_bytes() == again.events_path.read_bytes()


# --- population ---------------------------------------------------------------


def test_every_kind_present_at_500(simulation):
    result, _, labels = simulation
    counts = labels["kind"].value_counts()
    assert set(counts.index) == ABUSE_KINDS | BENIGN_KINDS
    for kind in ABUSE_KINDS:
        assert counts[kind] >= 8, kind
    assert result.kinds == counts.to_dict()


def test_abuse_share_about_15_percent(simulation):
    _, _, labels = simulation
    share = (labels["is_abuse"] == "1").mean()
    assert 0.13 <= share <= 0.17


@pytest.mark.parametrize("keys", [50, 51, 77, 120])
def test_small_population_has_every_abuse_kind(keys):
    counts = count_kinds(keys)
    assert sum(counts.values()) == keys
    for kind in ABUSE_KINDS:
        assert counts[kind] >= 1, kind


def test_some_accounts_own_several_keys(simulation):
    _, _, labels = simulation
    keys_per_account = labels.groupby("account_id").size()
    assert keys_per_account.max() in (2, 3)
    assert (keys_per_account == 1).mean() > 0.6


def test_one_day_small_run_labels_every_abuse_kind(tmp_path):
    result = simulate_traffic(tmp_path, keys=50, days=1, seed=3, start=START)
    labels = pd.read_csv(result.labels_path, dtype=str, keep_default_na=False)
    abuse = labels[labels["is_abuse"] == "1"]
    assert set(abuse["kind"]) == ABUSE_KINDS
    assert (abuse["onset"] != "").all()


# --- the event contract ---------------------------------------------------------


def test_events_have_contract_fields(simulation):
    _, records, _ = simulation
    expected = set(REQUIRED_FIELDS) | set(DEFAULTS) - {"subject_type"}
    for record in records[:2000]:
        assert set(record) == expected


def test_event_count_matches_result(simulation):
    result, records, labels = simulation
    assert result.events == len(records)
    assert result.keys == 500
    assert len(labels) == 500


def test_timestamps_sorted_rfc3339_in_window(events):
    assert events["ts"].map(lambda value: bool(TIMESTAMP.match(value))).all()
    assert events["t"].is_monotonic_increasing
    assert events["t"].min() >= WINDOW_START
    assert events["t"].max() < WINDOW_END


def test_request_ids_unique(events):
    assert events["request_id"].is_unique
    assert events["request_id"].str.startswith("sim-11-").all()


def test_numeric_fields_in_range(events):
    assert (events["cost"] >= 0).all()
    assert (events["prompt_tokens"] >= 0).all()
    assert (events["completion_tokens"] >= 0).all()
    assert (events["images"] >= 0).all()
    assert (events["latency_ms"] > 0).all()
    assert set(events["status"]) <= {200, 429, 500}


def test_benign_requests_mostly_succeed(events):
    benign = events[events["kind"].isin(BENIGN_KINDS)]
    assert (benign["status"] == 200).mean() > 0.98
    assert (benign["status"] == 429).any()
    assert (benign["status"] == 500).any()


def test_failed_requests_cost_nothing(events):
    failed = events[events["status"] != 200]
    assert len(failed) > 0
    assert (failed["cost"] == 0).all()


def test_text_fields_well_formed(events, plans):
    assert events["key_id"].str.fullmatch(r"key-\d{6}").all()
    assert events["account_id"].str.fullmatch(r"acct-\d{6}").all()
    assert events["country"].str.fullmatch(r"[A-Z]{2}").all()
    assert events["prompt_hash"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert set(events["plan"]) <= set(plans.plans) - {"default"}
    assert (events["user_agent"] != "").all()
    assert events["stream"].map(type).eq(bool).all()


def test_images_only_on_image_endpoints(events):
    on_image_endpoint = events["endpoint"].isin(IMAGE_ENDPOINTS)
    assert (events.loc[~on_image_endpoint, "images"] == 0).all()
    assert events.loc[on_image_endpoint, "images"].sum() > 0


def test_most_human_prompts_distinct(events):
    human = events[events["kind"].isin(["normal", "mobile", "heavy_user"])]
    distinct_share = human["prompt_hash"].nunique() / len(human)
    assert 0.8 < distinct_share < 1.0


# --- labels ---------------------------------------------------------------------


def test_abuse_labels_have_reason_and_onset(simulation):
    _, _, labels = simulation
    abuse = labels[labels["is_abuse"] == "1"]
    benign = labels[labels["is_abuse"] == "0"]
    assert set(abuse["kind"]) == ABUSE_KINDS
    assert (abuse["onset"].str.match(TIMESTAMP)).all()
    assert (abuse["expected_reason"] != "").all()
    assert (benign["onset"] == "").all()
    assert (benign["expected_reason"] == "").all()


def test_expected_reasons_per_kind(simulation):
    _, _, labels = simulation
    reasons = labels[labels["is_abuse"] == "1"].groupby("kind")["expected_reason"].unique()
    assert {kind: list(values) for kind, values in reasons.items()} == {
        "resold_key": ["key_sharing"],
        "shared_key": ["key_sharing"],
        "bot": ["automation"],
        "concurrency_flood": ["automation"],
        "runaway_loop": ["automation"],
        "cost_spike": ["abnormal_cost"],
        "image_overuse": ["image_quota"],
    }


def test_onset_is_an_event_of_the_key(events):
    abuse = events[events["kind"].isin(ABUSE_KINDS)]
    for key_id, rows in abuse.groupby("key_id"):
        assert (rows["ts"] == rows["onset"].iloc[0]).any(), key_id


# --- benign traps -------------------------------------------------------------------


def test_benign_keys_stay_within_plan(events, plans):
    benign = events[events["kind"].isin(BENIGN_KINDS)]
    for key_id, rows in benign.groupby("key_id"):
        plan = plans.plans[rows["plan"].iloc[0]]
        t = rows["t"].to_numpy()
        spent = np.concatenate([[0.0], np.cumsum(rows["cost"].to_numpy())])
        position = np.arange(t.size)
        hour_start = np.searchsorted(t, t - HOUR, side="right")
        day_start = np.searchsorted(t, t - 86400.0, side="right")
        assert (position - hour_start + 1).max() <= plan.expected_rph, key_id
        assert (spent[position + 1] - spent[hour_start]).max() <= plan.hourly_budget, key_id
        assert (spent[position + 1] - spent[day_start]).max() <= plan.daily_budget, key_id


def test_heavy_user_near_budget(events, plans):
    for key_id, rows in keys_of(events, "heavy_user"):
        plan = plans.plans[rows["plan"].iloc[0]]
        busiest_day = rows.groupby(rows["t"] // 86400.0)["cost"].sum().max()
        assert busiest_day >= 0.3 * plan.daily_budget, key_id


def test_team_nat_uses_one_address(events):
    for key_id, rows in keys_of(events, "team_nat"):
        assert rows["ip"].nunique() == 1, key_id
        assert rows["user_agent"].nunique() >= 2, key_id


def test_mobile_stays_in_one_country_and_carrier(events):
    for key_id, rows in keys_of(events, "mobile"):
        assert rows["country"].nunique() == 1, key_id
        assert rows["user_agent"].nunique() == 1, key_id
        subnets = rows["ip"].map(subnet_of)
        carrier_blocks = {subnet.rsplit(".", 1)[0] for subnet in subnets if ":" not in subnet}
        assert len(carrier_blocks) <= 3, key_id  # one carrier /16, home wifi /16 or /48, and a re-leased home line


def test_traveller_changes_country_once(events):
    for key_id, rows in keys_of(events, "traveller"):
        countries = rows["country"].to_numpy()
        changes = int((countries[1:] != countries[:-1]).sum())
        assert changes == 1, key_id


def test_cron_job_fires_hourly(events):
    for key_id, rows in keys_of(events, "cron_job"):
        t = rows["t"].to_numpy()
        hour = np.rint(t / HOUR)
        first_of_run = np.concatenate([[True], hour[1:] != hour[:-1]])
        offsets = t[first_of_run] - hour[first_of_run] * HOUR
        # The first run may fall a few seconds before the window opens.
        assert first_of_run.sum() >= DAYS * 24 - 1, key_id
        assert np.abs(offsets).max() <= 5.0, key_id
        assert rows["prompt_hash"].nunique() <= 4, key_id


def test_image_light_within_weekly_window(events):
    for key_id, rows in keys_of(events, "image_light"):
        assert rows["plan"].iloc[0] in ("document", "text", "coding", "openai-stable")
        assert 1 <= rows["images"].sum() <= 8, key_id


def test_image_package_makes_hundreds(events):
    for key_id, rows in keys_of(events, "image_package"):
        assert rows["plan"].iloc[0] in ("image-basic", "image-pro")
        assert rows["images"].sum() >= 60, key_id


def test_new_key_starts_mid_week(events):
    for key_id, rows in keys_of(events, "new_key"):
        assert rows["t"].min() >= WINDOW_START + 0.3 * DAYS * 86400.0, key_id


def test_steady_growth_has_no_jump(events):
    for key_id, rows in keys_of(events, "steady_growth"):
        daily = rows.groupby((rows["t"] - WINDOW_START) // 86400.0)["cost"].sum().to_numpy()
        growth = daily[1:] / daily[:-1]
        assert 1.1 <= np.median(growth) <= 1.6, key_id
        assert growth.max() < 2.5, key_id


# --- abuse -----------------------------------------------------------------------


def test_image_overuse_beyond_window(events):
    for key_id, rows in keys_of(events, "image_overuse"):
        assert rows["plan"].iloc[0] in ("document", "text", "coding", "openai-stable")
        assert rows["images"].sum() > 10, key_id
        first_image = rows.loc[rows["images"] > 0, "t"].min()
        assert first_image == rows["onset_t"].iloc[0], key_id


def test_resold_key_many_networks_after_onset(events):
    for key_id, rows in keys_of(events, "resold_key"):
        resold = after_onset(rows)
        assert resold["ip"].map(subnet_of).nunique() >= 10, key_id
        assert resold["country"].nunique() >= 3, key_id
        assert resold["user_agent"].nunique() >= 5, key_id


def test_shared_key_used_from_several_networks(events):
    for key_id, rows in keys_of(events, "shared_key"):
        shared = after_onset(rows)
        assert shared["ip"].map(subnet_of).nunique() >= 3, key_id


def test_bot_runs_at_machine_cadence(events, plans):
    for key_id, rows in keys_of(events, "bot"):
        script = after_onset(rows)
        script = script[script["ip"] == script["ip"].mode().iloc[0]]
        gaps = np.diff(script["t"].to_numpy())
        assert 1.5 <= np.median(gaps) <= 10.5, key_id
        assert np.std(gaps) / np.mean(gaps) < 0.2, key_id
        hourly_rate = HOUR / np.median(gaps)
        assert hourly_rate >= 2.5 * plans.plans[rows["plan"].iloc[0]].expected_rph, key_id


def test_concurrency_flood_bursts(events):
    for key_id, rows in keys_of(events, "concurrency_flood"):
        per_minute = after_onset(rows).groupby(rows["t"] // 60.0).size()
        per_second = after_onset(rows).groupby(rows["t"] // 1.0).size()
        assert per_minute.max() >= 100, key_id
        assert per_second.max() >= 20, key_id


def test_runaway_loop_repeats_one_prompt(events):
    for key_id, rows in keys_of(events, "runaway_loop"):
        loop = after_onset(rows)
        loop = loop[loop["prompt_hash"] == loop["prompt_hash"].mode().iloc[0]]
        gaps = np.diff(loop["t"].to_numpy())
        assert len(loop) >= 1000, key_id
        assert 0.9 <= np.median(gaps) <= 3.1, key_id


def test_cost_spike_jumps_far_above_owner(events, plans):
    for key_id, rows in keys_of(events, "cost_spike"):
        onset = rows["onset_t"].iloc[0]
        before = rows[rows["t"] < onset]
        spike = rows[(rows["t"] >= onset) & (rows["t"] < onset + HOUR)]
        owner_hour = before.groupby(before["t"] // HOUR)["cost"].sum().mean() if len(before) else 0.0
        assert spike["cost"].sum() >= 10 * owner_hour, key_id
        assert spike["cost"].sum() >= plans.plans[rows["plan"].iloc[0]].hourly_budget, key_id


# --- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "days", "seed", "start"),
    [
        (0, 7, 1, START),
        (10, 0, 1, START),
        (10, 7, -1, START),
        (10, 7, 1, datetime(2026, 11, 23)),
    ],
)
def test_invalid_arguments_raise(tmp_path, keys, days, seed, start):
    with pytest.raises(ValueError):
        simulate_traffic(tmp_path, keys=keys, days=days, seed=seed, start=start)


def test_phone_and_laptop_two_devices_one_country(events):
    for key_id, rows in keys_of(events, "phone_and_laptop"):
        assert rows["country"].nunique() == 1, key_id
        assert rows["user_agent"].nunique() == 2, key_id
        assert rows["ip"].map(subnet_of).nunique() >= 2, key_id


def test_ci_developer_runs_from_fresh_cloud_runners(events):
    for key_id, rows in keys_of(events, "ci_developer"):
        by_agent = rows.groupby("user_agent")["ip"].nunique()
        assert len(by_agent) == 2, key_id
        assert by_agent.max() >= 2, key_id  # the runner client, one address per run
