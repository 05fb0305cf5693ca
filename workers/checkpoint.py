"""A partition's in-memory state as bytes, and back, for the state worker's checkpoints in Redis.

A checkpoint is a 5-byte header (``FUCP`` and a format version) followed
by a pickle (protocol 5) of a ``PartitionState``. Detectors, their models
and the plan catalogue are not in the bytes: the pickler writes a
persistent id in their place (a detector's position, ``plans``), and
loading puts back the worker's current objects. So a checkpoint stays
small, and a model that the worker no longer uses cannot come back from it.

Loading uses ``RestrictedUnpickler``, which resolves only the globals that
states contain: classes under ``detector.state``, builtin containers, and
the reconstructors of numpy arrays and of the small pandas and Arrow
objects some states keep. A checkpoint that names any other global, such
as ``os.system``, is rejected with ``CheckpointError``. Redis is trusted
less than the worker's own code, and a pickle can call any global it names.
"""

from __future__ import annotations

import io
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from detector.detectors import Detector
from detector.plans import PlanCatalogue
from detector.state.scorer import StateScorer
from detector.state.tail import EventTail
from workers.repeats import RepeatedRequests

logger = logging.getLogger(__name__)

MAGIC = b"FUCP"
FORMAT_VERSION = 1

# Globals outside detector.state that checkpoints contain (numpy 2, pandas 3, pyarrow 26).
_ALLOWED_GLOBALS = frozenset({
    ("builtins", "slice"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "dict"),
    ("builtins", "list"), ("builtins", "tuple"), ("builtins", "complex"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("collections", "deque"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("pandas", "DataFrame"), ("pandas", "Index"), ("pandas", "RangeIndex"), ("pandas", "StringDtype"),
    ("pandas._libs.internals", "_unpickle_block"), ("pandas.arrays", "ArrowStringArray"),
    ("pandas.core.indexes.base", "_new_Index"), ("pandas.core.internals.managers", "BlockManager"),
    ("pyarrow.lib", "_restore_array"), ("pyarrow.lib", "py_buffer"), ("pyarrow.lib", "type_for_alias"),
    ("workers.checkpoint", "PartitionState"), ("workers.repeats", "RepeatedRequests"),
})
_STATE_PACKAGE = "detector.state"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: another format, or a global outside the allowlist."""


@dataclass(slots=True)
class PartitionState:
    """The state a worker keeps in memory for one partition it owns, and writes as its checkpoint.

    ``last_id`` is the stream id of the last entry the state contains, or
    None before the first. ``newest`` is the partition's newest event time
    (epoch seconds). ``tail`` holds the events read and not applied yet, so
    a new owner applies them as this one would have.
    ``partitions`` is the partition count the subjects were split by, or
    None where unknown.
    """

    scorer: StateScorer
    repeats: RepeatedRequests
    last_id: bytes | None = None
    newest: float | None = None
    partitions: int | None = None
    # Events read and not yet applied to ``scorer``, held until no late event can come before them.
    tail: EventTail = field(default_factory=EventTail)
    # Not in the checkpoint: entries read since the last one, to acknowledge once a checkpoint contains them.
    unacknowledged: list[bytes] = field(default_factory=list)

    def __getstate__(self):
        return {
            "scorer": self.scorer, "repeats": self.repeats, "last_id": self.last_id, "newest": self.newest,
            "partitions": self.partitions, "tail": self.tail,
        }

    def __setstate__(self, values) -> None:
        self.scorer = values["scorer"]
        self.repeats = values["repeats"]
        self.last_id = values["last_id"]
        self.newest = values["newest"]
        self.partitions = values.get("partitions")
        # A checkpoint written before tails existed has applied every event it read.
        tail = values.get("tail")
        self.tail = EventTail(0.0) if tail is None else tail
        self.unacknowledged = []


class _Pickler(pickle.Pickler):
    def __init__(self, file, references: dict[int, tuple]) -> None:
        super().__init__(file, protocol=5)
        self._references = references

    def persistent_id(self, obj):
        return self._references.get(id(obj))


class RestrictedUnpickler(pickle.Unpickler):
    """Load a checkpoint's pickle, resolving only allowlisted globals and the worker's detectors and plans."""

    def __init__(self, file, objects: dict[tuple, object]) -> None:
        super().__init__(file)
        self._objects = objects

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        # Pickle protocol 4 resolves a dotted name attribute by attribute, so it would reach any class that
        # detector.state's imports reach, such as subprocess.Popen. Only a class defined there is accepted.
        if _in_state_package(module) and "." not in name:
            found = super().find_class(module, name)
            if isinstance(found, type) and _in_state_package(found.__module__):
                return found
        raise CheckpointError(
            f"checkpoint names the global {module}.{name}, which no partition state contains; "
            "delete the checkpoint key if it was not written by a fairuse worker"
        )

    def persistent_load(self, pid):
        try:
            return self._objects[tuple(pid)]
        except (KeyError, TypeError):
            raise CheckpointError(
                f"checkpoint refers to {pid!r}, which this worker does not have; "
                "it was written with other detectors and must be dropped"
            ) from None


def _in_state_package(module: str) -> bool:
    return module == _STATE_PACKAGE or module.startswith(_STATE_PACKAGE + ".")


def external_objects(detectors: Sequence[Detector], plans: PlanCatalogue) -> dict[tuple, object]:
    """Return the objects kept out of checkpoints by their persistent id: detectors, their models, the plans."""
    objects: dict[tuple, object] = {("plans",): plans}
    for position, detector in enumerate(detectors):
        objects[("detector", position)] = detector
        model = getattr(detector, "model", None)
        if model is not None:
            objects[("model", position)] = model
    return objects


def dump_state(state: PartitionState, detectors: Sequence[Detector], plans: PlanCatalogue) -> bytes:
    """Serialise ``state`` as a checkpoint, with persistent ids in place of ``detectors``, their models and ``plans``."""
    references = {id(obj): pid for pid, obj in external_objects(detectors, plans).items()}
    buffer = io.BytesIO()
    buffer.write(MAGIC + bytes([FORMAT_VERSION]))
    _Pickler(buffer, references).dump(state)
    return buffer.getvalue()


def load_state(
    data: bytes, detectors: Sequence[Detector], plans: PlanCatalogue, partitions: int | None = None
) -> PartitionState:
    """Read a checkpoint written by ``dump_state``, with the worker's own ``detectors`` and ``plans`` put back.

    A checkpoint written with other detectors, or, where ``partitions`` is
    given, for another partition count, is rejected: its subjects or its
    states would not match this worker's.
    """
    if data[:4] != MAGIC:
        raise CheckpointError("not a fairuse checkpoint: its first bytes are not FUCP")
    if data[4:5] != bytes([FORMAT_VERSION]):
        raise CheckpointError(f"checkpoint of format version {data[4]}, this worker reads version {FORMAT_VERSION}")
    try:
        state = RestrictedUnpickler(io.BytesIO(data[5:]), external_objects(detectors, plans)).load()
    except CheckpointError:
        raise
    except Exception as error:  # a damaged pickle can fail in any reconstructor it reaches
        raise CheckpointError(f"checkpoint is not readable: {type(error).__name__}: {error}") from error
    if not isinstance(state, PartitionState):
        raise CheckpointError(f"checkpoint contains a {type(state).__name__}, not a PartitionState")
    _check_detectors(state, detectors)
    if partitions is not None and state.partitions is not None and state.partitions != partitions:
        raise CheckpointError(
            f"checkpoint of a worker with {state.partitions} partitions, this worker has {partitions}; "
            "its subjects are not this partition's"
        )
    return state


def _check_detectors(state: PartitionState, detectors: Sequence[Detector]) -> None:
    """Reject a state whose scorer runs other detectors than ``detectors`` (e.g. written with --no-model)."""
    written = getattr(state.scorer, "detectors", None)
    if not isinstance(written, list) or [id(detector) for detector in written] != [id(detector) for detector in detectors]:
        names = [type(detector).__name__ for detector in written or ()]
        raise CheckpointError(
            f"checkpoint written with the detectors {names}, this worker runs "
            f"{[type(detector).__name__ for detector in detectors]}"
        )


# Writes a checkpoint only while the lease still names its writer. KEYS: checkpoint, lease.
# ARGV: bytes, TTL in seconds, owner. Returns 1 when written, 0 when another worker owns the partition.
_SAVE_SCRIPT = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


class Checkpoints:
    """Partition checkpoints in Redis: ``{prefix}:state:{partition}``, expiring ``ttl_seconds`` after each write."""

    def __init__(self, client: redis.Redis, *, prefix: str, ttl_seconds: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self._save = client.register_script(_SAVE_SCRIPT)

    def key(self, partition: int) -> str:
        return f"{self.prefix}:state:{partition}"

    def save(self, partition: int, data: bytes, *, lease_key: str, owner: str) -> bool:
        """Write ``data`` as the partition's checkpoint if ``lease_key`` still names ``owner``; return whether it did.

        So a worker that stalled past its lease cannot overwrite the checkpoint of the partition's new owner.
        """
        return bool(self._save(keys=[self.key(partition), lease_key], args=[data, self.ttl_seconds, owner]))

    def load(self, partition: int) -> bytes | None:
        return self.client.get(self.key(partition))
