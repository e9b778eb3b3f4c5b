"""`coffer-server`: run the embedded stack, or one process of it.

    coffer-server run       MongoDB-protocol server, Redis, worker and web, data in ./data
    coffer-server web       the web app only (Procfile `web`)
    coffer-server worker    the arq worker only (Procfile `worker`)
    coffer-server backup DEST        consistent snapshot of metadata and blobs (may run live)
    coffer-server restore SRC        put a backup back into the data dir (Coffer stopped)

`run` starts nx-27017 (on a private Unix socket) and redis-server (with a password) as
child processes unless MONGODB_URL / REDIS_URL are set (see app/embedded.py), supervises
every child (restarting web and worker if they die) and on Ctrl-C stops them all, newest
first, by process id.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from app import embedded
from app.settings import get_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with code {proc.returncode}; see its log")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise SystemExit(f"{name} did not start listening on port {port} in {timeout:.0f}s")


class Supervisor:
    """Child processes started in their own sessions, stopped by pid in reverse order."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.children: list[tuple[str, list[str], subprocess.Popen[bytes]]] = []
        self.restarts: dict[str, list[float]] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.data_dir / "logs" / f"{name}.out", "ab")  # noqa: SIM115 - child owns it
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.children.append((name, cmd, proc))
        return proc

    def check(self) -> None:
        """Restart a web or worker that died (not more than 5 times a minute)."""
        for i, (name, cmd, proc) in enumerate(self.children):
            if proc.poll() is None:
                continue
            recent = [t for t in self.restarts.get(name, []) if t > time.monotonic() - 60]
            if name not in ("web", "worker") or len(recent) >= 5:
                raise SystemExit(f"{name} exited with code {proc.returncode}; see data/logs/")
            print(f"coffer: {name} exited ({proc.returncode}); restarting", file=sys.stderr)
            self.restarts[name] = [*recent, time.monotonic()]
            log = open(self.data_dir / "logs" / f"{name}.out", "ab")  # noqa: SIM115
            new = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            self.children[i] = (name, cmd, new)

    def stop(self) -> None:
        for name, _, proc in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f"coffer: {name} did not stop; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def run_stack() -> None:
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    embedded.private_umask()
    embedded.make_private_dirs(data_dir, ("mongo", "redis", "blobs", "logs", "run"))
    env = dict(os.environ)
    env["COFFER_DATA_DIR"] = str(data_dir)
    env["COFFER_SECRET_KEY"] = settings.resolved_secret_key()
    sup = Supervisor(data_dir, env)

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not settings.mongodb_url:
            (data_dir / "run" / "mongo.pid").unlink(missing_ok=True)
            sock = embedded.mongo_socket_path(data_dir)
            mongo = sup.start("mongo", embedded.mongo_command(data_dir, sock))
            embedded.wait_for_socket(sock, mongo, "nx-27017")
            env["MONGODB_URL"] = embedded.mongo_url(sock)
        if not settings.redis_url:
            port = free_port()
            redis = sup.start("redis", embedded.redis_command(data_dir, port))
            wait_for_port(port, redis, "redis-server")
            env["REDIS_URL"] = embedded.redis_url(data_dir, port)
        sup.start("worker", [sys.executable, "-m", "app.cli", "worker"])
        web = sup.start("web", [sys.executable, "-m", "app.cli", "web"])
        url = f"http://{settings.host}:{settings.port}"
        deadline = time.monotonic() + 60
        while not stopping:
            if web.poll() is not None:
                raise SystemExit("the web server exited; see data/logs/web.out")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/healthz", timeout=1).read()
                break
            if time.monotonic() > deadline:
                raise SystemExit("the web server did not answer in 60s; see data/logs/web.out")
            time.sleep(0.1)
        if not stopping:
            print(f"Coffer is running at {url}  (data in {data_dir}; Ctrl-C stops it)", flush=True)
        while not stopping:
            sup.check()
            time.sleep(0.5)
    finally:
        print("coffer: stopping...", file=sys.stderr, flush=True)
        sup.stop()


def run_web() -> None:
    import uvicorn

    from app.core.memory import limit_malloc_arenas

    limit_malloc_arenas()
    settings = get_settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # URLs carry signatures and link tokens: never log them
        timeout_graceful_shutdown=10,
        log_level="info",
    )


def run_worker() -> None:
    from arq.worker import get_kwargs

    from app.core.memory import limit_malloc_arenas
    from jobs.outlast import OutlastingWorker
    from jobs.worker import worker_settings

    limit_malloc_arenas()
    settings = get_settings()
    os.nice(settings.worker_nice)  # background work yields to serving (settings.worker_nice)
    # Timestamps and Coffer's own notices; arq's line per job (a sweep every 2 s) stays off.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("coffer").setLevel(logging.INFO)
    # arq's own run_worker, with a worker that survives Redis going away (jobs/outlast.py).
    OutlastingWorker(**get_kwargs(worker_settings(settings))).run()  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="coffer-server", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the whole embedded stack")
    sub.add_parser("web", help="run the web app (uvicorn)")
    sub.add_parser("worker", help="run the arq worker")
    p = sub.add_parser("backup", help="snapshot metadata and blobs into DEST (may run live)")
    p.add_argument("dest", type=Path)
    p = sub.add_parser("restore", help="restore a backup into the data dir (stop Coffer first)")
    p.add_argument("src", type=Path)
    p.add_argument("--force", action="store_true", help="move existing data aside first")
    args = parser.parse_args(argv)
    if args.command in ("backup", "restore"):
        import json

        from app import backup

        settings = get_settings()
        result = (
            backup.backup(settings, args.dest)
            if args.command == "backup"
            else backup.restore(settings, args.src, args.force)
        )
        print(json.dumps(result))
        return
    {"run": run_stack, "web": run_web, "worker": run_worker}[args.command]()


if __name__ == "__main__":
    main()
