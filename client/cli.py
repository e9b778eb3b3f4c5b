"""`coffer`: log in, sync a folder live, and move single files from the command line.

    coffer login URL [--username U --password-stdin] [--device-name NAME]
    coffer logout
    coffer sync DIR [--remote /path] [--once]
    coffer upload FILE REMOTE | download REMOTE FILE | ls [REMOTE] | rm REMOTE
    coffer share REMOTE USER --role viewer|editor
    coffer link REMOTE [--password] [--expires 7d]
    coffer status [DIR]
    coffer devices [revoke ID | revoke --others]

Exit codes: 0 done, 1 failed, 2 bad usage, 3 not logged in or wrong password,
4 server unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import getpass
import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from client.api import ApiError, CofferClient
from client.config import Login, forget_login, load_login, save_login
from client.sync import Syncer

EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_UNREACHABLE = 1, 2, 3, 4
console = Console(stderr=True)


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def remote_path(raw: str) -> str:
    return "/" + raw.strip("/")


def expiry(text: str) -> str:
    """'7d', '12h', '30m' (or an ISO-8601 time) as the ISO-8601 UTC time the API takes."""
    units = {"d": 86400, "h": 3600, "m": 60}
    if text[:-1].isdigit() and text[-1:] in units:
        when = datetime.now(UTC) + timedelta(seconds=int(text[:-1]) * units[text[-1]])
        return when.isoformat().replace("+00:00", "Z")
    return text


def progress_bar(quiet: bool) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    )


def client_for(login: Login) -> CofferClient:
    return CofferClient(login.url, login.token)


def need_login() -> Login:
    login = load_login()
    if login is None:
        raise CliError("not logged in: run `coffer login URL` first", EXIT_AUTH)
    return login


async def find(api: CofferClient, path: str) -> dict[str, Any]:
    parent = str(PurePosixPath(path).parent)
    try:
        items = await api.list(parent)
    except ApiError as exc:
        if exc.status == 404:
            raise CliError(f"{path}: no such file or folder") from None
        raise
    for item in items:
        if item["path"].casefold() == path.casefold():
            return item
    raise CliError(f"{path}: no such file or folder")


# ------------------------------------------------------------------- commands


async def cmd_login(args: argparse.Namespace) -> int:
    username = args.username or input("Username: ")
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass()
    device = args.device_name or socket.gethostname()
    async with CofferClient(args.url.rstrip("/")) as api:
        try:
            token = await api.login_token(username, password, device)
        except ApiError as exc:
            if exc.status in (400, 401):
                raise CliError("wrong username or password", EXIT_AUTH) from None
            raise
    path = save_login(Login(args.url.rstrip("/"), token, username, device))
    print(f"logged in to {args.url} as {username} (device {device}); token in {path}")
    return 0


async def cmd_logout(args: argparse.Namespace) -> int:
    login = load_login()
    if login is None:
        print("not logged in")
        return 0
    async with client_for(login) as api:
        with contextlib.suppress(ApiError, httpx.HTTPError):
            await api.request("DELETE", "/api/auth/token")
    forget_login()
    print("logged out")
    return 0


async def cmd_ls(args: argparse.Namespace) -> int:
    async with client_for(need_login()) as api:
        try:
            items = await api.list(remote_path(args.remote))
        except ApiError as exc:
            if exc.status == 404:
                raise CliError(f"{args.remote}: no such folder") from None
            raise
    for item in items:
        kind = "d" if item["kind"] == "folder" else "-"
        flag = " DAMAGED" if item.get("damaged") else ""
        print(f"{kind} {item['size']:>12} {item['modified_at'][:19]} {item['name']}{flag}")
    return 0


async def cmd_upload(args: argparse.Namespace) -> int:
    local = Path(args.file)
    if not local.is_file():
        raise CliError(f"{local}: no such file")
    target = remote_path(args.remote)
    if args.remote.endswith("/"):
        target = target.rstrip("/") + "/" + local.name
    async with client_for(need_login()) as api:
        with progress_bar(args.quiet) as bar:
            task = bar.add_task(local.name, total=local.stat().st_size)
            f = await api.upload(local, target, progress=lambda n: bar.advance(task, n))
    if not args.quiet:
        print(f"{f['path']}  version {f['version']}  {f['size']} bytes")
    return 0


async def cmd_download(args: argparse.Namespace) -> int:
    async with client_for(need_login()) as api:
        item = await find(api, remote_path(args.remote))
        if item["kind"] != "file":
            raise CliError(f"{args.remote} is a folder")
        dest = Path(args.file)
        if dest.is_dir():
            dest = dest / item["name"]
        part = dest.with_name(f".{dest.name}.coffer-part")
        with progress_bar(args.quiet) as bar:
            task = bar.add_task(item["name"], total=item["size"])
            await api.download(item["id"], part, progress=lambda n: bar.advance(task, n))
        part.replace(dest)
    if not args.quiet:
        print(f"{dest}  {item['size']} bytes")
    return 0


async def cmd_rm(args: argparse.Namespace) -> int:
    async with client_for(need_login()) as api:
        item = await find(api, remote_path(args.remote))
        await api.request("DELETE", f"/api/file/{item['id']}")
    print(f"moved {item['path']} to the trash")
    return 0


async def cmd_share(args: argparse.Namespace) -> int:
    async with client_for(need_login()) as api:
        item = await find(api, remote_path(args.remote))
        await api.request(
            "POST", f"/api/file/{item['id']}/share", json={"username": args.user, "role": args.role}
        )
    print(f"shared {item['path']} with {args.user} as {args.role}")
    return 0


async def cmd_link(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"allow_download": True}
    if args.password:
        body["password"] = getpass.getpass("Link password: ")
    if args.expires:
        body["expires_at"] = expiry(args.expires)
    async with client_for(need_login()) as api:
        item = await find(api, remote_path(args.remote))
        link = await api.request("POST", f"/api/file/{item['id']}/links", json=body)
    print(link["url"])
    return 0


async def cmd_devices(args: argparse.Namespace) -> int:
    """List this account's devices and browser sessions, or cut one (or all others) off."""
    async with client_for(need_login()) as api:
        if args.action == "revoke":
            if args.others:
                body = await api.request("POST", "/api/devices/revoke-others")
                print(f"signed out {body['revoked']} other device(s) and session(s)")
                return 0
            if not args.id:
                raise CliError("give the ID to revoke (see `coffer devices`), or --others", 2)
            try:
                await api.request("DELETE", f"/api/devices/{args.id}")
            except ApiError as exc:
                if exc.status == 404:
                    raise CliError(f"{args.id}: no such device or session") from None
                raise
            print(f"revoked {args.id}")
            return 0
        items = (await api.request("GET", "/api/devices"))["items"]
    for d in items:
        used = (d["last_used_at"] or d["created_at"])[:16].replace("T", " ")
        here = "  (this device)" if d["current"] else ""
        print(
            f"{d['id']}  {d['kind']:<7}  {d['name'][:30]:<30}  last used {used}"
            f"  from {d['address'] or '?'}{here}"
        )
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    login = load_login()
    print(f"logged in to {login.url} as {login.username}" if login else "not logged in")
    folder = Path(args.dir).resolve()
    if not (folder / ".coffer" / "state.db").exists():
        print(f"{folder} is not synced yet (run `coffer sync {args.dir}`)")
        return 0
    syncer = Syncer(CofferClient(login.url if login else "http://invalid"), folder, "/", "")
    files, _ = syncer.scan_local()
    known = syncer.state.all()
    pending = [
        rel
        for rel, lf in files.items()
        if rel not in known or not Syncer._unchanged(lf, known[rel])
    ]
    gone = [rel for rel, e in known.items() if e.kind == "file" and rel not in files]
    print(f"{len(known)} synced entries, cursor {syncer.state.get_meta('cursor')}")
    for rel in sorted(pending):
        print(f"  to upload: {rel}")
    for rel in sorted(gone):
        print(f"  to delete remotely: {rel}")
    if not pending and not gone:
        print("  nothing pending locally")
    await syncer.api.close()
    return 0


async def cmd_sync(args: argparse.Namespace) -> int:
    login = need_login()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    log = (lambda _m: None) if args.quiet else (lambda m: console.print(m, highlight=False))
    if os.environ.get("COFFER_SYNC_TRACE"):  # timestamps on stderr, for benchmarks
        log = lambda m: print(f"{time.time():.3f} {m}", file=sys.stderr, flush=True)  # noqa: E731
    bars = progress_bar(args.quiet)
    async with client_for(login) as api:
        syncer = Syncer(api, folder, args.remote, login.device_name, log=log, progress=bars)
        syncer.discard_interrupted_downloads()
        if not args.once:
            with bars:
                await LiveSync(syncer).run()
            return 0
        with bars:
            report = await syncer.reconcile()
        stats = api.stats
        print(
            json.dumps(
                {
                    **vars(report),
                    "chunks_sent": stats.chunks_sent,
                    "bytes_sent": stats.bytes_sent,
                    "bytes_received": stats.bytes_received,
                }
            )
        )
        return 1 if report.skipped else 0


class LiveSync:
    """Keep syncing: a local change (watchdog) or a remote event (WebSocket or long-poll
    feed) starts a pass; passes never overlap and changes that arrive during one start
    another. Changed files the watcher named get a targeted pass (no tree walk, no remote
    listing); folders, renames, remote changes that need it, and a rescan every
    `RESCAN_SECONDS` (a safety net for events the watcher may drop) get a full one."""

    RESCAN_SECONDS = 600
    RETRY_SKIPPED_SECONDS = 30

    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.wake = asyncio.Event()
        self.stop = asyncio.Event()
        self.passed = asyncio.Event()  # set after each pass
        self.dirty: set[str] = set()  # files the watcher saw change since the last pass
        self.moves: list[tuple[str, str]] = []  # files it saw renamed, in order
        self.full_needed = False

    def local_change(self, rel: str | None) -> None:
        """A file changed (rel), or something only a full pass handles (None)."""
        if rel is None:
            self.full_needed = True
        else:
            self.dirty.add(rel)
        self.wake.set()

    def local_move(self, src: str, dest: str) -> None:
        self.moves.append((src, dest))
        self.wake.set()

    async def run(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        loop = asyncio.get_running_loop()
        root = self.syncer.root
        state_dir = str(root / ".coffer")
        changed, moved = self.local_change, self.local_move

        def rel_of(path: str) -> str:
            return os.path.relpath(path, root).replace(os.sep, "/")

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                src = str(event.src_path)
                if src.startswith(state_dir):
                    return  # our own state, and downloads renamed into place from .coffer/tmp
                if event.is_directory and event.event_type == "modified":
                    return  # an entry inside changed: that entry has its own event
                if event.is_directory or (
                    event.event_type == "moved" and str(event.dest_path).startswith(state_dir)
                ):
                    loop.call_soon_threadsafe(changed, None)  # folders: the full pass
                elif event.event_type == "moved":
                    loop.call_soon_threadsafe(moved, rel_of(src), rel_of(str(event.dest_path)))
                else:
                    loop.call_soon_threadsafe(changed, rel_of(src))

        observer = Observer()
        observer.schedule(Handler(), str(root), recursive=True)
        observer.start()
        try:
            # The first full pass starts once the watcher is up, so no change slips
            # between them. Its errors end the command (exit codes 3 and 4).
            await self.syncer.reconcile()
        except BaseException:
            observer.stop()
            raise
        self.dirty.clear()  # the pass saw these
        self.moves.clear()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        feed = asyncio.create_task(self.follow_feed())
        try:
            while not self.stop.is_set():
                waiter = asyncio.create_task(self.wake.wait())
                stopper = asyncio.create_task(self.stop.wait())
                done, _ = await asyncio.wait(
                    {waiter, stopper},
                    timeout=self.RESCAN_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
                stopper.cancel()
                if self.stop.is_set():
                    break
                if not done:
                    self.full_needed = True  # the periodic rescan
                await asyncio.sleep(0.02)  # let a burst of events settle
                self.wake.clear()
                self.passed.clear()
                dirty, self.dirty = self.dirty, set()
                moves, self.moves = self.moves, []
                full, self.full_needed = self.full_needed or not (dirty or moves), False
                skipped = len(self.syncer.report.skipped)
                await self.pass_with_retry(None if full else (dirty, moves))
                self.passed.set()
                if len(self.syncer.report.skipped) > skipped:
                    # Files skipped for a full disk or permissions: try again in a while.
                    loop.call_later(self.RETRY_SKIPPED_SECONDS, self.local_change, None)
        finally:
            feed.cancel()
            observer.stop()
            await asyncio.to_thread(observer.join)

    async def pass_with_retry(self, changes: tuple[set[str], list[tuple[str, str]]] | None) -> None:
        """A targeted pass over the changed and renamed files (None: a full pass), falling
        back to a full pass when it cannot decide alone or fails; retried with backoff
        while unreachable."""
        delay = 0.5
        while not self.stop.is_set():
            try:
                if changes is not None and await self.syncer.sync_paths(*changes):
                    return
                changes = None
                await self.syncer.reconcile()
                return
            except (httpx.HTTPError, ApiError) as exc:
                if changes is not None:
                    changes = None  # whatever went wrong, the full pass re-examines it all
                    continue
                if isinstance(exc, ApiError) and exc.status < 500 and exc.status != 429:
                    self.syncer.log(f"sync error: {exc}")
                    return
                self.syncer.log(f"server unreachable ({exc}); retrying in {delay:.0f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def follow_feed(self) -> None:
        """Follow the change feed: the WebSocket while it works, long-poll otherwise.
        Any event under the synced folder starts a pass."""
        delay = 0.5
        while True:
            try:
                await self.follow_socket()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.syncer.log(f"push channel unavailable ({exc}); long-polling")
                polled = await self.long_poll_for(60.0)
                if not polled:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30)

    def cursor(self) -> str:
        return self.syncer.state.get_meta("cursor") or "latest"

    async def follow_socket(self) -> None:
        from websockets.asyncio.client import connect

        api = self.syncer.api
        url = str(api.http.base_url).replace("http", "ws", 1).rstrip("/") + "/api/ws"
        headers = {"Authorization": api.http.headers["Authorization"]}
        async with connect(
            f"{url}?cursor={self.cursor()}", additional_headers=headers, open_timeout=10
        ) as socket:
            async for raw in socket:
                message = json.loads(raw)
                if message.get("type") == "heartbeat":
                    self.syncer.state.set_meta("cursor", str(message["cursor"]))
                    continue
                await self.handle([message], str(message["seq"]))

    async def long_poll_for(self, seconds: float) -> bool:
        """Long-poll for a while (then the socket is tried again); False if unreachable."""
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            try:
                body = await self.syncer.api.request(
                    "GET",
                    "/api/file/events",
                    params={"cursor": self.cursor(), "wait": 25},
                    timeout=40,
                )
            except (httpx.HTTPError, ApiError):
                return False
            await self.handle(body["events"], str(body["cursor"]))
        return True

    async def handle(self, events: list[dict[str, Any]], cursor: str) -> None:
        relevant = [
            e
            for e in events
            if self.syncer.rel_of(e.get("path") or "") is not None
            or self.syncer.rel_of(e.get("old_path") or "") is not None
        ]
        if relevant and not await self.syncer.apply_events(relevant):
            # Move the cursor on only after a pass that began after these events.
            self.passed.clear()
            self.local_change(None)
            await self.passed.wait()
        self.syncer.state.set_meta("cursor", cursor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coffer", description="Coffer sync client")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("login", help="log in and store a device token")
    p.add_argument("url")
    p.add_argument("--username")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--device-name")
    sub.add_parser("logout", help="revoke this device's token")
    p = sub.add_parser("sync", help="sync a folder (live until Ctrl-C, or --once)")
    p.add_argument("dir")
    p.add_argument("--remote", default="/")
    p.add_argument("--once", action="store_true")
    p = sub.add_parser("upload")
    p.add_argument("file")
    p.add_argument("remote")
    p = sub.add_parser("download")
    p.add_argument("remote")
    p.add_argument("file")
    p = sub.add_parser("ls")
    p.add_argument("remote", nargs="?", default="/")
    p = sub.add_parser("rm")
    p.add_argument("remote")
    p = sub.add_parser("share")
    p.add_argument("remote")
    p.add_argument("user")
    p.add_argument("--role", choices=["viewer", "editor"], default="viewer")
    p = sub.add_parser("link")
    p.add_argument("remote")
    p.add_argument("--password", action="store_true")
    p.add_argument("--expires", help="e.g. 7d, 12h")
    p = sub.add_parser("status")
    p.add_argument("dir", nargs="?", default=".")
    p = sub.add_parser("devices", help="list signed-in devices and sessions; revoke one")
    p.add_argument("action", nargs="?", choices=["list", "revoke"], default="list")
    p.add_argument("id", nargs="?")
    p.add_argument("--others", action="store_true", help="revoke every other device")
    return parser


COMMANDS = {
    "login": cmd_login,
    "logout": cmd_logout,
    "sync": cmd_sync,
    "upload": cmd_upload,
    "download": cmd_download,
    "ls": cmd_ls,
    "rm": cmd_rm,
    "share": cmd_share,
    "link": cmd_link,
    "status": cmd_status,
    "devices": cmd_devices,
}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = asyncio.run(COMMANDS[args.command](args))
    except CliError as exc:
        console.print(f"coffer: {exc}", highlight=False)
        code = exc.code
    except httpx.ConnectError as exc:
        console.print(f"coffer: server unreachable ({exc})", highlight=False)
        code = EXIT_UNREACHABLE
    except ApiError as exc:
        if exc.status == 401:
            console.print("coffer: the server refused the token: run `coffer login` again")
            code = EXIT_AUTH
        else:
            console.print(f"coffer: {exc}", highlight=False)
            code = EXIT_FAILED
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        console.print(f"coffer: {'disk full: ' if full else ''}{exc}", highlight=False)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    threading.current_thread().name = "coffer"
    main()
