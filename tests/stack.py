"""Real processes for tests and benchmarks: nx-27017, redis-server, moto, web, worker.

Each starts on a free port with its data in a temporary directory and is stopped by
process id. Nothing here is a mock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app import embedded
from app.cli import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    socket: Path | None = None  # a Unix socket it listens on, instead of a port

    def start(self) -> Proc:
        fh = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.popen = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        fh.close()
        if self.port:
            wait_for_port(self.port, self.popen, self.name, timeout=60)
        if self.socket:
            embedded.wait_for_socket(self.socket, self.popen, self.name, timeout=60)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class Stack:
    """A whole Coffer deployment in `root`: database, Redis, worker and N web instances."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        embedded.make_private_dirs(self.root, ("mongo", "redis", "blobs", "logs", "run"))
        self.env = {
            **os.environ,
            "COFFER_DATA_DIR": str(self.root),
            "COFFER_SECRET_KEY": "test-secret-key-" + self.root.name,
            "COFFER_HOST": "127.0.0.1",
            "COFFER_FSYNC": "false",
            "COFFER_GC_LEASE_SECONDS": "2",
            # Crash tests settle a dead commit's quota claim without waiting a minute.
            "COFFER_CLAIM_SETTLE_SECONDS": "2",
            **self.env,
        }

    def _proc(
        self, name: str, cmd: list[str], port: int | None, env: dict[str, str] | None = None
    ) -> Proc:
        proc = Proc(name, cmd, env or self.env, self.root / "logs" / f"{name}.log", port)
        self.procs[name] = proc
        return proc

    def start_mongo(self) -> Proc:
        sock = embedded.mongo_socket_path(self.root)
        proc = self._proc("mongo", embedded.mongo_command(self.root, sock), None)
        proc.socket = sock
        proc.start()
        self.env["MONGODB_URL"] = embedded.mongo_url(sock)
        return proc

    def start_redis(self, port: int | None = None) -> Proc:
        port = port or free_port()
        proc = self._proc("redis", embedded.redis_command(self.root, port), port).start()
        self.env["REDIS_URL"] = embedded.redis_url(self.root, port)
        return proc

    def start_worker(self, **extra_env: str) -> Proc:
        """The worker; `extra_env` e.g. COFFER_FAILPOINTS to pause it at a step."""
        env = {**self.env, **extra_env}
        return self._proc("worker", [sys.executable, "-m", "app.cli", "worker"], None, env).start()

    def start_web(self, name: str = "web", port: int | None = None, **extra_env: str) -> Proc:
        port = port or free_port()
        env = {**self.env, "PORT": str(port), **extra_env}
        proc = self._proc(name, [sys.executable, "-m", "app.cli", "web"], port, env).start()
        wait_http(f"http://127.0.0.1:{port}/healthz")
        return proc

    def url(self, name: str = "web") -> str:
        return f"http://127.0.0.1:{self.procs[name].port}"

    def restart(self, name: str) -> Proc:
        proc = self.procs[name]
        proc.stop()
        proc.start()
        if name.startswith("web"):
            wait_http(f"http://127.0.0.1:{proc.port}/healthz")
        return proc

    def start_all(self) -> Stack:
        self.start_mongo()
        self.start_redis()
        self.start_worker()
        self.start_web()
        return self

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def start_moto(root: Path) -> Proc:
    """A real S3-protocol server (moto) on a free port."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = Proc(
        "moto",
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        dict(os.environ),
        root / "moto.log",
        port,
    )
    return proc.start()
