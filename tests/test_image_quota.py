import numpy as np

from detector.detectors import ImageQuotaDetector
from detector.features import prepare_events
from tests.factories import DAY, T0, events, frame

IMAGE = "/v1/images/generations"


def _findings(plans, *parts):
    return ImageQuotaDetector().detect(prepare_events(frame(*parts), plans))


def test_eleventh_image_in_a_week_on_text_plan(plans):
    times = T0 + np.arange(11) * 3 * 3600.0

    findings = _findings(plans, events("texter", times, images=1, endpoint=IMAGE))

    assert len(findings) == 1
    assert findings[0].detected_at == times[10]
    assert findings[0].evidence["images_7d"] == 11


def test_ten_images_is_within_window(plans):
    times = T0 + np.arange(10) * 3 * 3600.0

    assert _findings(plans, events("texter", times, images=1, endpoint=IMAGE)) == []


def test_window_rolls_after_seven_days(plans):
    first_week = T0 + np.arange(10) * 3600.0
    second_week = T0 + 8 * DAY + np.arange(10) * 3600.0

    assert _findings(plans, events("weekly", np.concatenate([first_week, second_week]), images=1, endpoint=IMAGE)) == []


def test_image_package_is_entitled(plans):
    times = T0 + np.arange(300) * 600.0

    assert _findings(plans, events("artist", times, plan="image-pro", images=1, endpoint=IMAGE)) == []


def test_unknown_plan_falls_back_to_default_text_window(plans):
    times = T0 + np.arange(12) * 3600.0

    findings = _findings(plans, events("mystery", times, plan="legacy-gold", images=1, endpoint=IMAGE))

    assert findings
    assert findings[0].evidence["weekly_images"] == 10
