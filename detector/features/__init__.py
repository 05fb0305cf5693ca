"""Features: the per-event and per-window quantities detectors read."""

from detector.features.network import address_gaps
from detector.features.prepare import PreparedEvents, prepare_events

__all__ = ["PreparedEvents", "address_gaps", "prepare_events"]
