"""What a device rebuilding an edited file from its own copy may skip: the runs of chunks it
copies at once, and the blocks whose digests it already knows (client/streaming.py)."""

from __future__ import annotations

import hashlib
import os

import pytest

from app.protocol import BLOCK_SIZE, MIB
from client.hashing import unmoved_blocks
from client.streaming import _runs

SYNCED = (100, 7)


def src(path: str, at: int, synced: tuple[int, int] = SYNCED) -> tuple[str, int, tuple[int, int]]:
    return (path, at, synced)


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        # Consecutive chunks from consecutive places of one file: one run.
        ([(0, src("a", 0), "x", 10), (1, src("a", 10), "y", 5)], [[0, 1]]),
        # A chunk the copy skips (changed, fetched) splits the run.
        ([(0, src("a", 0), "x", 10), (2, src("a", 15), "z", 5)], [[0], [2]]),
        # Same file, but not the next bytes there (an insert moved them): two runs.
        ([(0, src("a", 0), "x", 10), (1, src("a", 11), "y", 5)], [[0], [1]]),
        # Another file, or the same file as synced at another time: two runs.
        ([(0, src("a", 0), "x", 10), (1, src("b", 10), "y", 5)], [[0], [1]]),
        ([(0, src("a", 0), "x", 10), (1, src("a", 10, (100, 8)), "y", 5)], [[0], [1]]),
        ([], []),
    ],
)
def test_chunks_are_copied_in_runs(sources: list, expected: list[list[int]]) -> None:
    assert [[entry[0] for entry in run] for run in _runs(sources)] == expected


def digests(n: int) -> list[str]:
    return [hashlib.sha256(os.urandom(8)).hexdigest() for _ in range(n)]


OLD = digests(4)
B = BLOCK_SIZE


@pytest.mark.parametrize(
    ("unmoved", "old_size", "new_size", "known"),
    [
        # Everything copied from where it was: every block known.
        ([(0, 4 * B)], 4 * B, 4 * B, [0, 1, 2, 3]),
        # 1 MiB rewritten inside block 2 (that chunk fetched): the others known.
        ([(0, 2 * B + MIB), (2 * B + 2 * MIB, 4 * B)], 4 * B, 4 * B, [0, 1, 3]),
        # Two copied ranges that meet cover the block between them.
        ([(0, B + 10), (B + 10, 4 * B)], 4 * B, 4 * B, [0, 1, 2, 3]),
        # The file grew: the old last block was short, the new one is whole: not known.
        ([(0, 3 * B + 10)], 3 * B + 10, 4 * B, [0, 1, 2]),
        # The file shrank inside its last block: that block differs in length.
        ([(0, 3 * B + 10)], 4 * B, 3 * B + 10, [0, 1, 2]),
        # A short last block of the same length in both: known.
        ([(0, 3 * B + 10)], 3 * B + 10, 3 * B + 10, [0, 1, 2, 3]),
        # Nothing copied from the same place (bytes inserted at the start): none known.
        ([], 4 * B, 4 * B + 100, []),
        # A range starting inside a block does not make that block known.
        ([(B // 2, 4 * B)], 4 * B, 4 * B, [1, 2, 3]),
    ],
)
def test_blocks_known_from_the_old_copy(
    unmoved: list[tuple[int, int]], old_size: int, new_size: int, known: list[int]
) -> None:
    found = unmoved_blocks(unmoved, OLD, old_size, new_size)
    assert sorted(found) == known
    assert all(found[b] == OLD[b] for b in found)
