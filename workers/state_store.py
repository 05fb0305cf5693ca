"""Per-subject detector state in Redis, shared by every stream worker (not yet used by the consumer).

Each detector's state of one subject is one Redis hash,
``{prefix}:state:{detector}:{subject_type}:{subject}``, with one field per
``SubjectStates`` table of the detector, whose value is that table's
``export`` of the subject. A table without state for the subject has no
field, and a detector without any has no hash. The hash expires its
detector's retention plus a day after the write, so no state outlives its
retention by more than a day. There is one hash per detector, not one per
subject, because retentions differ (20 minutes for the automation load
state, 8 days for abnormal_cost) and Redis expires whole keys only before
version 7.4, which added HEXPIRE for hash fields. This project runs on 7.0.

Every write of a subject also replaces its token,
``{prefix}:state-token:{subject_type}:{subject}``, a random value that
expires with the longest retention. A worker keeps the state it read or
wrote decoded in its ``SubjectStates`` tables and remembers, per subject, the
token and the set of detector hashes present (a bit mask) it saw. ``load``
sends them with the keys and the script returns the hashes only of subjects
where either differs: after another worker's write, an expiry, an eviction or
a Redis that lost its data. So a batch fetches and decodes only what changed.

``save`` writes a subject only while Redis still has the token and mask this
worker saw, so a write never replaces another worker's newer state unseen.
Subjects whose check failed are returned and left unwritten. Their state in
memory is then not what Redis stores, and the next ``load`` fetches it again.

Reads and writes are Lua scripts, one call per group of at most
``group_size`` subjects, and for writes at most ``group_bytes`` of values
(a group contains at least one subject). Redis runs a script atomically, so
every subject of a group is written entirely or not at all. A batch of
several groups is not atomic, so a failure between two calls leaves the
later groups' subjects at their old state. The scripts check key types before
writing, so no command in them fails halfway on a stray key.

A state or token key of another type, as another tool may leave, is read as
no state with a warning, and the subject's next write replaces it.

NOTE: the account and plan names that ``AutomationPatternState`` and
``AnomalyDayState`` keep outside their tables (``names``) are not stored.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from detector.state.load_window import LoadWindows
from detector.state.open_day_counts import OpenDayCounts
from detector.state.table import SubjectKey, SubjectStates

logger = logging.getLogger(__name__)

DAY = 86400

# Subjects and value bytes per script call. Redis runs nothing else while a script runs, so a gateway's lookup
# may wait for one call. scripts/bench_state_store.py reports the longest call.
SCRIPT_SUBJECTS = 500
SCRIPT_BYTES = 2**20

# Shared by both scripts: the current token and mask of the subject whose token key is KEYS[first], followed by
# its detector hashes. The mask has bit d - 1 set when detector d's hash exists. A key of another type makes
# the subject read as no state: token '' and mask -1.
_CURRENT_STATE = """
local function current_state(first, detectors)
  local stray = false
  local token_type = redis.call('TYPE', KEYS[first])['ok']
  if token_type ~= 'string' and token_type ~= 'none' then
    stray = true
  end
  local mask = 0
  for d = 1, detectors do
    local key_type = redis.call('TYPE', KEYS[first + d])['ok']
    if key_type == 'hash' then
      mask = mask + 2 ^ (d - 1)
    elseif key_type ~= 'none' then
      stray = true
    end
  end
  if stray then
    return '', -1
  end
  return redis.call('GET', KEYS[first]) or '', mask
end
"""

# KEYS: per subject, its token key and then its detector hashes in detector order.
# ARGV[1]: number of detectors. Then, per subject, the token, mask and number of detector hashes the caller saw
# (mask -2 and number -1 when it saw none).
# Returns per subject {0} when the token and the number of existing detector keys are the ones the caller saw.
# Otherwise it returns {1, token, mask, HGETALL reply of each detector}.
# The first test takes two commands per subject, against one per key for the types. Every write replaces the
# token, so a hash appears only with a new token, and a hash that expired or was evicted lowers the number.
# NOTE: a key that another tool replaces with one of another type under the same name, without touching the
# token, is seen only at the subject's next write or token change.
_LOAD_SCRIPT = _CURRENT_STATE + """
local detectors = tonumber(ARGV[1])
local replies = {}
local subject = 0
for first = 1, #KEYS, detectors + 1 do
  local seen_token, seen_mask, seen_keys = ARGV[2 + 3 * subject], tonumber(ARGV[3 + 3 * subject]), tonumber(ARGV[4 + 3 * subject])
  local token = redis.pcall('GET', KEYS[first])
  local same = type(token) ~= 'table' and (token or '') == seen_token
    and redis.call('EXISTS', unpack(KEYS, first + 1, first + detectors)) == seen_keys
  local mask
  if not same then
    token, mask = current_state(first, detectors)
    same = token == seen_token and mask == seen_mask
  end
  if same then
    replies[#replies + 1] = {0}
  else
    local reply = {1, token, mask}
    for d = 1, detectors do
      if mask > 0 and redis.call('TYPE', KEYS[first + d])['ok'] == 'hash' then
        reply[#reply + 1] = redis.call('HGETALL', KEYS[first + d])
      else
        reply[#reply + 1] = {}
      end
    end
    replies[#replies + 1] = reply
  end
  subject = subject + 1
end
return replies
"""

# KEYS: as for _LOAD_SCRIPT. ARGV[1]: number of detectors D, ARGV[2 .. D + 1]: each detector's TTL in seconds,
# ARGV[D + 2]: the token's TTL. Then per subject: expected token, expected mask, new token, and per detector a
# field count followed by that many field and value pairs. A subject is written only if its current token and
# mask are the expected ones: every detector hash is deleted, written again with its fields (none: no hash)
# and given its TTL, and the token is replaced. Returns per subject: 1 if written, else 0, and 1 if a key of
# another type was replaced, else 0.
_SAVE_SCRIPT = _CURRENT_STATE + """
local detectors = tonumber(ARGV[1])
local token_ttl = ARGV[detectors + 2]
local cursor = detectors + 3
local replies = {}
for first = 1, #KEYS, detectors + 1 do
  local token, mask = current_state(first, detectors)
  local written = token == ARGV[cursor] and mask == tonumber(ARGV[cursor + 1])
  local new_token = ARGV[cursor + 2]
  cursor = cursor + 3
  if written and mask == -1 then
    redis.call('DEL', KEYS[first])
  end
  for d = 1, detectors do
    local fields = tonumber(ARGV[cursor])
    if written then
      redis.call('DEL', KEYS[first + d])
      if fields > 0 then
        redis.call('HSET', KEYS[first + d], unpack(ARGV, cursor + 1, cursor + 2 * fields))
        redis.call('EXPIRE', KEYS[first + d], ARGV[d + 1])
      end
    end
    cursor = cursor + 1 + 2 * fields
  end
  if written then
    redis.call('SET', KEYS[first], new_token, 'EX', token_ttl)
  end
  replies[#replies + 1] = written and 1 or 0
  replies[#replies + 1] = (written and mask == -1) and 1 or 0
end
return replies
"""


@dataclass(frozen=True, slots=True)
class StoredDetector:
    """The tables of one detector as stored: ``name`` in the key, ``retention`` in seconds, ``tables`` by field name."""

    name: str
    retention: float
    tables: Mapping[str, SubjectStates]

    @property
    def ttl(self) -> int:
        """Seconds a hash lives after its last write: the retention plus a day."""
        return math.ceil(self.retention) + DAY


# Row storage kept outside ``SubjectStates``, which ``state_tables`` refuses: the automation load windows
# and the anomaly state's value counts.
_UNSAVED = (LoadWindows, OpenDayCounts)


def state_tables(state: object) -> dict[str, SubjectStates]:
    """Return the ``SubjectStates`` of an incremental detector by attribute name, one level of helpers deep ("devices.edges").

    Raises ``TypeError`` for a state that keeps rows outside ``SubjectStates``,
    which the store cannot save yet: saving its tables alone would restore it
    in part.
    """
    tables = {}
    for name, value in vars(state).items():
        if isinstance(value, _UNSAVED):
            raise TypeError(
                f"{type(state).__name__}.{name} is a {type(value).__name__}, which the state store cannot save yet; "
                "leave this detector out of the store until its rows have an export"
            )
        if isinstance(value, SubjectStates):
            tables[name] = value
        elif type(value).__module__.startswith("detector.state") and hasattr(value, "__dict__"):
            tables.update((f"{name}.{part}", table) for part, table in vars(value).items() if isinstance(table, SubjectStates))
    return tables


class StateStore:
    """Load and save the state of several detectors for the subjects of a micro-batch."""

    def __init__(
        self,
        client: redis.Redis,
        detectors: Sequence[StoredDetector],
        *,
        prefix: str = "fairuse",
        group_size: int = SCRIPT_SUBJECTS,
        group_bytes: int = SCRIPT_BYTES,
    ) -> None:
        self.client = client
        self.detectors = list(detectors)
        self.prefix = prefix
        self.group_size = group_size
        self.group_bytes = group_bytes
        # The token and detector mask this worker last saw in Redis for each subject its tables hold.
        self._seen: dict[SubjectKey, tuple[bytes, int]] = {}
        self._load_script = client.register_script(_LOAD_SCRIPT)
        self._save_script = client.register_script(_SAVE_SCRIPT)

    def key(self, detector: str, subject: SubjectKey) -> str:
        return f"{self.prefix}:state:{detector}:{subject[0]}:{subject[1]}"

    def token_key(self, subject: SubjectKey) -> str:
        return f"{self.prefix}:state-token:{subject[0]}:{subject[1]}"

    def load(self, keys: Sequence[SubjectKey]) -> list[SubjectKey]:
        """Make the tables hold Redis's state of ``keys``, fetching only subjects that changed since this worker saw them.

        Returns the subjects fetched. A subject without state in Redis gets no
        state in the tables, so state built in memory before the first load is dropped.
        """
        replies = []
        for group in self._read_groups(keys):
            arguments: list = [len(self.detectors)]
            for key in group:
                token, mask = self._seen.get(key, (b"", -2))
                arguments += [token, mask, mask.bit_count() if mask >= 0 else -1]
            replies += self._load_script(keys=self._key_lists(group), args=arguments)

        fetched, hashes, stray = [], [], []
        for key, reply in zip(keys, replies):
            if not reply[0]:
                continue
            _, token, mask, *detector_replies = reply
            self._seen[key] = (token, mask)
            fetched.append(key)
            hashes.append([dict(zip(reply[0::2], reply[1::2])) for reply in detector_replies])
            if mask == -1:
                stray.append(key)
        if stray:
            logger.warning(
                "state of %d subjects read as empty because a state or token key has another type, "
                "to be replaced by their next write: %s", len(stray), ", ".join(map(str, stray[:5])),
            )

        for index, detector in enumerate(self.detectors):
            for name, table in detector.tables.items():
                field = name.encode()
                table.load(fetched, [subject_hashes[index].get(field) for subject_hashes in hashes])
        return fetched

    def save(self, keys: Sequence[SubjectKey]) -> list[SubjectKey]:
        """Write the tables' state of ``keys``, one script call per group; return the subjects left unwritten.

        A subject is left unwritten when Redis no longer has the token and
        detector mask this worker last saw (another worker wrote it, or its
        state expired), so that newer state is never replaced unseen. The
        caller must load such subjects again and apply its events to their
        state again.
        """
        fields = self._fields(keys)
        ttls = [detector.ttl for detector in self.detectors]
        tokens = [os.urandom(16) for _ in keys]
        replies = []
        for start, end in self._write_groups(fields):
            arguments: list = [len(self.detectors), *ttls, max(ttls, default=DAY)]
            for position in range(start, end):
                arguments += [*self._seen.get(keys[position], (b"", 0)), tokens[position]]
                for detector_fields in fields[position]:
                    arguments.append(len(detector_fields) // 2)
                    arguments += detector_fields
            replies += self._save_script(keys=self._key_lists(keys[start:end]), args=arguments)

        rejected, repaired = [], []
        for position, key in enumerate(keys):
            if replies[2 * position]:
                mask = sum(1 << index for index, detector_fields in enumerate(fields[position]) if detector_fields)
                self._seen[key] = (tokens[position], mask)
            else:
                self._seen.pop(key, None)
                rejected.append(key)
            if replies[2 * position + 1]:
                repaired.append(key)
        if repaired:
            logger.warning("replaced state or token keys of another type: %s", ", ".join(map(str, repaired[:5])))
        if rejected:
            logger.warning(
                "state of %d subjects not written because it changed in Redis since this worker read it "
                "(another worker's write, an expiry or an eviction); the caller must load and update them again: %s",
                len(rejected), ", ".join(map(str, rejected[:5])),
            )
        return rejected

    def _fields(self, keys: Sequence[SubjectKey]) -> list[list[list[bytes | str]]]:
        """Return per subject and detector the flat (field, value) list of its hash, empty without state."""
        fields: list[list[list[bytes | str]]] = [[[] for _ in self.detectors] for _ in keys]
        for index, detector in enumerate(self.detectors):
            for name, table in detector.tables.items():
                for subject_fields, value in zip(fields, table.export(keys)):
                    if value is not None:
                        subject_fields[index] += (name, value)
        return fields

    def _write_groups(self, fields: list[list[list[bytes | str]]]) -> list[tuple[int, int]]:
        """Return (start, end) positions of consecutive subjects, at most ``group_size`` and ``group_bytes`` of values each."""
        groups, start, size = [], 0, 0
        for position, subject_fields in enumerate(fields):
            value_bytes = sum(len(value) for detector_fields in subject_fields for value in detector_fields[1::2])
            if position > start and (position - start == self.group_size or size + value_bytes > self.group_bytes):
                groups.append((start, position))
                start, size = position, 0
            size += value_bytes
        if start < len(fields):
            groups.append((start, len(fields)))
        return groups

    def _read_groups(self, keys: Sequence[SubjectKey]) -> list[Sequence[SubjectKey]]:
        return [keys[start : start + self.group_size] for start in range(0, len(keys), self.group_size)]

    def _key_lists(self, group: Sequence[SubjectKey]) -> list[str]:
        """Return per subject its token key followed by its detector hashes, the KEYS of both scripts."""
        names = []
        for key in group:
            names.append(self.token_key(key))
            names += [self.key(detector.name, key) for detector in self.detectors]
        return names
