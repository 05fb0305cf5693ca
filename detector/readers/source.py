"""Opening input files: gzip detection, decompression, progress, and blocks of whole lines."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from detector.events import Reject
from detector.readers.base import ReaderError
from detector.readers.gzip_stream import GZIP_MAGIC, GzipDecoder, GzipStreamError

# Compressed bytes read per call when decompressing gzip. Each read reports progress once.
READ_SIZE = 4 << 20
# Bytes per block before it is cut at its last newline. Staying below glibc's 32 MiB
# mmap threshold lets malloc reuse freed blocks: fresh mappings cost 0.3 s of page
# faults per 486 MB file (measured, Python 3.11 on Debian 12).
BLOCK_SIZE = 24 << 20
# Longer lines are rejected unread, so one runaway line cannot exhaust memory.
# An event line is a few hundred bytes. Longer text fields are cut to 512
# characters, so a line under this limit is read even with a huge field.
MAX_LINE_BYTES = 64 << 20
# Bytes of (decompressed) content that format detection looks at.
HEAD_SIZE = 64 << 10
UTF8_BOM = b"\xef\xbb\xbf"
NEWLINE = ord("\n")
# Lines that start with a byte up to this one (space, tab, CR, other controls) may be blank.
SPACE = ord(" ")

Progress = Callable[[int], None]


class ReplayedStream:
    """A pipe or device read once: the bytes already read for format detection, then the rest."""

    def __init__(self, prefix: bytes, handle: BinaryIO) -> None:
        self.prefix = prefix
        self.handle = handle

    def read(self, size: int) -> bytes:
        """Return up to size bytes, b"" at the end."""
        if self.prefix:
            chunk, self.prefix = self.prefix[:size], self.prefix[size:]
            return chunk
        return self.handle.read(size)

    def readinto(self, buffer: memoryview) -> int:
        """Fill the start of buffer and return the number of bytes written, 0 at the end."""
        if self.prefix:
            count = min(len(buffer), len(self.prefix))
            buffer[:count] = self.prefix[:count]
            self.prefix = self.prefix[count:]
            return count
        return self.handle.readinto(buffer)

    def __enter__(self) -> ReplayedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.handle.close()


class InputFile:
    """An input path that yields its decompressed bytes and reports the raw bytes read.

    A regular file is opened again for each pass over it. Anything else (a FIFO,
    a process substitution such as ``<(zcat events.gz)``, a device) can be read
    only once, so its first HEAD_SIZE bytes are kept for format detection and
    replayed before the rest when the content is read.
    """

    def __init__(self, path: str | os.PathLike, progress: Progress | None = None) -> None:
        self.path = path
        self.name = os.fspath(path)
        self.progress = progress
        # Why reading the gzip stream stopped early ("truncated gzip stream: ...",
        # "gzip checksum mismatch: ..."), or None while it is complete and intact.
        self.gzip_error: str | None = None
        # Problems of the whole file that its reader found, for the summary's warnings.
        self.warnings: list[str] = []
        # The unread stream of an input that is not a regular file, until open() hands it out.
        self.stream: ReplayedStream | None = None

        handle = self._open_path()
        try:
            status = os.fstat(handle.fileno())
            self.is_regular = stat.S_ISREG(status.st_mode)
            if self.is_regular:
                self.prefix = b""
                self.is_gzip = handle.read(2) == GZIP_MAGIC
                self.size = status.st_size
            else:
                self.prefix = self._read_prefix(handle)
                self.is_gzip = self.prefix.startswith(GZIP_MAGIC)
                self.size = 0  # unknown until read
                self.stream = ReplayedStream(self.prefix, handle)
        finally:
            if self.stream is None:
                handle.close()

    def _open_path(self) -> BinaryIO:
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            raise ReaderError(f"{self.name}: file not found; check the path") from None
        except IsADirectoryError:
            raise ReaderError(f"{self.name}: is a directory; pass the event files inside it") from None
        except PermissionError:
            raise ReaderError(f"{self.name}: permission denied; make the file readable by this user") from None
        except OSError as error:
            raise ReaderError(f"{self.name}: cannot open the file: {error.strerror}") from None

    def _read_prefix(self, handle: BinaryIO) -> bytes:
        try:
            return handle.read(HEAD_SIZE)
        except OSError as error:
            raise ReaderError(f"{self.name}: read failed: {error.strerror}") from None

    def open(self) -> BinaryIO | ReplayedStream:
        """Return the input opened for binary reading; raise ReaderError if it cannot be.

        An input that is not a regular file can be opened only once.
        """
        if self.is_regular:
            return self._open_path()
        if self.stream is None:
            raise ReaderError(f"{self.name}: a pipe or device can be read only once; save it to a file first")
        stream, self.stream = self.stream, None
        return stream

    def _report(self, raw_bytes: int) -> None:
        if self.progress is not None and raw_bytes:
            self.progress(raw_bytes)

    def head(self) -> bytes:
        """Return up to HEAD_SIZE bytes of content from the start, decompressed if needed."""
        if self.is_regular:
            with self.open() as handle:
                raw = self._read_prefix(handle)
        else:
            raw = self.prefix
        if not self.is_gzip:
            return raw
        decoder = GzipDecoder(HEAD_SIZE)
        try:
            for content in decoder.feed(raw):
                return content
        except GzipStreamError:
            pass  # the content is damaged, possibly after what was decoded
        return b""

    def chunks(self) -> Iterator[bytes]:
        """Yield the content in pieces, setting ``gzip_error`` if a gzip stream stops early."""
        self.gzip_error = None
        with self.open() as handle:
            raw_chunks = self._read_raw(handle)
            if self.is_gzip:
                yield from self._decompress(raw_chunks)
            else:
                yield from raw_chunks

    def read_all(self) -> bytes:
        """Return the whole content, decompressed if needed."""
        return b"".join(self.chunks())

    def read_into(self, handle, buffer: bytearray, offset: int) -> int:
        """Fill buffer from offset on until it is full or the file ends, and return the bytes read."""
        filled = offset
        while filled < len(buffer):
            try:
                count = handle.readinto(memoryview(buffer)[filled:])
            except OSError as error:
                raise ReaderError(f"{self.name}: read failed: {error.strerror}") from None
            if not count:
                break
            filled += count
        self._report(filled - offset)
        return filled - offset

    def _read_raw(self, handle) -> Iterator[bytes]:
        while True:
            try:
                raw = handle.read(READ_SIZE)
            except OSError as error:
                raise ReaderError(f"{self.name}: read failed: {error.strerror}") from None
            if not raw:
                return
            self._report(len(raw))
            yield raw

    def _decompress(self, raw_chunks: Iterator[bytes]) -> Iterator[bytes]:
        decoder = GzipDecoder(BLOCK_SIZE)
        try:
            for raw in raw_chunks:
                yield from decoder.feed(raw)
            yield from decoder.finish()
        except GzipStreamError as error:
            self.gzip_error = str(error)


@dataclass(frozen=True, slots=True)
class LineBlock:
    """Whole lines of a file. Only the file's last line may lack its newline."""

    data: bytes | bytearray
    first_line: int
    # Byte offsets of the newlines in data.
    newlines: np.ndarray


class LineBlocks:
    """Iterate over an input file in blocks of about BLOCK_SIZE bytes cut at newlines.

    When a gzip stream stops early (truncated, invalid, or failing a member's
    trailer check), the incomplete last line is dropped, and ``next_line`` is
    the number of the line where the content stopped.
    """

    def __init__(self, input_file: InputFile, block_size: int = BLOCK_SIZE) -> None:
        self.input_file = input_file
        self.block_size = block_size
        self.next_line = 1
        # Numbers and byte lengths of the lines longer than MAX_LINE_BYTES, which were left out.
        self.long_lines: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[LineBlock]:
        if self.input_file.is_gzip:
            blocks = self._blocks_from_chunks(self.input_file.chunks())
        else:
            blocks = self._blocks_from_file()
        for data in blocks:
            if self.next_line == 1 and data.startswith(UTF8_BOM):
                data = data[len(UTF8_BOM) :]
            yield self._block(data)

    def _blocks_from_file(self) -> Iterator[bytearray]:
        # readinto fills each block in place, saving a copy per block over read() and join.
        rest = b""
        with self.input_file.open() as handle:
            while True:
                block = bytearray(len(rest) + self.block_size)
                block[: len(rest)] = rest
                count = self.input_file.read_into(handle, block, len(rest))
                del block[len(rest) + count :]
                if count < self.block_size:
                    if block:
                        yield block  # the end of the file
                    return

                cut = block.rfind(b"\n") + 1
                if cut == 0 and len(block) <= MAX_LINE_BYTES:
                    rest = bytes(block)  # no line ends in this much data: read on
                    continue
                if cut == 0:
                    rest = self._skip_long_line(len(block), self._raw_pieces(handle))
                    if rest is None:
                        return
                    continue
                rest = bytes(block[cut:])
                del block[cut:]
                yield block

    def _raw_pieces(self, handle) -> Iterator[bytes]:
        piece = bytearray(self.block_size)
        while count := self.input_file.read_into(handle, piece, 0):
            yield bytes(piece[:count])

    def _skip_long_line(self, length: int, pieces: Iterator[bytes]) -> bytes | None:
        """Drop the rest of a line longer than MAX_LINE_BYTES, of which ``length`` bytes were read.

        Returns what follows the line, starting with an empty line in its
        place so line numbers stay right, or None when the input ends first.
        """
        for piece in pieces:
            end = piece.find(b"\n")
            if end >= 0:
                self.long_lines.append((self.next_line, length + end))
                return b"\n" + piece[end + 1 :]
            length += len(piece)
        self.long_lines.append((self.next_line, length))
        return None

    def _blocks_from_chunks(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        pending: list[bytes] = []
        pending_size = 0
        # Bytes since the last newline in pending: the length of the line still open.
        open_line = 0
        for chunk in chunks:
            last_newline = chunk.rfind(b"\n")
            open_line = len(chunk) - last_newline - 1 if last_newline >= 0 else open_line + len(chunk)
            if open_line > MAX_LINE_BYTES:
                data = b"".join(pending) + chunk
                cut = len(data) - open_line
                if cut:
                    yield data[:cut]
                del data
                rest = self._skip_long_line(open_line, chunks)
                if rest is None:
                    return
                pending, pending_size, open_line = [rest], len(rest), len(rest) - rest.rfind(b"\n") - 1
                continue

            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size < self.block_size:
                continue

            # Cut inside the last chunk, so the block is built by one join and no slice of it.
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                continue  # no line ends in this chunk: keep collecting
            pending[-1] = chunk[:cut]
            block = b"".join(pending)
            rest = chunk[cut:]
            pending = [rest] if rest else []
            pending_size = len(rest)
            yield block

        rest = b"".join(pending)
        if self.input_file.gzip_error:
            # The bytes after the last newline are an incomplete line: drop them.
            rest = rest[: rest.rfind(b"\n") + 1]
        if rest:
            yield rest

    def _block(self, data: bytes | bytearray) -> LineBlock:
        newlines = newline_offsets(data)
        data = self._blank_long_lines(data, newlines)
        block = LineBlock(data, self.next_line, newlines)
        self.next_line += len(block.newlines)
        return block

    def _blank_long_lines(self, data: bytes | bytearray, newlines: np.ndarray) -> bytes | bytearray:
        """Overwrite lines longer than MAX_LINE_BYTES with spaces, so readers skip them as blank, and note them."""
        if len(data) <= MAX_LINE_BYTES:
            return data
        starts = np.concatenate(([0], newlines + 1))
        ends = np.append(newlines, len(data))
        overlong = np.flatnonzero(ends - starts > MAX_LINE_BYTES)
        if not len(overlong):
            return data
        data = bytearray(data)
        for line in overlong:
            start, end = int(starts[line]), int(ends[line])
            data[start:end] = b" " * (end - start)
            self.long_lines.append((self.next_line + int(line), end - start))
        return data

    def end_rejects(self) -> list[Reject]:
        """Return the rejects known only once the input is read: overlong lines and a gzip stream that stopped early."""
        rejects = [
            Reject(self.input_file.name, line, "-", f"line of {length:,} bytes is longer than the limit of "
                   f"{MAX_LINE_BYTES:,} bytes and was not read; an event is a few hundred bytes, so check that "
                   "this is an event file and that its lines end with newlines")
            for line, length in self.long_lines
        ]
        gzip_reject = self.gzip_error_reject()
        if gzip_reject is not None:
            rejects.append(gzip_reject)
        return rejects

    def gzip_error_reject(self) -> Reject | None:
        """Return the reject for a gzip stream that stopped early, or None if it was complete."""
        if self.input_file.gzip_error is None:
            return None
        if self.next_line == 1:
            reason = f"{self.input_file.gzip_error}; no line could be read, so check that the file was copied whole"
        else:
            reason = f"{self.input_file.gzip_error}; the lines before this one were read"
        return Reject(self.input_file.name, self.next_line, "-", reason)


@dataclass(frozen=True, slots=True)
class LineIndex:
    """Byte spans and 1-based numbers of the non-blank lines of a block."""

    starts: np.ndarray
    ends: np.ndarray  # offset of the line's newline, or of the end of the block
    numbers: np.ndarray

    def __len__(self) -> int:
        return len(self.numbers)


# Newlines are searched in slices of this many bytes, so each comparison mask stays
# in the CPU cache and below the mmap threshold. On a 24 MB block this took 7 ms
# instead of 12 ms for one whole-block mask (numpy 2, a 2-core VM).
NEWLINE_SLICE = 256 << 10


def newline_offsets(data: bytes) -> np.ndarray:
    """Return the byte offsets of the newlines in data."""
    content = np.frombuffer(data, dtype=np.uint8)
    if len(content) <= NEWLINE_SLICE:
        return np.flatnonzero(content == NEWLINE)
    parts = [
        np.flatnonzero(content[start : start + NEWLINE_SLICE] == NEWLINE) + start
        for start in range(0, len(content), NEWLINE_SLICE)
    ]
    return np.concatenate(parts)


def non_blank_line_numbers(data: bytes, first_line: int, newlines: np.ndarray | None = None) -> np.ndarray:
    """Return the 1-based numbers of the lines of data that are not blank.

    A line can only be blank if it starts with whitespace or a control byte, so
    this checks the byte after each newline and indexes lines only when needed.
    """
    if newlines is None:
        newlines = newline_offsets(data)
    content = np.frombuffer(data, dtype=np.uint8)
    line_starts = newlines[newlines + 1 < len(data)] + 1
    suspect = bool((content[line_starts] <= SPACE).any()) or (len(data) > 0 and content[0] <= SPACE)
    if suspect:
        return index_lines(data, first_line, newlines).numbers

    line_count = len(newlines) + (1 if data and data[-1] != NEWLINE else 0)
    return np.arange(first_line, first_line + line_count, dtype=np.int64)


def index_lines(data: bytes, first_line: int, newlines: np.ndarray | None = None) -> LineIndex:
    """Return the spans and numbers of the non-blank lines of data."""
    if newlines is None:
        newlines = newline_offsets(data)
    content = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(data)]))
    if starts[-1] == len(data):
        # data ends in a newline, so no line starts after it.
        starts, ends = starts[:-1], ends[:-1]
    numbers = np.arange(first_line, first_line + len(starts), dtype=np.int64)

    first_bytes = np.full(len(starts), NEWLINE, dtype=np.uint8)
    nonempty = starts < ends
    first_bytes[nonempty] = content[starts[nonempty]]
    blank = np.zeros(len(starts), dtype=bool)
    for line in np.flatnonzero(first_bytes <= SPACE):
        blank[line] = not data[starts[line] : ends[line]].strip()
    keep = ~blank
    return LineIndex(starts[keep], ends[keep], numbers[keep])
