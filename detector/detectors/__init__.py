"""Detectors: each turns prepared events into findings for one reason code."""

from detector.detectors.anomaly import AnomalyDetector
from detector.detectors.automation import AutomationDetector
from detector.detectors.base import Detector, Finding
from detector.detectors.cost import AbnormalCostDetector
from detector.detectors.image_quota import ImageQuotaDetector
from detector.detectors.sharing import KeySharingDetector

__all__ = [
    "AbnormalCostDetector",
    "AnomalyDetector",
    "AutomationDetector",
    "Detector",
    "Finding",
    "ImageQuotaDetector",
    "KeySharingDetector",
]
