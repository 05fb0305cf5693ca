"""Features: the per-event and per-window quantities detectors read."""

from detector.features.prepare import PreparedEvents, prepare_events

__all__ = ["PreparedEvents", "prepare_events"]
