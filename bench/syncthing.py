"""Syncthing baseline for the sync benchmark, measured in the same run on the same machine.

The tree target (issue: "a folder of 1,000 files reaches the other device as fast as Syncthing
does") was set against a figure taken by hand: two local Syncthing 1.19 instances, watcher
delay 1 s, 2.0-2.3 s for 1,000 files of 1-64 KiB. A figure from another day says little when
the disk, the CPU share or the load of a parallel run differ, so `bench/sync.py --workload tree`
measures Syncthing here, beside Coffer, with the same tree, the same rename-in and the same
20 ms polling by size (`wait_for_tree`, shared with bench/sync.py so that both sides are timed
alike).

Two Syncthing instances run on 127.0.0.1 only, each knowing the other by a static address,
sharing one send-receive folder watched with a 1 s delay. Nothing reaches outside the machine:
global and local discovery, relays, NAT traversal, usage reporting, crash reporting and
upgrades are off. Their output goes to `syncthing.log` in each home dir.

    python bench/syncthing.py [N]   # probe: N files (default 1000), prints one JSON line
"""

from __future__ import annotations

import copy
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

FOLDER_ID = "coffer-bench"
# The sync tools' own dirs in a synced folder (Syncthing's, Coffer's): not what is synced.
TOOL_DIRS = frozenset({".stfolder", ".stversions", ".coffer"})
# Every way Syncthing might reach beyond this machine or change itself, turned off.
OPTIONS = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "urAccepted": "-1",
    "autoUpgradeIntervalH": "0",
    "crashReportingEnabled": "false",
    "startBrowser": "false",
    "announceLANAddresses": "false",
}
ENV = {"STNOUPGRADE": "1", "STNODEFAULTFOLDER": "1", "STNORESTART": "1"}


class SyncthingError(RuntimeError):
    pass


def ensure_installed() -> str | None:
    """Path of the syncthing binary; installs Debian's package if missing and we are root.
    None when it cannot be had (the benchmark then reports the baseline as unavailable)."""
    found = shutil.which("syncthing")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "syncthing"]
    print("installing Debian's syncthing package", file=sys.stderr)
    try:
        # A machine whose package lists were never fetched needs `apt-get update` first.
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which("syncthing")


def version(binary: str) -> str:
    """E.g. "v1.19.2-ds1"."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def sizes_under(root: Path) -> dict[str, int]:
    """Every file under `root` (the tools' own `.stfolder`, `.stversions`, `.coffer` left
    out): relative path -> size."""
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in TOOL_DIRS]
        for name in names:
            full = Path(dirpath) / name
            try:
                out[str(full.relative_to(root))] = full.stat().st_size
            except FileNotFoundError:
                continue
    return out


def wait_for_tree(a: Path, b: Path, timeout: float = 600, start: float | None = None) -> float:
    """Seconds until B holds A's files (by size, polled every 20 ms), then byte-checked.
    `start`: the time.monotonic() at which the change was complete in A; by default, once A
    has been listed (which leaves that listing out of the figure)."""
    want = sizes_under(a)
    if start is None:
        start = time.monotonic()
    while sizes_under(b) != want:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"B has {len(sizes_under(b))} of {len(want)} files")
        time.sleep(0.02)
    seconds = time.monotonic() - start
    for rel in want:
        if (a / rel).read_bytes() != (b / rel).read_bytes():
            raise AssertionError(f"{rel} differs on B")
    return seconds


def make_tree(root: Path, files: int, folders: int, seed: int) -> dict[str, bytes]:
    """`files` random files of 1-64 KiB spread over `folders` folders, under `root`."""
    rng = random.Random(seed)
    out = {}
    for i in range(files):
        rel = f"d{i % folders:02}/f{i:05}.bin"
        data = rng.randbytes(rng.randint(1024, 64 * 1024))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        out[rel] = data
    return out


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class Instance:
    """One Syncthing: its home dir (keys, config, database, log), folder, ports, process."""

    def __init__(self, binary: str, home: Path, folder: Path, name: str) -> None:
        self.binary, self.home, self.folder, self.name = binary, home, folder, name
        self.gui_port, self.listen_port = free_ports(2)
        self.api_key = secrets.token_urlsafe(24)
        self.device_id = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.gui_port}",
            headers={"X-API-Key": self.api_key},
            timeout=5,
            trust_env=False,  # no proxy for 127.0.0.1
        )

    @property
    def log_path(self) -> Path:
        return self.home / "syncthing.log"

    def generate(self) -> None:
        """Keys and a default config.xml; the device ID is read back from that config."""
        self.home.mkdir(parents=True)
        subprocess.run(
            [self.binary, "generate", f"--home={self.home}", "--no-default-folder"],
            env={**os.environ, **ENV},
            capture_output=True,
            check=True,
        )
        own = ET.parse(self.home / "config.xml").getroot().find("device")
        if own is None or not own.get("id"):
            raise SyncthingError(f"no device ID in {self.home / 'config.xml'}")
        self.device_id = own.get("id", "")

    def configure(self, peer: Instance) -> None:
        """GUI, options, the peer device and the shared folder, patched into config.xml.
        The peer and folder are copies of the config's own <defaults>, so every field that
        is not set here keeps the value Syncthing itself would give it."""
        path = self.home / "config.xml"
        tree = ET.parse(path)
        root = tree.getroot()
        gui = root.find("gui")
        options = root.find("options")
        default_folder = root.find("defaults/folder")
        default_device = root.find("defaults/device")
        if gui is None or options is None or default_folder is None or default_device is None:
            raise SyncthingError(f"unexpected layout of {path}")
        own = root.find("device")
        assert own is not None
        own.set("name", self.name)
        set_child(gui, "address", f"127.0.0.1:{self.gui_port}")
        set_child(gui, "apikey", self.api_key)
        gui.set("tls", "false")
        set_child(options, "listenAddress", f"tcp://127.0.0.1:{self.listen_port}")
        for key, value in OPTIONS.items():
            set_child(options, key, value)

        device = copy.deepcopy(default_device)
        device.set("id", peer.device_id)
        device.set("name", peer.name)
        set_child(device, "address", f"tcp://127.0.0.1:{peer.listen_port}")
        root.insert(list(root).index(own) + 1, device)

        folder = copy.deepcopy(default_folder)
        folder.attrib.update(
            id=FOLDER_ID,
            label=FOLDER_ID,
            path=str(self.folder),
            type="sendreceive",
            rescanIntervalS="3600",
            fsWatcherEnabled="true",
            fsWatcherDelayS="1",
        )
        for old in folder.findall("device"):
            folder.remove(old)
        for position, device_id in enumerate((self.device_id, peer.device_id)):
            member = ET.Element("device", id=device_id, introducedBy="")
            ET.SubElement(member, "encryptionPassword")
            folder.insert(position, member)
        root.insert(0, folder)
        path.write_text(ET.tostring(root, encoding="unicode"))

        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / ".stfolder").mkdir(exist_ok=True)

    def start(self) -> None:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                self.binary,
                "serve",
                f"--home={self.home}",
                "--no-browser",
                "--no-restart",
                "--no-upgrade",
                "--no-default-folder",
                f"--gui-address=http://127.0.0.1:{self.gui_port}",
                f"--gui-apikey={self.api_key}",
                "--logflags=7",
            ],
            env={**os.environ, **ENV},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(self, path: str, **params: str) -> Any:
        """A REST call's JSON, or None while Syncthing is not answering (yet)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise SyncthingError(f"syncthing {self.name} exited with {self.proc.returncode}")
        try:
            response = self.http.get(path, params=params)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def connected_to(self, peer: Instance) -> bool:
        got = self.get("/rest/system/connections")
        return bool(got and got["connections"].get(peer.device_id, {}).get("connected"))

    def folder_idle(self) -> bool:
        got = self.get("/rest/db/status", folder=FOLDER_ID)
        return bool(got and got.get("state") == "idle")

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()
        self.http.close()


def set_child(parent: ET.Element, tag: str, text: str) -> None:
    child = parent.find(tag)
    if child is None:
        child = ET.SubElement(parent, tag)
    child.text = text


class SyncthingPair:
    """Two Syncthing instances on this machine syncing `a` and `b`, while in the `with`.

    Under `work` (created if missing): `syncthing-home-a`, `syncthing-home-b` (keys, config,
    database, `syncthing.log`; they must not exist yet) and the synced folders `syncthing-a`,
    `syncthing-b`. Nothing is removed on exit: `work` is the caller's to clean up."""

    def __init__(self, work: Path, binary: str | None = None, start_timeout: float = 60) -> None:
        binary = binary or shutil.which("syncthing")
        if binary is None:
            raise SyncthingError("syncthing is not installed (see ensure_installed())")
        self.work = work
        self.a, self.b = work / "syncthing-a", work / "syncthing-b"
        self.start_timeout = start_timeout
        self.instances = [
            Instance(binary, work / "syncthing-home-a", self.a, "bench-a"),
            Instance(binary, work / "syncthing-home-b", self.b, "bench-b"),
        ]

    def __enter__(self) -> SyncthingPair:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        first, second = self.instances
        self.work.mkdir(parents=True, exist_ok=True)
        for inst in self.instances:
            inst.generate()
        first.configure(second)
        second.configure(first)
        for inst in self.instances:
            inst.start()
        deadline = time.monotonic() + self.start_timeout
        step = "answering"
        try:
            for step, ready in (
                ("answering", lambda: all(i.get("/rest/system/ping") for i in self.instances)),
                ("connected", lambda: first.connected_to(second) and second.connected_to(first)),
                ("idle", lambda: all(i.folder_idle() for i in self.instances)),
            ):
                while not ready():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not {step} after {self.start_timeout:g} s")
                    time.sleep(0.1)
        except (SyncthingError, TimeoutError) as e:
            logs = "\n".join(
                f"--- {inst.log_path} ---\n{log_tail(inst.log_path)}" for inst in self.instances
            )
            raise SyncthingError(f"Syncthing pair failed to start ({e}):\n{logs}") from e

    def stop(self) -> None:
        for inst in self.instances:
            inst.stop()


def time_tree(pair: SyncthingPair, source: Path, name: str, timeout: float = 300) -> float:
    """Renames the prepared tree `source` to `pair.a / name` at once and returns the seconds
    until `pair.b / name` holds every file with the same sizes (polled every 20 ms), then
    checked byte for byte. `source` must be on the filesystem of `pair.a` (e.g. under the
    pair's work dir), so that the rename is one atomic step: otherwise it fails (EXDEV)."""
    dest = pair.a / name
    if dest.exists():
        raise FileExistsError(dest)
    os.rename(source, dest)
    start = time.monotonic()
    return wait_for_tree(dest, pair.b / name, timeout, start=start)


def time_delete(pair: SyncthingPair, name: str, timeout: float = 60) -> float:
    """Removes `pair.a / name`, then returns the seconds until `pair.b / name` holds no files
    (polled every 20 ms)."""
    shutil.rmtree(pair.a / name)
    start = time.monotonic()
    gone = pair.b / name
    while gone.exists() and sizes_under(gone):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{len(sizes_under(gone))} files still on B")
        time.sleep(0.02)
    return time.monotonic() - start


def main() -> None:
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    binary = ensure_installed()
    if binary is None:
        print(json.dumps({"bench": "syncthing", "unavailable": "syncthing not installed"}))
        return
    with tempfile.TemporaryDirectory(prefix="coffer-bench-syncthing-") as tmp:
        work = Path(tmp)
        make_tree(work / "scratch" / "tree", files, 10, seed=1)
        with SyncthingPair(work, binary) as pair:
            tree_s = time_tree(pair, work / "scratch" / "tree", "tree")
            delete_s = time_delete(pair, "tree")
        print(
            json.dumps(
                {
                    "bench": "syncthing",
                    "version": version(binary),
                    "tree_files": files,
                    "tree_s": round(tree_s, 2),
                    "delete_s": round(delete_s, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
