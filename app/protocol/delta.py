"""Delta chunks: a new chunk sent as the runs it shares with an older chunk, plus the rest.

An edit to a large file changes a few of its content-defined chunks (about 1 MiB each), but
rarely all of each: an overwrite leaves the start of its first chunk and the end of its
last as they were, an insert leaves all but a few bytes. So the uploader names, for each
new chunk, the chunks of the file's current version at the same place (its *bases*: an
edit moves cut points, so one new chunk can span two old ones), and the server answers
with their *pieces*: the bases, one after the other, cut again with FastCDC into pieces of
about 16 KiB, each named by an 8-byte BLAKE2b. The uploader cuts its new chunk the same
way and sends a delta body: the runs of pieces the base has (COPY), and the bytes of the
others (DATA). Cut points depend only on the bytes around them, so the pieces of the
unchanged parts match wherever they moved to.

The server rebuilds the chunk from its stored bases and the body and, as for every chunk,
stores it only if it has the registered size and SHA-256: a piece-hash collision or a
lying client costs a refused PUT (the client then sends every byte), never a wrong byte.
Nothing here is trusted; the final hash is.

Body, a sequence of records, each a kind byte then big-endian fields:
    b"C" offset:u32 length:u32      copy base[offset : offset + length] (the bases joined)
    b"D" length:u32 <length bytes>  these bytes
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Final

from pyfastcdc import FastCDC

KIB: Final = 1024
# Pieces: about 16 KiB. Smaller finds more of an edited chunk's old bytes but makes the
# base's fingerprint longer (64 pieces per 1 MiB chunk at 16 KiB); an overwrite costs
# about one piece more than the bytes it changed, at each of its two ends.
PIECE_MIN: Final = 4 * KIB
PIECE_AVG: Final = 16 * KIB
PIECE_MAX: Final = 64 * KIB

# A chunk names at most this many chunks as its bases: those its bytes overlapped in the
# version it replaces (an edit moves cut points, so a new chunk can span two old ones).
MAX_BASES: Final = 4

_SHA256 = re.compile(r"[0-9a-f]{64}")


def valid_bases(shas: Sequence[str]) -> bool:
    """Whether a chunk's bases are well-formed: at most MAX_BASES different lowercase
    SHA-256 hex digests (the register's check and the delta URL's)."""
    return (
        len(shas) <= MAX_BASES
        and len(set(shas)) == len(shas)
        and all(_SHA256.fullmatch(sha) for sha in shas)
    )


COPY: Final = b"C"
DATA: Final = b"D"
_COPY = struct.Struct(">cII")
_DATA = struct.Struct(">cI")

# The pieces of a chunk, in order: (8-byte BLAKE2b hex, size).
Pieces = list[tuple[str, int]]


class DeltaError(ValueError):
    """A delta body that does not describe a chunk (truncated, out of range, too long)."""


def pieces(data: bytes | memoryview) -> Pieces:
    """Cut a chunk into content-defined pieces and name each."""
    if not data:
        return []
    cdc = FastCDC(PIECE_AVG, min_size=PIECE_MIN, max_size=PIECE_MAX)
    return [
        (hashlib.blake2b(p.data, digest_size=8).hexdigest(), p.length) for p in cdc.cut_buf(data)
    ]


def max_body_size(size: int) -> int:
    """The largest delta body a chunk of `size` bytes can need: every byte as DATA, with a
    record header per piece (a body over this is refused before it is read)."""
    return size + _DATA.size * (size // PIECE_MIN + 2)


def max_records(size: int) -> int:
    """The most records `encode` writes for a chunk of `size` bytes: runs alternate between
    COPY and DATA and each holds at least one piece (all but a chunk's last are at least
    PIECE_MIN). A body with more is refused: a zstd body of a few KiB could otherwise carry
    millions of one-byte records, seconds of CPU."""
    return 2 * (size // PIECE_MIN) + 8


def max_bases_size(size: int) -> int:
    """The most bytes of bases a chunk of `size` bytes may be built on (what its range
    overlapped is itself plus an old chunk at each end: the sync client's chunks average
    4 MiB, 16 MiB at most); more is not offered (the chunk goes whole). The server holds
    the bases in memory while it rebuilds the chunk: at most 64 MiB."""
    return 3 * size + 16 * 1024 * KIB


def encode(data: bytes | memoryview, base: Sequence[tuple[str, int]]) -> tuple[bytes, int]:
    """The delta body of `data` against a base with these pieces, and how many of its bytes
    are copied from the base."""
    where: dict[tuple[str, int], int] = {}
    offset = 0
    for name, size in base:
        where.setdefault((name, size), offset)
        offset += size
    view = memoryview(data)
    out = bytearray()
    copied = 0
    run: tuple[int, int] | None = None  # a COPY being extended: (base offset, length)
    data_start = data_end = 0  # a DATA run being extended: data[data_start:data_end]
    pos = 0
    for name, size in pieces(view):
        found = where.get((name, size))
        if found is None:
            if run is not None:
                out += _COPY.pack(COPY, *run)
                run = None
            if data_end != pos:
                data_start = pos
            data_end = pos + size
        else:
            if data_end > data_start:
                out += _DATA.pack(DATA, data_end - data_start) + view[data_start:data_end]
                data_start = data_end = 0
            if run is not None and run[0] + run[1] == found:
                run = (run[0], run[1] + size)
            else:
                if run is not None:
                    out += _COPY.pack(COPY, *run)
                run = (found, size)
            copied += size
        pos += size
    if run is not None:
        out += _COPY.pack(COPY, *run)
    if data_end > data_start:
        out += _DATA.pack(DATA, data_end - data_start) + view[data_start:data_end]
    return bytes(out), copied


class Rebuilder:
    """Turns a delta body, fed in any slices, back into the chunk's bytes.

    `feed(piece)` returns the chunk bytes that piece completes; `finish()` checks that the
    body ended on a record boundary with exactly `size` bytes made. Memory: the base (one
    chunk, bounded by the chunk size limit) and at most one record header."""

    def __init__(self, base: bytes | bytearray, size: int) -> None:
        self.base = base
        self.size = size
        self.made = 0
        self._header = bytearray()
        self._need = 0  # the size of the record header being read
        self._data_left = 0
        self._records_left = max_records(size)

    def feed(self, piece: bytes | memoryview) -> Iterator[bytes | memoryview]:
        view = memoryview(piece)
        while view:
            if self._data_left:
                take = view[: self._data_left]
                self._data_left -= len(take)
                view = view[len(take) :]
                yield self._made(take)
                continue
            if not self._header:
                kind = bytes(view[:1])
                if kind not in (COPY, DATA):
                    raise DeltaError(f"unknown delta record {kind!r}")
                self._records_left -= 1
                if self._records_left < 0:
                    raise DeltaError("more records than any delta of this chunk has")
                self._need = _COPY.size if kind == COPY else _DATA.size
            take = view[: self._need - len(self._header)]
            self._header += take
            view = view[len(take) :]
            if len(self._header) < self._need:
                continue
            header, kind = bytes(self._header), self._header[:1]
            self._header.clear()
            if kind == COPY:
                _, offset, length = _COPY.unpack(header)
                if length == 0 or offset + length > len(self.base):
                    raise DeltaError("a copy reaches past the end of its base")
                yield self._made(memoryview(self.base)[offset : offset + length])
            else:
                _, self._data_left = _DATA.unpack(header)
                if self._data_left == 0:
                    raise DeltaError("an empty data record")

    def _made(self, out: bytes | memoryview) -> bytes | memoryview:
        self.made += len(out)
        if self.made > self.size:
            raise DeltaError(f"the delta makes more than the {self.size} bytes registered")
        return out

    def finish(self) -> None:
        if self._header or self._data_left:
            raise DeltaError("the delta body ends inside a record")
        if self.made != self.size:
            raise DeltaError(f"the delta makes {self.made} bytes, {self.size} were registered")
