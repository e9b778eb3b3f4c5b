"""wsgidav's lock storage in MongoDB: every web instance sees every lock, and a lock
outlives the instance that granted it (until its timeout). The interface is wsgidav's
`LockStorageDict`; expired locks are treated as absent and purged when met."""

from __future__ import annotations

import time
from typing import Any

from wsgidav.lock_man.lock_manager import generate_lock_token, normalize_lock_root, validate_lock

from app.core import paths
from app.core.query import match
from app.dav.bridge import CURRENT, LoopBridge
from app.db.dav import DavLock

# A lock shuts others out: an hour when the client asks for "Infinite", a day at most
# (clients refresh the locks they still need; Nextcloud's own default is 30 minutes).
LOCK_TIMEOUT_DEFAULT = 3600.0
LOCK_TIMEOUT_MAX = 86400.0


def _timeout(requested: Any) -> float:
    timeout = float(requested) if requested is not None else LOCK_TIMEOUT_DEFAULT
    if timeout < 0:  # "Infinite"
        return LOCK_TIMEOUT_DEFAULT
    return min(timeout, LOCK_TIMEOUT_MAX)


class MongoLockStorage:
    def __init__(self, bridge: LoopBridge) -> None:
        self.bridge = bridge

    def __repr__(self) -> str:
        return type(self).__name__

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def cleanup(self) -> None:
        self.bridge.run(self._purge_expired())

    def clear(self) -> None:
        self.bridge.run(DavLock.get_pymongo_collection().delete_many({}))

    def get(self, token: str) -> dict[str, Any] | None:
        doc = self.bridge.run(DavLock.get(token))
        if doc is None:
            return None
        if 0 <= doc.expire < time.time():
            self.delete(token)
            return None
        return doc.lock

    def create(self, path: str, lock: dict[str, Any]) -> dict[str, Any]:
        root = normalize_lock_root(path)
        timeout = _timeout(lock.get("timeout"))
        lock.update(root=root, timeout=timeout, expire=time.time() + timeout)
        validate_lock(lock)
        lock["token"] = generate_lock_token()
        doc = DavLock(id=lock["token"], root=root, expire=lock["expire"], lock=lock)
        self.bridge.run(doc.insert())
        _lock_free_owners().discard(root.lstrip("/").partition("/")[0])
        return lock

    def refresh(self, token: str, *, timeout: float) -> dict[str, Any]:
        lock = self.get(token)
        if lock is None:
            raise ValueError(f"no such lock: {token}")
        timeout = _timeout(timeout)
        lock.update(timeout=timeout, expire=time.time() + timeout)
        self.bridge.run(
            DavLock.get_pymongo_collection().update_one(
                {"_id": token}, {"$set": {"expire": lock["expire"], "lock": lock}}
            )
        )
        return lock

    def delete(self, token: str) -> bool:
        result = self.bridge.run(DavLock.get_pymongo_collection().delete_one({"_id": token}))
        return bool(result.deleted_count)

    def get_lock_list(
        self, path: str, *, include_root: bool, include_children: bool, token_only: bool
    ) -> list[Any]:
        root = normalize_lock_root(path)
        # A listing asks this for every entry; locks are rare: one query tells whether
        # the owner holds any at all, and for the rest of the request none are looked up.
        free = _lock_free_owners()
        owner = root.lstrip("/").partition("/")[0]
        if owner in free:
            return []
        if not self.bridge.run(owner_holds_locks(owner)):
            free.add(owner)
            return []
        found = self.bridge.run(self._locks_under(root, include_root, include_children))
        return [lock["token"] for lock in found] if token_only else found

    async def _locks_under(
        self, root: str, include_root: bool, include_children: bool
    ) -> list[dict[str, Any]]:
        docs = []
        if include_root:
            docs += await DavLock.find(match(root=root)).to_list()
        if include_children:
            # Locks are few (held for the length of an edit): a range scan is cheap.
            docs += await DavLock.find({"root": paths.subtree_range(root)}).to_list()
        t = time.time()
        live = [d for d in docs if not 0 <= d.expire < t]
        if len(live) < len(docs):
            await self._purge_expired()
        return [d.lock for d in live]

    async def _purge_expired(self) -> None:
        await DavLock.get_pymongo_collection().delete_many(
            {"expire": {"$gte": 0, "$lt": time.time()}}
        )


async def owner_holds_locks(owner_id: str) -> bool:
    """Whether any lock is held in the owner's tree, its root included (lock roots are
    "/<owner id><path key>", the root's just "/<owner id>")."""
    root = f"/{owner_id}"
    held = await DavLock.get_pymongo_collection().find_one(
        {"root": {"$gte": root, "$lt": root + "0"}}, {"_id": 1}
    )
    return held is not None


def _lock_free_owners() -> set[str]:
    """Owners known, during this request, to hold no lock (empty outside a request)."""
    environ = getattr(CURRENT, "environ", None)
    if environ is None:
        return set()
    return environ.setdefault("coffer.lock_free_owners", set())
