"""Content hashes the server can stand behind.

A file's content hash (app/protocol) is over its 4 MiB blocks, whatever chunks its
upload used. When the chunks are the blocks, the hash follows from the chunk digests the
server checks on every PUT: nothing to verify. Otherwise (content-defined chunks, small
chunks) the uploader claims a hash, and the server hashes the stored bytes itself:
- at commit, for files up to `verify_hash_at_commit_max`: a claim that does not match is
  refused (400 `hash_mismatch`) and nothing is committed;
- in the worker, for bigger files (the commit would wait seconds): until then the file
  says `hash_verified: false`; a claim that turns out wrong is replaced by the real hash,
  announced as a change of the file (same version, its true hash), and logged.
So a claimed hash that does not match the bytes never stands as a file's hash.
"""

from __future__ import annotations

import logging
import re

from beanie import PydanticObjectId

from app.core.errors import BadRequest, Conflict
from app.core.query import match
from app.db.accounts import User
from app.db.files import ChunkMapPage, FileNode, FileVersion
from app.files.integrity import read_verified_chunk
from app.files.scope import Caller, own_scope
from app.files.tree import FILES, TreeService
from app.protocol import FILE_UPDATED, ContentHasher
from app.storage.base import BlobStore

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_claim(claim: str | None) -> str | None:
    """A claimed content hash, lower-cased, if it is one (400 otherwise)."""
    if claim is None:
        return None
    claim = claim.lower()
    if not _HEX64.fullmatch(claim):
        raise BadRequest("content_hash must be 64 hex digits", code="invalid_hash")
    return claim


async def version_chunks(version: FileVersion) -> list[tuple[str, int]]:
    """The version's chunk list, in order."""
    chunks: list[tuple[str, int]] = []
    async for page in ChunkMapPage.find(match(version_id=str(version.id))).sort("+start_offset"):
        chunks += [(sha, size) for sha, size in page.chunks]
    return chunks


async def hash_from_store(
    store: BlobStore, owner: str, chunks: list[tuple[str, int]], expected: str | None = None
) -> str:
    """The content hash of the stored bytes (one chunk in memory at a time).

    With the hash the uploader claimed (`expected`), the chunks are read unverified first:
    bytes that give the claimed content hash are the bytes the uploader hashed (a damaged
    or wrong chunk would change it), so checking each chunk against its own SHA-256 too
    would only hash everything twice. When they do not give it, every chunk is read again,
    verified, so a damaged chunk is found and marked (CorruptData) rather than taken for a
    false claim (or a chunk gone from the store is marked missing). Without a claim, each
    chunk is verified as it is read."""
    if expected is not None:
        hasher = ContentHasher()
        try:
            for sha, _size in chunks:
                hasher.update(await store.read_all(owner, sha))
            if hasher.hexdigest() == expected:
                return expected
        except FileNotFoundError:
            pass  # the verified pass marks it missing (and the commit asks for it again)
    hasher = ContentHasher()
    for sha, size in chunks:
        hasher.update(await read_verified_chunk(store, owner, sha, size))
    return hasher.hexdigest()


async def settle_hash_at_commit(
    store: BlobStore, version: FileVersion, chunks: list[tuple[str, int]], limit: int
) -> None:
    """Before a commit: hash the stored bytes of a version whose hash is not derived, if
    it is small enough; refuse a claim they do not match. Bigger ones stay unverified."""
    if version.hash_verified or version.size > limit:
        return
    actual = await hash_from_store(store, version.owner_id, chunks, version.claimed_hash)
    if version.claimed_hash is not None and actual != version.claimed_hash:
        raise BadRequest(
            "the uploaded bytes do not have the content_hash given for them",
            code="hash_mismatch",
        )
    await FileVersion.get_pymongo_collection().update_one(
        {"_id": version.id}, {"$set": {"content_hash": actual, "hash_verified": True}}
    )
    version.content_hash, version.hash_verified = actual, True


async def verify_pending_hashes(store: BlobStore, tree: TreeService, limit: int = 20) -> int:
    """The worker's sweep: hash the stored bytes of committed versions whose hash is still
    a claim. Returns how many it settled."""
    versions = (
        await FileVersion.find(match(hash_verified=False, state="committed")).limit(limit).to_list()
    )
    for version in versions:
        chunks = await version_chunks(version)
        actual = await hash_from_store(store, version.owner_id, chunks, version.content_hash)
        node = await FileNode.get(PydanticObjectId(version.file_id))
        if node is not None and node.head_version_id == str(version.id):
            if actual == node.content_hash:
                await FileNode.get_pymongo_collection().update_one(
                    {"_id": node.id, "head_version_id": str(version.id)},
                    {"$set": {"hash_verified": True}},
                )
            elif not await _correct_head(tree, node, actual):
                continue  # changed meanwhile: the next sweep looks again
        # Not the head (any more): only its history entry changes.
        await FileVersion.get_pymongo_collection().update_one(
            {"_id": version.id}, {"$set": {"content_hash": actual, "hash_verified": True}}
        )
    return len(versions)


async def _correct_head(tree: TreeService, node: FileNode, actual: str) -> bool:
    """Replace a head's wrong claimed hash by the bytes' own and announce it as a change of
    the file (devices that recorded the claim then fetch the same bytes again and record
    the true hash). False if the node changed meanwhile."""
    log.warning(
        "%s (version %s): the uploader claimed content hash %s, the bytes have %s",
        node.path,
        node.version,
        node.content_hash,
        actual,
    )
    owner = await User.get(PydanticObjectId(node.owner_id))
    if owner is None:
        return True
    scope = own_scope(Caller(user=owner, device=None, base_url=""))
    try:
        fresh, change = await tree.compare_and_set(
            scope,
            node,
            FILE_UPDATED,
            {"content_hash": actual, "hash_verified": True},
            trashed=node.deleted_at is not None,
        )
    except Conflict:
        return False
    await tree.feed.changed(FILES, str(fresh.id), change)
    return True
