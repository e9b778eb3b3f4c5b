"""Delta chunks (app/protocol/delta.py) and how the client picks each chunk's base."""

from __future__ import annotations

import random
import struct

import pytest

from app.protocol.delta import (
    COPY,
    DATA,
    PIECE_MAX,
    DeltaError,
    Rebuilder,
    encode,
    max_body_size,
    pieces,
)
from client.transfer import delta_bases

KIB = 1024
MIB = 1024 * KIB


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def rebuild(body: bytes, base: bytes, size: int, step: int = 1000) -> bytes:
    """Feed the body in `step`-byte slices, as a network would."""
    r = Rebuilder(base, size)
    out = b"".join(bytes(x) for i in range(0, len(body), step) for x in r.feed(body[i : i + step]))
    r.finish()
    return out


OLD = rand(MIB, 1)


@pytest.mark.parametrize(
    ("name", "new", "changed"),
    [
        ("identical", OLD, 0),
        ("overwrite in the middle", OLD[:300_000] + rand(100_000, 2) + OLD[400_000:], 100_000),
        ("overwrite at the start", rand(50_000, 3) + OLD[50_000:], 50_000),
        ("overwrite at the end", OLD[:-70_000] + rand(70_000, 4), 70_000),
        ("100 bytes inserted", OLD[:5_000] + rand(100, 5) + OLD[5_000:], 100),
        ("100 bytes deleted", OLD[:500_000] + OLD[500_100:], 0),
        ("shorter, truncated", OLD[:600_000], 0),
        ("all new", rand(MIB, 6), MIB),
    ],
)
def test_a_delta_sends_about_the_changed_bytes_and_rebuilds_them_exactly(
    name: str, new: bytes, changed: int
) -> None:
    body, copied = encode(new, pieces(OLD))
    assert rebuild(body, OLD, len(new)) == new
    # What travels: the changed bytes, plus at most a few pieces around each change.
    assert len(body) <= changed + 4 * PIECE_MAX, name
    # And the bytes kept are copied from the base, not sent again.
    assert copied >= len(new) - changed - 4 * PIECE_MAX, name
    assert len(body) <= max_body_size(len(new))


def test_without_a_base_every_byte_is_data() -> None:
    body, copied = encode(OLD, [])
    assert copied == 0
    assert rebuild(body, b"", len(OLD), step=65536) == OLD
    assert len(body) <= max_body_size(len(OLD))


def test_pieces_are_content_defined() -> None:
    """The same bytes cut the same wherever they sit: an insert moves pieces, keeps them."""
    shifted = pieces(b"x" * 100 + OLD)
    original = set(pieces(OLD))
    assert len([p for p in shifted if p in original]) >= len(original) - 2


def copy(offset: int, length: int) -> bytes:
    return struct.pack(">cII", COPY, offset, length)


def data(payload: bytes) -> bytes:
    return struct.pack(">cI", DATA, len(payload)) + payload


BASE = b"0123456789"


@pytest.mark.parametrize(
    ("body", "size", "error"),
    [
        (copy(0, 4) + data(b"ab"), 6, None),
        (b"X" + bytes(8), 4, "unknown delta record"),
        (copy(8, 4), 4, "past the end of its base"),
        (copy(0, 0), 0, "past the end of its base"),
        (data(b""), 0, "empty data record"),
        (copy(0, 4)[:5], 4, "ends inside a record"),
        (data(b"abcdef")[:7], 6, "ends inside a record"),
        (copy(0, 10), 4, "more than the 4 bytes"),
        (data(b"ab"), 4, "makes 2 bytes, 4 were registered"),
        (b"", 1, "makes 0 bytes"),
        # More records than any delta of the chunk has: a tiny zstd body could carry
        # millions of one-byte records.
        (data(b"a") * 20, 20, "more records than"),
    ],
)
def test_a_bad_delta_body_is_refused(body: bytes, size: int, error: str | None) -> None:
    if error is None:
        assert rebuild(body, BASE, size, step=1) == b"0123ab"
        return
    with pytest.raises(DeltaError, match=error):
        rebuild(body, BASE, size, step=3)


@pytest.mark.parametrize(
    ("chunks", "previous", "bases"),
    [
        # Nothing synced before: no bases.
        ([("a", 10)], [], {}),
        # Unchanged chunks need none; a changed one takes the one at its place.
        ([("a", 10), ("x", 10), ("c", 10)], [("a", 10), ("b", 10), ("c", 10)], {1: ["b"]}),
        # An insert made the first chunk longer: the old chunks it overlaps, in order.
        ([("x", 14), ("b", 10)], [("a", 10), ("b", 10)], {0: ["a", "b"]}),
        # Cut points moved: each new chunk takes every old chunk it overlaps.
        ([("x", 16), ("y", 4)], [("a", 10), ("b", 10)], {0: ["a", "b"], 1: ["b"]}),
        ([("x", 4), ("y", 16)], [("a", 10), ("b", 10)], {0: ["a"], 1: ["a", "b"]}),
        # Past the old end: nothing to build on.
        ([("a", 10), ("x", 10)], [("a", 10)], {}),
        # At most MAX_BASES: those it overlaps most, kept in file order.
        (
            [("x", 40)],
            [("a", 2), ("b", 10), ("c", 10), ("d", 3), ("e", 10), ("f", 5)],
            {0: ["b", "c", "e", "f"]},
        ),
    ],
)
def test_each_changed_chunk_names_the_previous_chunks_at_its_place(
    chunks: list[tuple[str, int]], previous: list[tuple[str, int]], bases: dict[int, list[str]]
) -> None:
    assert delta_bases(chunks, previous) == bases
