"""`coffer`: log in, sync a folder live, and move single files from the command line.

The commands only: syncing is client/sync.py (and client/live.py for `sync` without
`--once`), transfers client/transfer.py, the API client/api.py.

    coffer login URL [--username U --password-stdin] [--device-name NAME]
    coffer logout
    coffer sync DIR [--remote /path] [--once] [--exclude /FOLDER] [--include /FOLDER]
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
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
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

from client.api import CofferClient
from client.config import Login, forget_login, load_login, save_login
from client.errors import ApiError, ClientError
from client.ignore import Ignore
from client.scanner import Scanner, unchanged
from client.state import SyncState
from client.sync import Syncer
from client.transfer import fetch

EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_UNREACHABLE = 1, 2, 3, 4
console = Console(stderr=True)


class CliError(Exception):
    """A command cannot go on: the message for the user and the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def remote_path(raw: str) -> str:
    """A server path as the user typed it, made absolute."""
    return "/" + raw.strip("/")


def expiry(text: str) -> str:
    """'7d', '12h', '30m' (or an ISO-8601 time) as the ISO-8601 UTC time the API takes."""
    units = {"d": 86400, "h": 3600, "m": 60}
    if text[:-1].isdigit() and text[-1:] in units:
        when = datetime.now(UTC) + timedelta(seconds=int(text[:-1]) * units[text[-1]])
        return when.isoformat().replace("+00:00", "Z")
    return text


def progress_bar(quiet: bool) -> Progress:
    """Bars for long transfers (bytes, speed, time left); none when quiet or not a
    terminal."""
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
    """The file or folder at a server path (CliError when there is none)."""
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
            await api.revoke_token()
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


async def cmd_find(args: argparse.Namespace) -> int:
    """Print what matches, as `ls` does, with each item's path (shared items under the
    name of what was shared and the owner's username)."""
    shown = 0
    async with client_for(need_login()) as api:
        try:
            async for item in api.search(args.query):
                kind = "d" if item["kind"] == "folder" else "-"
                owner = f"  ({item['owner']})" if item.get("role") != "owner" else ""
                print(f"{kind} {item['size']:>12} {item['modified_at'][:19]} {item['path']}{owner}")
                shown += 1
                if args.limit and shown >= args.limit:
                    break
        except ApiError as exc:
            if exc.status == 400:
                raise CliError(exc.message, EXIT_USAGE) from None
            raise
    return 0 if shown else 1


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
        # Verified like sync's downloads; renamed into place only when whole and intact.
        part = dest.with_name(f".{dest.name}.coffer-part")
        with progress_bar(args.quiet) as bar:
            task = bar.add_task(item["name"], total=item["size"])
            await fetch(api, item["id"], dest, part, advance=lambda n: bar.advance(task, n))
    if not args.quiet:
        print(f"{dest}  {item['size']} bytes")
    return 0


async def cmd_rm(args: argparse.Namespace) -> int:
    async with client_for(need_login()) as api:
        item = await find(api, remote_path(args.remote))
        await api.delete(item["id"])
    print(f"moved {item['path']} to the trash")
    return 0


async def cmd_share(args: argparse.Namespace) -> int:
    async with client_for(need_login()) as api:
        item = await find(api, remote_path(args.remote))
        await api.share(item["id"], args.user, args.role)
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
        link = await api.create_link(item["id"], body)
    print(link["url"])
    return 0


async def cmd_devices(args: argparse.Namespace) -> int:
    """List this account's devices and browser sessions, or cut one (or all others) off."""
    async with client_for(need_login()) as api:
        if args.action == "revoke":
            if args.others:
                revoked = await api.revoke_other_devices()
                print(f"signed out {revoked} other device(s) and session(s)")
                return 0
            if not args.id:
                raise CliError("give the ID to revoke (see `coffer devices`), or --others", 2)
            try:
                await api.revoke_device(args.id)
            except ApiError as exc:
                if exc.status == 404:
                    raise CliError(f"{args.id}: no such device or session") from None
                raise
            print(f"revoked {args.id}")
            return 0
        items = await api.devices()
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
    # A sync may be running beside it: look, change nothing (not even its temp files).
    state = SyncState(folder)
    ignore = Ignore(folder)
    ignore.excluded = json.loads(state.get_meta("excludes") or "[]")
    files = Scanner(folder, ignore).scan().files
    known = {rel: e for rel, e in state.all().items() if not ignore(rel)}
    pending = [
        rel for rel, lf in files.items() if rel not in known or not unchanged(lf, known[rel])
    ]
    gone = [rel for rel, e in known.items() if e.kind == "file" and rel not in files]
    print(f"{len(known)} synced entries, cursor {state.get_meta('cursor')}")
    if ignore.excluded:
        print("  left out of this device: " + ", ".join("/" + e for e in ignore.excluded))
    for rel in sorted(pending):
        print(f"  to upload: {rel}")
    for rel in sorted(gone):
        print(f"  to delete remotely: {rel}")
    if not pending and not gone:
        print("  nothing pending locally")
    state.close()
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
        if args.exclude or args.include:
            left_out = syncer.set_excludes(args.exclude or [], args.include or [])
            log(f"left out of this device: {', '.join('/' + e for e in left_out) or 'nothing'}")
        syncer.discard_interrupted_downloads()
        if not args.once:
            from client.live import LiveSync  # watchdog and websockets: live sync only

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
    p.add_argument(
        "--exclude",
        action="append",
        metavar="/FOLDER",
        help="leave this folder out of this device (selective sync; remembered)",
    )
    p.add_argument(
        "--include", action="append", metavar="/FOLDER", help="take a left-out folder back in"
    )
    p = sub.add_parser("upload")
    p.add_argument("file")
    p.add_argument("remote")
    p = sub.add_parser("download")
    p.add_argument("remote")
    p.add_argument("file")
    p = sub.add_parser("ls")
    p.add_argument("remote", nargs="?", default="/")
    p = sub.add_parser("find", help="find files and folders by name (accents and case ignored)")
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=0, help="stop after this many (0: all)")
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


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "login": cmd_login,
    "logout": cmd_logout,
    "sync": cmd_sync,
    "upload": cmd_upload,
    "download": cmd_download,
    "ls": cmd_ls,
    "find": cmd_find,
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
    except ClientError as exc:  # found by the client itself (e.g. a damaged download)
        console.print(f"coffer: {exc}", highlight=False)
        code = EXIT_FAILED
    except httpx.HTTPError as exc:  # the connection broke after it was made
        console.print(f"coffer: connection failed ({exc!r})", highlight=False)
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
