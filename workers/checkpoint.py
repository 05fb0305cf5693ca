"""A partition's in-memory state as bytes, and back, for the state worker's checkpoints in Redis.

A checkpoint of format version 2 is

- ``FUCP`` and the format version (1 byte),
- the CRC-32 of everything after it (4 bytes, big-endian),
- the length of a JSON header (4 bytes, big-endian) and the header: the
  reasons of the detectors the state was built with, and the anomaly
  model's version (or null),
- a pickle (protocol 5) of a ``PartitionState``.

A checkpoint whose CRC does not match, such as one with a flipped bit, is
rejected with ``CheckpointError`` before it is unpickled. The CRC detects
damage only: a client that can write the key can also write a matching CRC. Version 1
checkpoints (no CRC, no header) still load, so an upgrade keeps the
partitions' state. Loading rejects a checkpoint larger than ``max_bytes``
(``DEFAULT_MAX_BYTES``, 1 GiB) before reading or unpickling it.

Detectors, their models and the plan catalogue are not in the bytes: the
pickler writes a persistent id in their place (a detector's position,
``plans``), and loading puts back the worker's current objects. So a
checkpoint stays small, and a model that the worker no longer uses cannot
come back from it. A checkpoint written on one anomaly model loads in a
worker on another: the anomaly state contains counts that do not depend on the
model (see ``workers.state_models``), and its days are scored from then on
by the loading worker's model. One written with another set of detectors
(``--no-model`` against a model) is rejected.

Loading uses ``RestrictedUnpickler``, which resolves only the globals that
states contain: classes under ``detector.state``, builtin containers, and
the reconstructors of numpy arrays and of the small pandas and Arrow
objects some states keep. A checkpoint that names any other global, such
as ``os.system``, is rejected with ``CheckpointError``. Redis is trusted
less than the worker's own code, and a pickle can call any global it names.
The reconstructors that can build large objects from a few bytes (a
``RangeIndex``, an array of a given shape, a container filled from one)
are called through ``_Bounded``, which rejects a checkpoint once they would
hold more elements in total than ``_ELEMENTS_PER_BYTE`` times its size.
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from detector.detectors import Detector
from detector.plans import PlanCatalogue
from detector.state.scorer import StateScorer
from detector.state.tail import EventTail
from workers.repeats import RepeatedRequests
from workers.state_activity import HourlyActivity

logger = logging.getLogger(__name__)

MAGIC = b"FUCP"
FORMAT_VERSION = 2
# Version 1: MAGIC, the version byte, then the pickle. Still loaded.
_UNCHECKED_VERSION = 1
_CRC_BYTES = 4
# Checkpoints larger than this are rejected before they are read; StateSettings.checkpoint_max_bytes overrides it.
DEFAULT_MAX_BYTES = 1 << 30
# The elements the bounded reconstructors may create per byte of checkpoint, and at least _MIN_ELEMENTS in
# all. A state's arrays, indexes and containers hold at most one element per byte of the pickle, except a
# RangeIndex, whose rows come with at least one byte each in the frame it indexes.
_ELEMENTS_PER_BYTE = 4
_MIN_ELEMENTS = 1 << 20

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
    ("workers.state_activity", "HourlyActivity"),
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
    # The hourly activity rows of the review console's charts (see workers.state_activity).
    activity: HourlyActivity = field(default_factory=HourlyActivity)
    # Events read and not yet applied to ``scorer``, held until no late event can come before them.
    tail: EventTail = field(default_factory=EventTail)
    # The time up to which a clock tick closed the anomaly days, or None (see StateConsumer._follow_clock).
    clock_closed: float | None = None
    # Not in the checkpoint: entries read since the last one, to acknowledge once a checkpoint contains them.
    unacknowledged: list[bytes] = field(default_factory=list)

    def __getstate__(self):
        return {
            "scorer": self.scorer, "repeats": self.repeats, "last_id": self.last_id, "newest": self.newest,
            "partitions": self.partitions, "activity": self.activity, "tail": self.tail,
            "clock_closed": self.clock_closed,
        }

    def __setstate__(self, values) -> None:
        self.scorer = values["scorer"]
        self.repeats = values["repeats"]
        self.last_id = values["last_id"]
        self.newest = values["newest"]
        self.partitions = values.get("partitions")
        # A checkpoint written before the activity was kept starts it empty, so its subjects' past hours are not charted.
        activity = values.get("activity")
        self.activity = HourlyActivity() if activity is None else activity
        # A checkpoint written before tails existed has applied every event it read.
        tail = values.get("tail")
        self.tail = EventTail(0.0) if tail is None else tail
        self.clock_closed = values.get("clock_closed")
        self.unacknowledged = []


class _Pickler(pickle.Pickler):
    def __init__(self, file, references: dict[int, tuple]) -> None:
        super().__init__(file, protocol=5)
        self._references = references

    def persistent_id(self, obj):
        return self._references.get(id(obj))


class RestrictedUnpickler(pickle.Unpickler):
    """Load a checkpoint's pickle, resolving only allowlisted globals and the worker's detectors and plans.

    ``max_elements`` bounds what the reconstructors in ``_BOUNDED`` may
    create in total (see ``_Bounded``); None leaves them unbounded.
    """

    def __init__(self, file, objects: dict[tuple, object], max_elements: int | None = None) -> None:
        super().__init__(file)
        self._objects = objects
        self._allowance = None if max_elements is None else _Allowance(max_elements)

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            found = super().find_class(module, name)
            charge = _BOUNDED.get((module, name))
            if charge is None or self._allowance is None:
                return found
            return _Bounded(found, charge, self._allowance, f"{module}.{name}")
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


class _Allowance:
    """The elements that the bounded reconstructors of one checkpoint may still create."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, elements: int, name: str) -> None:
        self.used += elements
        if self.used > self.limit:
            raise CheckpointError(
                f"checkpoint makes {name} create {elements} elements, more than the {self.limit} that its size "
                "allows in all; it is damaged or was not written by a fairuse worker"
            )


class _Bounded:
    """An allowlisted global that a checkpoint calls, charged to an ``_Allowance`` for the elements it creates.

    With ``charge.before``, the count comes from the arguments and is
    charged before the call. Otherwise the call runs first and the result's
    ``len`` is charged. Arguments that are ``_Bounded`` are unwrapped first,
    because the reconstructors take the classes themselves
    (``_reconstruct(ndarray, ...)``).
    """

    def __init__(self, target, charge: _Charge, allowance: _Allowance, name: str) -> None:
        self.target = target
        self._charge = charge
        self._allowance = allowance
        self._name = name

    def __call__(self, *arguments, **keywords):
        arguments = tuple(argument.target if isinstance(argument, _Bounded) else argument for argument in arguments)
        if self._charge.before:
            self._allowance.charge(self._charge.count(arguments, keywords), self._name)
            return self.target(*arguments, **keywords)
        result = self.target(*arguments, **keywords)
        self._allowance.charge(len(result), self._name)
        return result


@dataclass(frozen=True, slots=True)
class _Charge:
    """A bounded reconstructor's element count: ``count(arguments, keywords)`` before the call, or the result's ``len``."""

    before: bool
    count: Callable[[tuple, dict], int] | None = None


def _array_bytes(arguments: tuple, keywords: dict) -> int:
    """Return the bytes ``numpy.ndarray(shape, dtype, ...)`` would allocate, before it does."""
    shape = arguments[0] if arguments else keywords.get("shape", ())
    dtype = arguments[1] if len(arguments) > 1 else keywords.get("dtype", float)
    dimensions = (shape,) if isinstance(shape, int) else tuple(shape)
    return math.prod(int(dimension) for dimension in dimensions) * np.dtype(dtype).itemsize


def _reconstructed_elements(arguments: tuple, keywords: dict) -> int:
    """Return the elements of ``_reconstruct(subtype, shape, dtype)``; the data comes later, checked by ``__setstate__``."""
    shape = arguments[1] if len(arguments) > 1 else ()
    return math.prod(int(dimension) for dimension in ((shape,) if isinstance(shape, int) else shape))


def _filled_elements(arguments: tuple, keywords: dict) -> int:
    """Return the elements a container would copy from its sized arguments."""
    return sum(len(argument) for argument in (*arguments, *keywords.values()) if hasattr(argument, "__len__"))


_AFTER = _Charge(before=False)
_FILLED = _Charge(before=True, count=_filled_elements)
# The allowlisted globals that can create many elements from a few bytes of pickle: a RangeIndex is a lazy
# range of any length, an ndarray call allocates any shape, and a container call copies a lazy sequence.
# NOTE: a direct call of pandas.DataFrame with a scalar and two bounded indexes is not charged and can still
# allocate their product. Legitimate checkpoints build frames through NEWOBJ, which must get the class itself,
# and the C unpickler lets no subclass tell the two opcodes apart.
_BOUNDED: dict[tuple[str, str], _Charge] = {
    ("pandas", "RangeIndex"): _AFTER,
    ("pandas", "Index"): _AFTER,
    ("pandas.core.indexes.base", "_new_Index"): _AFTER,
    ("numpy", "ndarray"): _Charge(before=True, count=_array_bytes),
    ("numpy._core.multiarray", "_reconstruct"): _Charge(before=True, count=_reconstructed_elements),
    ("numpy.core.multiarray", "_reconstruct"): _Charge(before=True, count=_reconstructed_elements),
    **{global_name: _FILLED for global_name in (
        ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
        ("collections", "OrderedDict"), ("collections", "defaultdict"), ("collections", "deque"),
    )},
}


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
    header = json.dumps({"detectors": _reasons(detectors), "model": _model_version(detectors)}).encode()
    body = io.BytesIO()
    body.write(len(header).to_bytes(4, "big") + header)
    _Pickler(body, references).dump(state)
    content = body.getbuffer()
    crc = zlib.crc32(content).to_bytes(_CRC_BYTES, "big")
    return MAGIC + bytes([FORMAT_VERSION]) + crc + bytes(content)


def load_state(
    data: bytes, detectors: Sequence[Detector], plans: PlanCatalogue, partitions: int | None = None,
    *, max_bytes: int = DEFAULT_MAX_BYTES,
) -> PartitionState:
    """Read a checkpoint written by ``dump_state``, with the worker's own ``detectors`` and ``plans`` put back.

    A checkpoint larger than ``max_bytes``, damaged (its CRC does not
    match), written with other detectors, or, where ``partitions`` is given,
    for another partition count, is rejected with ``CheckpointError``: its
    subjects or its states would not match this worker's. One written on
    another anomaly model is accepted.
    """
    if len(data) > max_bytes:
        raise CheckpointError(
            f"checkpoint of {len(data)} bytes is larger than the limit of {max_bytes} bytes; "
            "raise the state worker's checkpoint_max_bytes if the state is that large"
        )
    if data[:4] != MAGIC:
        raise CheckpointError("not a fairuse checkpoint: its first bytes are not FUCP")
    version = data[4] if len(data) > 4 else None
    if version == FORMAT_VERSION:
        payload = _checked_payload(data, detectors)
    elif version == _UNCHECKED_VERSION:
        payload = data[5:]
    else:
        raise CheckpointError(
            f"checkpoint of format version {version}, this worker reads versions {_UNCHECKED_VERSION} and {FORMAT_VERSION}"
        )
    max_elements = max(_ELEMENTS_PER_BYTE * len(payload), _MIN_ELEMENTS)
    try:
        state = RestrictedUnpickler(io.BytesIO(payload), external_objects(detectors, plans), max_elements).load()
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


def _checked_payload(data: bytes, detectors: Sequence[Detector]) -> bytes:
    """Check a version-2 checkpoint's CRC and header against ``detectors``; return its pickle."""
    start = 5 + _CRC_BYTES
    content = memoryview(data)[start:]
    if zlib.crc32(content) != int.from_bytes(data[5:start], "big"):
        raise CheckpointError("checkpoint is damaged: its CRC-32 does not match its content")
    length = int.from_bytes(content[:4], "big")
    try:
        header = json.loads(bytes(content[4 : 4 + length]))
        written, model = list(header["detectors"]), header["model"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint header is not readable: {type(error).__name__}: {error}") from error
    if written != _reasons(detectors):
        raise CheckpointError(f"checkpoint written with the detectors {written}, this worker runs {_reasons(detectors)}")
    current = _model_version(detectors)
    if model != current:
        logger.info("checkpoint written on model %s, its anomaly days are scored with model %s from now on", model, current)
    return bytes(content[4 + length :])


def _reasons(detectors: Sequence[Detector]) -> list[str]:
    return [detector.reason for detector in detectors]


def _model_version(detectors: Sequence[Detector]) -> str | None:
    for detector in detectors:
        model = getattr(detector, "model", None)
        if model is not None:
            return model.version
    return None


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
    """Partition checkpoints in Redis: ``{prefix}:state:{partition}``, expiring ``ttl_seconds`` after each write.

    A checkpoint larger than ``max_bytes`` is written with an error in the
    log, and rejected by ``load`` before it is read.
    """

    def __init__(self, client: redis.Redis, *, prefix: str, ttl_seconds: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        self._save = client.register_script(_SAVE_SCRIPT)

    def key(self, partition: int) -> str:
        return f"{self.prefix}:state:{partition}"

    def save(self, partition: int, data: bytes, *, lease_key: str, owner: str) -> bool:
        """Write ``data`` as the partition's checkpoint if ``lease_key`` still names ``owner``; return whether it did.

        So a worker that stalled past its lease cannot overwrite the checkpoint of the partition's new owner.
        """
        if len(data) > self.max_bytes:
            logger.error(
                "partition %d: checkpoint of %d bytes is larger than the limit of %d bytes, so a new owner will reject "
                "it and start the partition empty; raise checkpoint_max_bytes", partition, len(data), self.max_bytes,
            )
        return bool(self._save(keys=[self.key(partition), lease_key], args=[data, self.ttl_seconds, owner]))

    def load(self, partition: int) -> bytes | None:
        """Return the partition's checkpoint, or None without one; raise ``CheckpointError`` above ``max_bytes``."""
        size = self.client.strlen(self.key(partition))
        if size > self.max_bytes:
            raise CheckpointError(
                f"{self.key(partition)}: checkpoint of {size} bytes is larger than the limit of {self.max_bytes} "
                "bytes; raise the state worker's checkpoint_max_bytes if the state is that large"
            )
        return self.client.get(self.key(partition))
