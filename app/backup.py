"""`coffer-server backup DEST` / `restore SRC` for the embedded stack (nx-27017 + local blobs).

Backup may run while Coffer serves. It is consistent because:
- the metadata is one SQLite online-backup of each nx-27017 database file: a single read
  transaction, i.e. one point in time, whatever is being written meanwhile;
- blobs are immutable and content-addressed, and only garbage collection removes them;
  the backup pauses collection (gc.py) before the snapshot and until every blob is
  copied, so each chunk the snapshot references is still there to copy.
Blobs already in DEST with the right size are not copied again, so re-running a backup
into the same DEST is incremental.

Restore needs Coffer stopped. It never deletes: whatever the data dir held is moved to
`<data dir>/replaced-<time>/` first (only with --force when the data dir is not empty).

Production (real MongoDB, S3) is not covered here: use `mongodump --oplog` and bucket
versioning, as the README describes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from app.files.maintenance.gc import pause_file_for
from app.settings import Settings

MANIFEST = "coffer-backup.json"
PAUSE_SECONDS = 6 * 3600


class BackupError(SystemExit):
    pass


def _sqlite_snapshot(src: Path, dest: Path) -> None:
    tmp = dest.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(src)
    target = sqlite3.connect(tmp)
    try:
        source.backup(target)  # pages=-1: the whole database in one read transaction
    finally:
        target.close()
        source.close()
    os.replace(tmp, dest)


def _copy_blobs(src_root: Path, dest_root: Path) -> tuple[int, int, int]:
    """Copy chunk files not already present (same size) in dest; returns counts."""
    copied = skipped = nbytes = 0
    if not src_root.is_dir():
        return copied, skipped, nbytes
    for dirpath, _dirs, files in os.walk(src_root):
        rel = Path(dirpath).relative_to(src_root)
        for name in files:
            src = Path(dirpath) / name
            dest = dest_root / rel / name
            try:
                size = src.stat().st_size
            except FileNotFoundError:
                continue  # collected before the pause began: the snapshot does not use it
            if dest.exists() and dest.stat().st_size == size:
                skipped += 1
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(name + ".partial")
            try:
                shutil.copyfile(src, part)
            except FileNotFoundError:
                continue
            os.replace(part, dest)
            copied += 1
            nbytes += size
    return copied, skipped, nbytes


def backup(settings: Settings, dest: Path) -> dict[str, object]:
    data = settings.data_dir.resolve()
    if settings.mongodb_url:
        raise BackupError(
            "MONGODB_URL is set: back up that MongoDB with mongodump (see README, Backups)"
        )
    databases = sorted((data / "mongo").glob("*.db"))
    if not databases:
        raise BackupError(f"no Coffer database under {data / 'mongo'}: nothing to back up")
    dest = dest.resolve()
    (dest / "mongo").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pause = pause_file_for(data)
    pause.parent.mkdir(parents=True, exist_ok=True)
    pause.write_text(str(int((time.time() + PAUSE_SECONDS) * 1000)))
    try:
        # A collector checks the pause after marking each batch; give one in flight time
        # to see it before the snapshot is taken.
        time.sleep(0.5)
        for db in databases:
            _sqlite_snapshot(db, dest / "mongo" / db.name)
        copied, skipped, nbytes = (0, 0, 0)
        if settings.blob_store == "local":
            copied, skipped, nbytes = _copy_blobs(
                data / "blobs" / "chunks", dest / "blobs" / "chunks"
            )
    finally:
        pause.unlink(missing_ok=True)
    secret = data / "secret_key"
    if secret.exists():
        shutil.copyfile(secret, dest / "secret_key")
        os.chmod(dest / "secret_key", 0o600)
    manifest = {
        "created_at": datetime.now(UTC).isoformat(),
        "databases": [db.name for db in databases],
        "blob_store": settings.blob_store,
        "blobs_copied": copied,
        "blobs_already_there": skipped,
        "bytes_copied": nbytes,
        "seconds": round(time.monotonic() - started, 2),
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _running_pid(data: Path) -> int | None:
    pid_file = data / "run" / "mongo.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def restore(settings: Settings, src: Path, force: bool = False) -> dict[str, object]:
    src = src.resolve()
    if not (src / MANIFEST).exists():
        raise BackupError(f"{src} is not a Coffer backup (no {MANIFEST})")
    manifest = json.loads((src / MANIFEST).read_text())
    data = settings.data_dir.resolve()
    if (pid := _running_pid(data)) is not None:
        raise BackupError(f"Coffer is running on {data} (database pid {pid}); stop it first")
    existing = [
        p
        for p in (data / "mongo", data / "blobs", data / "secret_key")
        if p.exists() and (p.is_file() or any(p.iterdir()))
    ]
    moved_to = None
    if existing:
        if not force:
            raise BackupError(
                f"{data} already holds data; pass --force to move it aside and restore"
            )
        moved_to = data / f"replaced-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        moved_to.mkdir(parents=True)
        for p in existing:
            shutil.move(str(p), str(moved_to / p.name))
    (data / "mongo").mkdir(parents=True, exist_ok=True)
    for name in manifest["databases"]:
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                (data / "mongo" / (name + suffix)).unlink()
        shutil.copyfile(src / "mongo" / name, data / "mongo" / name)
    copied, _, nbytes = _copy_blobs(src / "blobs" / "chunks", data / "blobs" / "chunks")
    if (src / "secret_key").exists():
        shutil.copyfile(src / "secret_key", data / "secret_key")
        os.chmod(data / "secret_key", 0o600)
    return {
        "restored_from": str(src),
        "backup_created_at": manifest["created_at"],
        "blobs": copied,
        "bytes": nbytes,
        "previous_data_moved_to": str(moved_to) if moved_to else None,
    }
