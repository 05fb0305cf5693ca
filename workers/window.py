"""Per-subject event windows in Redis, shared by every stream worker.

Each subject's recent events live in a sorted set,
``{prefix}:window:{subject_type}:{subject}``. A member is a *chunk*: the
subject's events of one micro-batch as one Arrow IPC record batch, scored by
the time of its newest event. Chunks have the columns and types of
``detector.events.COLUMNS`` and carry no schema. With one member per subject
and batch, instead of one JSON member per event, a batch writes a few hundred
Redis arguments and the next batch decodes columns instead of JSON.

Every write drops chunks whose newest event is older than ``window_seconds``
before the subject's newest event and sets the key to expire
``window_seconds`` plus a day after the write, so no window outlives its data.
A subject with more than ``max_chunks`` chunks is compacted into one chunk of
at most ``max_events`` events, the newest ones.

A batch's writes, and the token checks before a read, are Lua scripts
(``EVALSHA``) that each handle up to ``SCRIPT_SUBJECTS`` subjects. Redis
runs a script atomically, so each subject's write is atomic, but a batch's
writes are not. A batch that fails between two calls is not acknowledged
and is delivered again, and the requests it stored twice are dropped on
reading. Scripts replaced pipelines of single commands, whose encoding and
replies took most of the window time in redis-py.

Reads return each ``request_id`` once: a redelivered batch may store a chunk
whose requests are already stored, and the copies are dropped on reading and
on compaction. Events older than the window inside a chunk that is still kept
are dropped on reading too.

Every write also replaces the subject's token,
``{prefix}:window-token:{subject_type}:{subject}``, which expires with the
window. A worker keeps the windows it read or wrote decoded in memory
(``workers.window_cache``) and uses its copy while the token in Redis and the
window's member count are the ones it saw, so a batch fetches and decodes only
the windows that another worker, a compaction, an expiry or an eviction changed.

A window or token key of another type, as another tool may leave, is read as
an empty window, and the subject's next write deletes it, each with a
warning. Otherwise every delivery of the batch would fail on it.

Windows written by earlier versions, one JSON member per event, are read as
well. Earlier versions cannot read chunks, and those before the token do not
replace it, so old and new workers must not share a stream.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import redis

from detector.events import COLUMNS, empty_frame
from workers.window_cache import CachedChunk, CachedWindow, WindowCache

logger = logging.getLogger(__name__)

WEEK = 7 * 86400

# The canonical types, so an id such as "2026-11-23T10:00:00" stays a string.
_ARROW_TYPES = {"str": pa.large_string(), "float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_()}
SCHEMA = pa.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in COLUMNS.items()])
_LEGACY_OPTIONS = pajson.ParseOptions(explicit_schema=SCHEMA)

# An empty window, returned when a window key or its token key has another type.
_EMPTY = CachedWindow(token=b"", members=0)

# Subjects per script call. Redis runs nothing else while a script runs, so a gateway's lookup may wait for
# one call: writing 500 subjects' chunks of 9 events took 10 ms (Redis 7.0 on a shared 2-core machine).
SCRIPT_SUBJECTS = 500

# Add one chunk to each subject's window, trim the window, refresh its expiry and replace its token:
# the six commands per subject of the MULTI this replaces. Every key written gets its TTL in the same call.
# SET with GET needs Redis 6.2.
# KEYS: window key and token key of each subject, in pairs. ARGV[1]: TTL in seconds, then per subject:
# chunk, score, exclusive lower score bound of the chunks kept ("(..."), new token.
# Returns per subject: member count before the write, member count after it, replaced token or nil, and
# 1 when a window or token key of another type was deleted first, else 0. Such a key would otherwise fail
# every delivery of the batch, so one stray key would stop the stream.
_EXTEND_SCRIPT = """
local ttl = ARGV[1]
local replies = {}
for i = 1, #KEYS, 2 do
  local window, token, arg = KEYS[i], KEYS[i + 1], 2 * i
  local repaired = 0
  local window_type = redis.call('TYPE', window)['ok']
  if window_type ~= 'zset' and window_type ~= 'none' then
    redis.call('DEL', window)
    repaired = 1
  end
  local token_type = redis.call('TYPE', token)['ok']
  if token_type ~= 'string' and token_type ~= 'none' then
    redis.call('DEL', token)
    repaired = 1
  end
  local before = redis.call('ZCARD', window)
  redis.call('ZADD', window, ARGV[arg + 1], ARGV[arg])
  redis.call('ZREMRANGEBYSCORE', window, '-inf', ARGV[arg + 2])
  redis.call('EXPIRE', window, ttl)
  replies[#replies + 1] = before
  replies[#replies + 1] = redis.call('ZCARD', window)
  replies[#replies + 1] = redis.call('SET', token, ARGV[arg + 3], 'EX', ttl, 'GET')
  replies[#replies + 1] = repaired
end
return replies
"""

# Read the token and member count of each window at one point in time.
# KEYS: window key and token key of each subject, in pairs. Returns per subject: token or nil, member count.
# The count is -1 when the window or its token key has another type: the window is then read as empty, and
# the next write of the subject deletes the stray key.
_STATE_SCRIPT = """
local replies = {}
for i = 1, #KEYS, 2 do
  local window_type = redis.call('TYPE', KEYS[i])['ok']
  local token_type = redis.call('TYPE', KEYS[i + 1])['ok']
  if (window_type ~= 'zset' and window_type ~= 'none') or (token_type ~= 'string' and token_type ~= 'none') then
    replies[i] = false
    replies[i + 1] = -1
  else
    replies[i] = redis.call('GET', KEYS[i + 1])
    replies[i + 1] = redis.call('ZCARD', KEYS[i])
  end
end
return replies
"""


def decode_chunks(chunks: Iterable[bytes]) -> pa.Table:
    """Read stored chunks back into one table."""
    return pa.Table.from_batches([_decode(chunk) for chunk in chunks], schema=SCHEMA)


def _readable_batches(key: str, chunks: list[bytes]) -> list[pa.RecordBatch]:
    """Decode the chunks of ``key``, skipping with a warning those that are not readable.

    A member that no version wrote, or one with other columns, must not stop
    every worker that reads the subject. Compaction, or the trim once it is
    older than the window, removes it.
    """
    batches = []
    for chunk in chunks:
        try:
            batches.append(_decode(chunk))
        except (pa.ArrowException, EOFError) as error:
            logger.warning("window %s: skipping an unreadable member of %d bytes: %s", key, len(chunk), error)
    return batches


def _readable_chunks(key: str, members: list[tuple[bytes, float]]) -> list[CachedChunk]:
    """Decode the (member, score) pairs of ``key``, skipping unreadable members as ``_readable_batches`` does."""
    chunks = []
    for member, score in members:
        for batch in _readable_batches(key, [member]):
            chunks.append(CachedChunk(float(score), member, batch))
    return chunks


def _decode(chunk: bytes) -> pa.RecordBatch:
    if chunk[:1] == b"{":
        return _decode_event_json(chunk)
    return pa.ipc.read_record_batch(pa.py_buffer(chunk), SCHEMA)


def _decode_event_json(member: bytes) -> pa.RecordBatch:
    """Read a member of the earlier format, one event as a JSON object, so windows survive an upgrade.

    Such members are dropped with their window's oldest chunks or merged by compaction.
    """
    table = pajson.read_json(pa.py_buffer(member), parse_options=_LEGACY_OPTIONS)
    return _one_batch(table.select(list(COLUMNS)).cast(SCHEMA))


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=SCHEMA)


def _encode_table(table: pa.Table) -> bytes:
    """Serialise ``table`` as one Arrow IPC record batch message without the schema."""
    return _one_batch(table).serialize().to_pybytes()


class EventWindows:
    """Read and extend the Redis windows of the subjects in a micro-batch."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "fairuse",
        window_seconds: int = WEEK,
        max_events: int = 20_000,
        max_chunks: int = 32,
        max_compactions: int = 250,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        """``cache_bytes`` bounds the chunk bytes this instance keeps decoded in memory; 0 turns the cache off.

        A window with more than ``max_chunks`` chunks is merged into one at a
        write, at most ``max_compactions`` windows per write, the most crowded first.
        """
        self.client = client
        self.prefix = prefix
        self.window_seconds = window_seconds
        self.max_events = max_events
        self.max_chunks = max_chunks
        self.max_compactions = max_compactions
        self.cache = WindowCache(cache_bytes)
        self._extend_script = client.register_script(_EXTEND_SCRIPT)
        self._state_script = client.register_script(_STATE_SCRIPT)

    def key(self, subject_type: str, subject: str) -> str:
        return f"{self.prefix}:window:{subject_type}:{subject}"

    def token_key(self, key: str) -> str:
        """Return the key of the token that changes with every write to the window ``key``."""
        return f"{self.prefix}:window-token:{key.removeprefix(f'{self.prefix}:window:')}"

    def load(
        self, subjects: Iterable[tuple[str, str]], newest: float | Mapping[tuple[str, str], float], *, distinct: bool = True
    ) -> pd.DataFrame:
        """Return the stored events of ``subjects`` from the window ending at ``newest``, each request once.

        ``newest`` is one time for every subject, or each subject's own time,
        so that one subject's event far ahead does not shorten the others' windows.
        With ``distinct=False`` a request may appear more than once, first where
        ``drop_repeated_requests`` keeps it, for a caller that drops repeats
        after adding its own events.
        """
        subjects = list(subjects)
        ends = [newest[subject] for subject in subjects] if isinstance(newest, Mapping) else [newest] * len(subjects)
        keys = [self.key(subject_type, subject) for subject_type, subject in subjects]
        windows = self._windows(keys)
        batches = [window.rows(end - self.window_seconds) for window, end in zip(windows, ends)]
        batches = [batch for batch in batches if batch is not None and batch.num_rows]
        if not batches:
            return empty_frame()

        # One chunk per column: the merge, dedup and sort after loading took 0.56 instead of 0.21 s when each
        # column had 16,498 chunks (355,381 events) instead of one.
        frame = _to_frame(pa.Table.from_batches(batches, schema=SCHEMA).combine_chunks())
        # Window sizes bound each subject's events from above, so the cap is checked only where it may apply.
        capped = max(batch.num_rows for batch in batches) > self.max_events
        if distinct or capped:
            frame = drop_repeated_requests(frame)
        if capped:
            frame = self._newest_per_subject(frame)
        return frame.reset_index(drop=True)

    def _windows(self, keys: list[str]) -> list[CachedWindow]:
        """Return the readable chunks of each key in Redis order, from the cache where its token still matches."""
        replies = []
        for group in _groups(keys):
            replies += self._state_script(keys=self._key_pairs(group))
        stray = {key for key, members in zip(keys, replies[1::2]) if members == -1}
        if stray:
            logger.warning(
                "windows read as empty because their key or token key has another type, "
                "to be deleted by the next write: %s", ", ".join(sorted(stray)),
            )
        cached = [
            _EMPTY if key in stray else self.cache.get(key, token, members)
            for key, token, members in zip(keys, replies[0::2], replies[1::2])
        ]
        missing = [key for key, window in zip(keys, cached) if window is None]
        if not missing:
            return cached

        # The token and the chunks are read in one transaction, so the token never describes other chunks.
        pipeline = self.client.pipeline(transaction=True)
        for key in missing:
            pipeline.get(self.token_key(key))
            pipeline.zrange(key, 0, -1, withscores=True)
        replies = pipeline.execute()
        fetched = {}
        for key, token, members in zip(missing, replies[0::2], replies[1::2]):
            fetched[key] = CachedWindow(token or b"", len(members), _readable_chunks(key, members))
            self.cache.put(key, fetched[key])
        return [window if window is not None else fetched[key] for key, window in zip(keys, cached)]

    def _key_pairs(self, keys: list[str]) -> list[str]:
        """Return each window key followed by its token key, the KEYS of the window scripts."""
        return [name for key in keys for name in (key, self.token_key(key))]

    def count(self, subject_type: str, subject: str) -> int:
        """Return how many distinct requests the subject's window holds, whatever their age."""
        chunks = self.client.zrange(self.key(subject_type, subject), 0, -1)
        if not chunks:
            return 0
        return len(pc.unique(decode_chunks(chunks)["request_id"]))

    def extend(self, frame: pd.DataFrame) -> None:
        """Add ``frame``'s events to their subjects' windows as one chunk each, trim them and refresh their expiry."""
        if frame.empty:
            return
        ttl = self.window_seconds + 86400
        written = []
        for subject_type, subject, chunk, newest in self._chunks_by_subject(frame):
            key = self.key(subject_type, subject)
            written.append((key, os.urandom(16), CachedChunk(newest, chunk, _decode(chunk))))

        # Atomic per subject, not per batch (see the module docstring).
        replies = []
        for group in _groups(written):
            arguments: list = [ttl]
            for _, token, chunk in group:
                arguments += [chunk.member, chunk.score, f"({chunk.score - self.window_seconds}", token]
            replies += self._extend_script(keys=self._key_pairs([key for key, _, _ in group]), args=arguments)
        sizes_before, sizes, replaced, repaired = replies[0::4], replies[1::4], replies[2::4], replies[3::4]
        for (key, token, chunk), previous, size_before, size in zip(written, replaced, sizes_before, sizes):
            self.cache.add_chunk(key, previous, size_before, token, size, chunk, chunk.score - self.window_seconds)

        keys = [key for key, _, _ in written]
        stray = [key for key, flag in zip(keys, repaired) if flag]
        if stray:
            logger.warning("deleted window or token keys of another type before writing: %s", ", ".join(stray))
        crowded = [(size, key, token) for (key, token, _), size in zip(written, sizes) if size > self.max_chunks]
        if crowded:
            # Windows that gain a chunk every batch become crowded in the same batch. Compacting a few
            # hundred per write spreads the work, because 2,000 at once took about 1.5 s of one batch.
            crowded.sort(key=lambda item: -item[0])
            self._compact({key: token for _, key, token in crowded[: self.max_compactions]}, ttl)

    def _chunks_by_subject(self, frame: pd.DataFrame) -> list[tuple[str, str, bytes, float]]:
        """Return (subject_type, subject, chunk, newest event time) for each subject in ``frame``."""
        subject = frame.groupby(["subject_type", "key_id"], sort=False).ngroup().to_numpy()
        ts = frame["ts"].to_numpy()
        newest = np.full(subject.max() + 1, -np.inf)
        np.maximum.at(newest, subject, ts)

        # Events already older than the window are scored with this batch but never stored.
        in_window = np.flatnonzero(ts >= newest[subject] - self.window_seconds)
        order = in_window[np.argsort(subject[in_window], kind="stable")]
        rows = _one_batch(pa.Table.from_pandas(frame[list(COLUMNS)].take(order), schema=SCHEMA, preserve_index=False))

        starts = np.flatnonzero(np.diff(subject[order], prepend=-1))
        ends = np.append(starts[1:], len(order))
        firsts = order[starts]
        return [
            (subject_type, name, rows.slice(start, end - start).serialize().to_pybytes(), latest)
            for subject_type, name, start, end, latest in zip(
                frame["subject_type"].to_numpy()[firsts].tolist(),
                frame["key_id"].to_numpy()[firsts].tolist(),
                starts.tolist(),
                ends.tolist(),
                newest[subject[firsts]].tolist(),
            )
        ]

    def _compact(self, tokens: dict[str, bytes], ttl: int) -> None:
        """Replace the chunks of each key by one chunk of its newest ``max_events`` distinct events.

        ``tokens`` maps each key to the token this worker's write just gave
        it. Only the chunks read here are removed, in one transaction with the
        merged chunk's write, so chunks another worker adds meanwhile stay.
        Where no other chunk came in, the merged chunk replaces the key's
        cached copy, so the next read needs no fetch from Redis.
        """
        keys = list(tokens)
        sources = self._compaction_sources(tokens)
        merged: dict[str, CachedChunk] = {}
        new_tokens = {key: os.urandom(16) for key in keys}
        pipeline = self.client.pipeline(transaction=True)
        for key, (members, table) in zip(keys, sources):
            if not members:
                continue
            pipeline.zrem(key, *members)
            if not table.num_rows:
                continue
            newest = pc.max(table["ts"]).as_py()
            table = table.filter(pc.greater_equal(table["ts"], newest - self.window_seconds))
            batch = _one_batch(_distinct_newest(table, self.max_events))
            merged[key] = CachedChunk(newest, batch.serialize().to_pybytes(), batch)
            pipeline.zadd(key, {merged[key].member: newest})
            pipeline.expire(key, ttl)
        for key in keys:
            pipeline.set(self.token_key(key), new_tokens[key], ex=ttl)
            pipeline.zcard(key)
        sizes = pipeline.execute()[-2 * len(keys) :][1::2]

        for key, size in zip(keys, sizes):
            if key in merged and size == 1:
                self.cache.put(key, CachedWindow(new_tokens[key], 1, [merged[key]], merged=merged[key].batch))
            else:
                self.cache.discard(key)

    def _compaction_sources(self, tokens: dict[str, bytes]) -> list[tuple[list[bytes], pa.Table]]:
        """Return the members of each key to replace and their rows, from the cache where it has this worker's write.

        A cached copy made under the token this worker just wrote, with every
        member readable, is what Redis had after that write. Other keys are read from Redis.
        """
        sources: dict[str, tuple[list[bytes], pa.Table]] = {}
        for key, token in tokens.items():
            window = self.cache.get(key, token, -1, check_members=False)
            if window is None or not window.chunks or len(window.chunks) != window.members:
                continue
            rows = window.rows(window.chunks[-1].score - self.window_seconds)
            sources[key] = ([chunk.member for chunk in window.chunks], pa.Table.from_batches([rows], schema=SCHEMA))

        missing = [key for key in tokens if key not in sources]
        pipeline = self.client.pipeline(transaction=False)
        for key in missing:
            pipeline.zrange(key, 0, -1)
        for key, members in zip(missing, pipeline.execute() if missing else []):
            sources[key] = (members, pa.Table.from_batches(_readable_batches(key, members), schema=SCHEMA))
        return [sources[key] for key in tokens]

    def _newest_per_subject(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Keep at most ``max_events`` newest events per subject."""
        ranked = frame.sort_values("ts", kind="stable")
        newest = ranked.groupby(["subject_type", "key_id"], sort=False).cumcount(ascending=False) < self.max_events
        return ranked[newest.to_numpy()].reset_index(drop=True)


def _groups(items: list) -> list[list]:
    """Split ``items`` into lists of at most ``SCRIPT_SUBJECTS``, one per script call."""
    return [items[start : start + SCRIPT_SUBJECTS] for start in range(0, len(items), SCRIPT_SUBJECTS)]


def drop_repeated_requests(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the first row of each ``request_id``; return ``frame`` itself when no id repeats.

    Same result as ``drop_duplicates("request_id")``, which copies every
    column even when nothing repeats: 34 against 10 ms on 134,000 events
    (pandas 3.1).
    """
    repeated = frame["request_id"].duplicated().to_numpy()
    return frame[~repeated] if repeated.any() else frame


def _to_frame(table: pa.Table) -> pd.DataFrame:
    """Convert ``table`` to a frame of ``COLUMNS``, converting columns only where ``to_pandas`` chose other types.

    With pandas 3.1 and pyarrow 26, ``to_pandas`` already returns those
    types, and converting them again took about as long as ``to_pandas`` itself
    (2.5 against 2.8 ms for 200,000 events).
    """
    frame = table.to_pandas()
    if list(frame.columns) == list(COLUMNS) and all(frame[name].dtype == dtype for name, dtype in COLUMNS.items()):
        return frame
    return frame.reindex(columns=list(COLUMNS)).astype(COLUMNS)


def _distinct_newest(table: pa.Table, limit: int) -> pa.Table:
    """Return ``table`` with each request once, keeping its ``limit`` newest events in time order."""
    repeated = pd.Series(table["request_id"].to_numpy(zero_copy_only=False)).duplicated().to_numpy()
    table = table.filter(pa.array(~repeated))
    order = np.argsort(table["ts"].to_numpy(), kind="stable")
    return table.take(order[-limit:])
