"""The state worker under faults: hostile checkpoints and entries, lost Redis data, mixed settings."""

from __future__ import annotations

import pytest

from detector.model_registry import load_model
from detector.pipeline import default_detectors
from workers.checkpoint import MAGIC, CheckpointError, load_state


@pytest.fixture(scope="module")
def detectors():
    return default_detectors(load_model())


def _short(text: str) -> bytes:
    encoded = text.encode()
    return b"\x8c" + bytes([len(encoded)]) + encoded


def _call_pickle(module: str, name: str, *arguments: str) -> bytes:
    """Return a protocol-4 pickle that calls ``module``'s attribute ``name`` (dotted) with one list of strings."""
    items = b"".join(_short(argument) for argument in arguments)
    return b"\x80\x04" + _short(module) + _short(name) + b"\x93" + b"](" + items + b"e\x85R."


def test_checkpoint_cannot_reach_a_class_through_dotted_name(plans, detectors, tmp_path):
    marker = tmp_path / "ran"
    # subprocess.Popen is a class, reached from detector.state.scorer through its imports.
    data = MAGIC + bytes([1]) + _call_pickle(
        "detector.state.scorer", "pd._config.localization.subprocess.Popen", "touch", str(marker)
    )

    with pytest.raises(CheckpointError, match="names the global detector.state.scorer.pd"):
        load_state(data, detectors, plans)
    assert not marker.exists()
