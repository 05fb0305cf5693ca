"""gzip decompression that keeps the content decoded before a damaged spot.

zlib's own gzip mode (wbits=31) raises on a bad trailer checksum and drops the
output of that call, which can be a whole small file. This decoder parses the
RFC 1952 member header and trailer itself, inflates raw deflate data and checks
CRC-32 and length after the content has been yielded.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

GZIP_MAGIC = b"\x1f\x8b"
DEFLATE_METHOD = 8
FIXED_HEADER_SIZE = 10
TRAILER_SIZE = 8
# Header flag bits (RFC 1952, section 2.3.1). FTEXT (1) needs no handling.
FLAG_HEADER_CRC = 0x02
FLAG_EXTRA = 0x04
FLAG_NAME = 0x08
FLAG_COMMENT = 0x10
RESERVED_FLAGS = 0xE0

TRUNCATED = "truncated gzip stream: the file ends before the gzip end-of-stream marker"


class GzipStreamError(Exception):
    """A gzip stream that is invalid or ends early. The message is the reason."""


def gzip_header_size(data: bytes) -> int | None:
    """Return the length of the gzip member header at the start of data, or None if data ends inside it.

    Raises GzipStreamError when data does not start a gzip member.
    """
    if data[:2] != GZIP_MAGIC[: len(data[:2])]:
        raise GzipStreamError("invalid gzip stream (bytes after a gzip member do not start another member)")
    if len(data) < FIXED_HEADER_SIZE:
        return None
    method, flags = data[2], data[3]
    if method != DEFLATE_METHOD:
        raise GzipStreamError(f"invalid gzip stream (unknown compression method {method})")
    if flags & RESERVED_FLAGS:
        raise GzipStreamError("invalid gzip stream (reserved header flags are set)")

    position = FIXED_HEADER_SIZE
    if flags & FLAG_EXTRA:
        if len(data) < position + 2:
            return None
        position += 2 + struct.unpack_from("<H", data, position)[0]
    for flag in (FLAG_NAME, FLAG_COMMENT):
        if flags & flag:
            end = data.find(b"\x00", position)
            if end < 0:
                return None
            position = end + 1
    if flags & FLAG_HEADER_CRC:
        position += 2
    return position if len(data) >= position else None


class GzipDecoder:
    """Decompress one or more concatenated gzip members fed in pieces, as gzip(1) reads them."""

    def __init__(self, max_output: int) -> None:
        # Maximum bytes per yielded piece, which bounds the memory of one inflate call.
        self.max_output = max_output
        self.pending = b""
        self.members = 0
        # Raw deflate decompressor while inside a member's compressed data, else None.
        self.inflater = None
        self.awaiting_trailer = False
        self.crc = 0
        self.size = 0

    def feed(self, raw: bytes) -> Iterator[bytes]:
        """Yield the content that raw completes. Raise GzipStreamError where the stream is damaged."""
        self.pending = self.pending + raw if self.pending else raw
        while True:
            if self.inflater is not None:
                yield from self._inflate()
                if self.inflater is not None:
                    return  # the member's data continues in the next piece
            elif self.awaiting_trailer:
                if len(self.pending) < TRAILER_SIZE:
                    return
                self._check_trailer()
            elif not self._start_member():
                return

    def finish(self) -> Iterator[bytes]:
        """Yield what remains at the end of the input. Raise GzipStreamError if the stream is incomplete."""
        if self.inflater is not None:
            tail = self.inflater.flush()
            if tail:
                yield tail
            raise GzipStreamError(TRUNCATED)
        if self.awaiting_trailer or self._skip_padding():
            raise GzipStreamError(TRUNCATED)

    def _skip_padding(self) -> bytes:
        # Python's gzip module (3.11, _read_eof) skips zero padding after a member too.
        if self.members:
            self.pending = self.pending.lstrip(b"\x00")
        return self.pending

    def _start_member(self) -> bool:
        if not self._skip_padding():
            return False
        header_size = gzip_header_size(self.pending)
        if header_size is None:
            return False
        self.pending = self.pending[header_size:]
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.members += 1
        self.crc = 0
        self.size = 0
        return True

    def _inflate(self) -> Iterator[bytes]:
        while True:
            try:
                content = self.inflater.decompress(self.pending, self.max_output)
            except zlib.error as error:
                raise GzipStreamError(f"invalid gzip stream ({error})") from None
            if content:
                self.crc = zlib.crc32(content, self.crc)
                self.size += len(content)
                yield content
            if self.inflater.eof:
                self.pending = self.inflater.unused_data
                self.inflater = None
                self.awaiting_trailer = True
                return
            self.pending = self.inflater.unconsumed_tail
            # A full-sized output means more may wait without new input. Otherwise
            # zlib consumed all of pending and needs the next piece.
            if len(content) < self.max_output:
                return

    def _check_trailer(self) -> None:
        crc, size = struct.unpack_from("<II", self.pending)
        self.pending = self.pending[TRAILER_SIZE:]
        self.awaiting_trailer = False
        if crc != self.crc:
            raise GzipStreamError(
                f"gzip checksum mismatch: the CRC-32 in the trailer of member {self.members} does not match "
                "its decompressed data, which may be damaged"
            )
        if size != self.size & 0xFFFFFFFF:
            raise GzipStreamError(
                f"gzip length mismatch: the trailer of member {self.members} gives {size} bytes, "
                f"the member decompressed to {self.size & 0xFFFFFFFF} (modulo 2**32)"
            )
