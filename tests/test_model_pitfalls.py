"""Known pitfalls of anomaly models and statistical thresholds, one test each."""

import warnings

import numpy as np
import pandas as pd
import pytest

from detector.calibration import calibrate_thresholds
from detector.detectors import AbnormalCostDetector, AnomalyDetector
from detector.features import prepare_events
from detector.features.keyday import KEYDAY_FEATURES, keyday_features
from detector.pipeline import default_detectors, score_events
from detector.readers import read_events
from detector.simulate import simulate_traffic
from detector.thresholds import load_thresholds
from detector.training import build_training_set, fit_model
from tests.factories import DAY, HOUR, events, frame

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def benign_week(tmp_path_factory):
    """A simulated week of 300 keys with the abusive keys removed: clean history."""
    simulation = simulate_traffic(tmp_path_factory.mktemp("benign"), keys=300, days=7, seed=5)
    labels = pd.read_csv(simulation.labels_path, dtype=str, keep_default_na=False)
    abusive = set(labels.loc[labels["is_abuse"] == "1", "key_id"])
    history = read_events([simulation.events_path]).frame
    return history[~history["key_id"].isin(abusive)].reset_index(drop=True)


@pytest.fixture(scope="module")
def model(benign_week, plans):
    return fit_model(build_training_set(benign_week, plans, set()), version="pitfalls")


def _office_day(key, day_start, count=30, **fields):
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    times = day_start + np.sort(rng.uniform(9 * HOUR, 17 * HOUR, count))
    return events(key, times, **fields)


def _closed(part, key):
    """Add one request two days later, so the day in ``part`` counts as closed."""
    return frame(part, events(key, [float(part["ts"].max()) + 2 * DAY]))


def test_constant_feature_extreme_value_flagged(benign_week, plans, model):
    text_only = benign_week[benign_week["images"] == 0].reset_index(drop=True)
    text_model = fit_model(build_training_set(text_only, plans, set()), version="text-only")
    training_images = keyday_features(prepare_events(text_only, plans))["log_images"]
    assert training_images.max() == 0.0

    day = (float(text_only["ts"].max()) // DAY + 1) * DAY
    painter = _closed(_office_day("painter", day, images=40, endpoint="/v1/images/generations"), "painter")
    findings = AnomalyDetector(text_model).detect(prepare_events(painter, plans))

    assert [finding.subject for finding in findings] == ["painter"]
    assert findings[0].evidence["anomaly_score"] > text_model.threshold


def test_new_key_identical_requests_not_anomalous(benign_week, plans, model, policy):
    day = (float(benign_week["ts"].max()) // DAY + 1) * DAY
    newcomer = _closed(_office_day("newcomer", day, count=25, prompt_hash="hello-world"), "newcomer")
    prepared = prepare_events(newcomer, plans)
    assert keyday_features(prepared)["top_prompt_share"].iloc[0] == 1.0

    assert AnomalyDetector(model).detect(prepared) == []
    result = score_events(newcomer, plans=plans, policy=policy, detectors=default_detectors(model))
    assert result.decisions == []


def test_contamination_forces_no_reviews(tmp_path, plans, policy):
    simulation = simulate_traffic(tmp_path, keys=1200, days=3, seed=8)
    labels = pd.read_csv(simulation.labels_path, dtype=str, keep_default_na=False)
    clean_keys = labels.loc[labels["is_abuse"] == "0", "key_id"].head(1000)
    history = read_events([simulation.events_path]).frame
    history = history[history["key_id"].isin(set(clean_keys))].reset_index(drop=True)
    assert history["key_id"].nunique() == 1000

    training = build_training_set(history, plans, set())
    contaminated = fit_model(training, version="contaminated", contamination=0.1)
    # scikit-learn's own labels put a tenth of the clean key-days out ...
    assert (contaminated.estimator.predict(training.features) == -1).mean() > 0.05
    # ... but decisions come from the benign-quantile threshold and the policy.
    anomaly_only = score_events(history, plans=plans, policy=policy, detectors=[AnomalyDetector(contaminated)])
    every_detector = score_events(history, plans=plans, policy=policy, detectors=default_detectors(contaminated))
    assert anomaly_only.decisions == []
    # The other detectors review a few look-alikes of key sharing (a CI region
    # abroad, a traveller switching devices) and act on no clean key.
    assert [decision for decision in every_detector.decisions if "anomaly" in decision.reasons] == []
    assert {decision.action for decision in every_detector.decisions} <= {"review"}
    assert {reason for decision in every_detector.decisions for reason in decision.reasons} <= {"key_sharing"}
    assert len({decision.subject for decision in every_detector.decisions}) <= 20  # the 2% review budget


def test_steady_growth_not_a_spike(benign_week, plans, model, policy):
    start = (float(benign_week["ts"].max()) // DAY + 1) * DAY
    days = [
        _office_day("grower", start + day * DAY, count=40, cost=0.6 * 1.15**day / 40) for day in range(14)
    ]
    grower = frame(*days)
    detector = AbnormalCostDetector(**load_thresholds()["abnormal_cost"])

    assert detector.detect(prepare_events(grower, plans)) == []
    result = score_events(grower, plans=plans, policy=policy, detectors=default_detectors(model))
    assert result.decisions == []


def test_tenfold_day_visible_to_model(benign_week, plans, model):
    last_day = float(benign_week["ts"].max()) // DAY * DAY - DAY
    day = benign_week[(benign_week["ts"] >= last_day) & (benign_week["ts"] < last_day + DAY)].reset_index(drop=True)
    closer = day.groupby("key_id", as_index=False).first().assign(ts=last_day + 2 * DAY - 1)
    ordinary = pd.concat([day, closer], ignore_index=True)
    expensive = pd.concat([day.assign(cost=day["cost"] * 10), closer], ignore_index=True)

    def scored(events_frame):
        rows = keyday_features(prepare_events(events_frame, plans))
        rows = rows[rows["day"] == int(last_day // DAY)]
        return rows, model.anomaly_scores(rows[list(KEYDAY_FEATURES)].to_numpy(dtype=np.float64))

    ordinary_rows, ordinary_scores = scored(ordinary)
    expensive_rows, expensive_scores = scored(expensive)
    over_budget = expensive_rows["cost_vs_budget"].to_numpy() > 1.0

    # Features are absolute, not ranked within the day, so the whole day's rise stays in them.
    assert np.allclose(expensive_rows["cost_vs_budget"].to_numpy(), 10 * ordinary_rows["cost_vs_budget"].to_numpy())
    assert np.median(expensive_scores) > np.median(ordinary_scores)
    assert (ordinary_scores > model.threshold).mean() <= 0.05
    assert (expensive_scores > model.threshold).mean() >= 0.10
    assert over_budget.sum() >= 10
    assert (expensive_scores[over_budget] > model.threshold).mean() >= 0.9


def test_flat_series_with_jump_no_division_by_zero(plans, policy):
    spends = [10, 10, 10, 10, 10, 10, 10, 100]
    start = 1795392000.0
    hourly = events("flat-hours", [start + hour * HOUR + 60 for hour in range(8)], cost=spends, plan="coding")
    daily = events("flat-days", [start + day * DAY + 9 * HOUR for day in range(8)], cost=spends, plan="coding")
    history = frame(hourly, daily, events("flat-days", [start + 9 * DAY]))

    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        training = build_training_set(history, plans, set())
        model = fit_model(training, version="flat")
        calibrated, notes = calibrate_thresholds(training.prepared, np.ones(len(training.prepared.subjects), bool), load_thresholds())
        result = score_events(history, plans=plans, policy=policy, detectors=default_detectors(model))
        scores = model.anomaly_scores(training.features)

    assert np.isfinite(scores).all()
    assert calibrated["abnormal_cost"]["min_peak_ratio"] >= 3.0
    assert any("abnormal_cost" in decision.reasons for decision in result.decisions)
