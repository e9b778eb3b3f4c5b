"""The simulated devices: accounts with two devices each, set up before the soak, and the
Locust user that plays one device (list, upload, download with Range, move, delete, share).

Each account has `/docs`, `/archive` and `/team-<name>`; its team folder is shared with the
next account as editor at set-up, and during the soak with others as viewer (and some of
those shares revoked). A device changes only files it made itself, so every change to a
file is one device's, in order; it reads anything its account can see, which is where
the races with other devices (and the checks in soak_world.py) come in.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from locust import User, between, task
from locust.env import Environment

from bench.soak_client import Balancer, DeviceHTTP, Tally
from bench.soak_feed import Follower, Model
from bench.soak_world import FileRec, Op, World, content_hash, data_for

CHUNK = 64 * 1024  # the smallest chunk the server takes: small files get 1-3 chunks
KEEP_FILES = 24  # a device deletes one of its files when it has more than this
PASSWORD = "soak-password-1"


@dataclass
class Account:
    index: int
    username: str
    team_id: str = ""
    docs_id: str = ""
    # recipients (account index) of this account's team folder -> role, while shared
    shared_with: dict[int, str] = field(default_factory=dict)


@dataclass
class Device:
    index: int
    account: Account
    token: str
    http: DeviceHTTP
    model: Model
    follower: Follower | None = None
    made: list[str] = field(default_factory=list)  # ids of files this device made


@dataclass
class Soak:
    """Everything the devices share: the balancer, the tally, the truth, the accounts."""

    env: Environment
    balancer: Balancer
    tally: Tally = field(default_factory=Tally)
    world: World = field(default_factory=World)
    accounts: list[Account] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    unassigned: list[Device] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    seeds: itertools.count = field(default_factory=lambda: itertools.count(1))


SOAK: Soak | None = None  # set by soak.py before the runner starts


def manifest(data: bytes) -> dict:
    chunks = [
        {
            "sha256": hashlib.sha256(data[i : i + CHUNK]).hexdigest(),
            "size": len(data[i : i + CHUNK]),
        }
        for i in range(0, len(data), CHUNK)
    ]
    return {"size": len(data), "chunks": chunks}


# --------------------------------------------------------------------------- set-up


def make_account(soak: Soak, index: int, run: str, devices_each: int) -> list[Device]:
    """Register an account, its devices' tokens and its three folders."""
    anon = DeviceHTTP(soak.env, soak.balancer, soak.tally)
    account = Account(index, f"s{run}u{index}")
    creds = {"username": account.username, "password": PASSWORD}
    anon.call("POST", "POST /api/auth/register", "/api/auth/register", json=creds, ok=(201,))
    devices = []
    for d in range(devices_each):
        r = anon.call(
            "POST",
            "POST /api/auth/token",
            "/api/auth/token",
            json={**creds, "device_name": f"soak-{d}"},
            ok=(201,),
        )
        token = r.json()["token"]
        http = DeviceHTTP(soak.env, soak.balancer, soak.tally, token)
        index_d = index * devices_each + d
        devices.append(Device(index_d, account, token, http, Model(http, account.username)))
    http = devices[0].http
    for folder in ("/docs", "/archive", f"/team-{account.username}"):
        r = http.call("POST", "POST /api/folder", "/api/folder", json={"path": folder}, ok=(201,))
        if folder.startswith("/team-"):
            account.team_id = r.json()["id"]
        elif folder == "/docs":
            account.docs_id = r.json()["id"]
    soak.accounts.append(account)
    return devices


def share(soak: Soak, device: Device, recipient: Account, role: str) -> bool:
    owner = device.account
    r = device.http.call(
        "POST",
        "POST /api/file/{id}/share",
        f"/api/file/{owner.team_id}/share",
        json={"username": recipient.username, "role": role},
        ok=(201,),
        fine=(409,),
    )
    if r.status_code == 201:
        owner.shared_with[recipient.index] = role
        return True
    return False


# --------------------------------------------------------------------------- the device


class DeviceUser(User):
    """One simulated device: a sync client's mix of reads and small writes."""

    wait_time = between(2, 6)

    def on_start(self) -> None:
        assert SOAK is not None
        self.soak = SOAK
        self.dev = SOAK.unassigned.pop()
        self.rng = random.Random(self.dev.index)

    # ------------------------------------------------------------ helpers

    @property
    def world(self) -> World:
        return self.soak.world

    def _live(self, recs: list[FileRec]) -> list[FileRec]:
        return [r for r in recs if r.committed() and not r.deleted()]

    def _readable(self) -> list[FileRec]:
        """Files this device's account can read (as far as the truth says right now)."""
        me = self.dev.account.index
        teams = {a.index for a in self.soak.accounts if me in a.shared_with}
        return self._live(
            [
                r
                for r in self.world.files.values()
                if r.owner == me or (r.owner in teams and r.folder.startswith("/team-"))
            ]
        )

    def _mine(self) -> list[FileRec]:
        return self._live([self.world.files[i] for i in self.dev.made])

    def _commit_file(
        self, rec: FileRec | None, parent: tuple[int, str, str] | None, seed: int, size: int
    ) -> None:
        """Register, PUT the missing chunks (to any instance), commit. `rec` for a new
        version of a file, else `parent` = (owner, folder path, folder id) for a new one."""
        data = data_for(seed, size)
        body = manifest(data)
        if rec is not None:
            body["file_id"] = rec.id
        else:
            assert parent is not None
            name = f"d{self.dev.index}-{next(self.soak.seeds)}.bin"
            body.update(parent_id=parent[2], name=name)
        t0 = time.monotonic()
        r = self.dev.http.call(
            "POST", "POST /api/file (register)", "/api/file", json=body, ok=(201,), fine=(404,)
        )
        if r.status_code != 201:
            return  # a shared team folder revoked meanwhile, or the file trashed
        reg = r.json()
        if rec is None:
            assert parent is not None
            rec = self.world.add(
                FileRec(reg["file_id"], parent[0], self.dev.index, parent[1], name)
            )
            self.dev.made.append(rec.id)
        op = Op("commit", t0, version=(seed, size))
        rec.ops.append(op)
        for m in reg["missing"]:
            start = m["index"] * CHUNK
            self.dev.http.call(
                "PUT",
                "PUT /api/blob (chunk)",
                m["url"],
                data=data[start : start + m["size"]],
                headers=m["headers"],
                ok=(201,),
            )
        r = self.dev.http.call(
            "POST",
            "POST /api/file/{id}/commit",
            f"/api/file/{reg['file_id']}/commit",
            json={"upload_id": reg["upload_id"]},
            ok=(200,),
            fine=(404,),
        )
        op.end, op.ok = time.monotonic(), r.status_code == 200
        if op.ok and r.json()["content_hash"] != content_hash(data):
            self.soak.tally.wrong_answer(f"commit of {rec.id} answered another content hash")

    # ------------------------------------------------------------ the mix

    @task(12)
    def list_folder(self) -> None:
        account = self.dev.account
        folder = self.rng.choice(["/docs", "/archive", f"/team-{account.username}"])
        t0 = time.monotonic()
        r = self.dev.http.call(
            "GET", "GET /api/file?path", "/api/file", params={"path": folder, "limit": 1000}
        )
        t1 = time.monotonic()
        for problem in self.world.judge_listing(account.index, folder, r.json()["items"], t0, t1):
            self.soak.tally.wrong_answer(problem)

    @task(4)
    def list_shared(self) -> None:
        r = self.dev.http.call("GET", "GET /api/shared", "/api/shared")
        items = r.json()["items"]
        if items:
            folder = self.rng.choice(items)
            self.dev.http.call(
                "GET",
                "GET /api/file?id (shared folder)",
                "/api/file",
                params={"id": folder["id"], "limit": 1000},
                fine=(404,),
            )

    @task(12)
    def download_range(self) -> None:
        readable = self._readable()
        if not readable:
            return
        rec = self.rng.choice(readable)
        head = rec.head()
        assert head is not None
        size = head[1]
        headers = {}
        first, last = 0, None
        if self.rng.random() < 0.8:  # mostly ranged, as a resuming client asks
            first = self.rng.randrange(size)
            last = min(size - 1, first + self.rng.randrange(1, 64 * 1024))
            headers["Range"] = f"bytes={first}-{last}"
        t0 = time.monotonic()
        r = self.dev.http.call(
            "GET",
            "GET /api/file/{id}/content (Range)",
            f"/api/file/{rec.id}/content",
            headers=headers,
            ok=(200, 206),
            fine=(404, 416),
        )
        t1 = time.monotonic()
        if r.status_code in (200, 206) and (r.status_code == 206) != bool(headers):
            self.soak.tally.wrong_answer(f"Range {headers} answered {r.status_code}")
        problem = self.world.judge_download(
            rec, r.status_code, r.content, first, last, t0, t1, self.dev.account.index
        )
        if problem:
            self.soak.tally.wrong_answer(problem)

    @task(6)
    def upload(self) -> None:
        account = self.dev.account
        size = self.rng.choice(
            [self.rng.randrange(1, 48 * 1024), self.rng.randrange(70, 200) * 1024]
        )
        teams = [a for a in self.soak.accounts if a.shared_with.get(account.index) == "editor"]
        if teams and self.rng.random() < 0.3:  # into the team folder shared with us
            team = self.rng.choice(teams)
            parent = (team.index, f"/team-{team.username}", team.team_id)
        else:
            parent = (account.index, "/docs", account.docs_id)
        self._commit_file(None, parent, next(self.soak.seeds), size)

    @task(3)
    def update(self) -> None:
        mine = self._mine()
        if mine:
            rec = self.rng.choice(mine)
            self._commit_file(rec, None, next(self.soak.seeds), self.rng.randrange(1, 100 * 1024))

    @task(3)
    def batch_upload(self) -> None:
        """Three small files in one request, their bytes inline: committed at once."""
        account = self.dev.account
        items, names = [], []
        for _ in range(3):
            seed, size = next(self.soak.seeds), self.rng.randrange(1, 16 * 1024)
            data = data_for(seed, size)
            name = f"d{self.dev.index}-{next(self.soak.seeds)}.txt"
            items.append(
                {"path": f"/docs/{name}", **manifest(data), "data": base64.b64encode(data).decode()}
            )
            names.append((name, seed, size))
        t0 = time.monotonic()
        r = self.dev.http.call(
            "POST", "POST /api/batch/upload (inline)", "/api/batch/upload", json={"files": items}
        )
        t1 = time.monotonic()
        for result, (name, seed, size) in zip(r.json()["results"], names, strict=True):
            if result["status"] != "committed":
                self.soak.tally.unexpected.append(f"batch upload item {result}")
                continue
            file = result["file"]
            rec = self.world.add(FileRec(file["id"], account.index, self.dev.index, "/docs", name))
            rec.ops.append(Op("commit", t0, t1, True, version=(seed, size)))
            self.dev.made.append(rec.id)
            if file["content_hash"] != content_hash(data_for(seed, size)):
                self.soak.tally.wrong_answer(f"batch commit of {rec.id}: another content hash")

    @task(4)
    def move(self) -> None:
        mine = self._mine()
        if not mine:
            return
        rec = self.rng.choice(mine)
        folder, _ = rec.current()
        new_name = f"d{self.dev.index}-{next(self.soak.seeds)}-m.bin"
        if folder.startswith("/team-"):  # an editor's file stays in the team folder
            body, target = {"name": new_name}, folder
        else:
            target = "/archive" if folder == "/docs" else "/docs"
            body = {"path": f"{target}/{new_name}"}
        op = Op("move", time.monotonic(), folder=target, name=new_name)
        rec.ops.append(op)
        r = self.dev.http.call(
            "PATCH", "PATCH /api/file/{id} (move)", f"/api/file/{rec.id}", json=body, fine=(404,)
        )
        op.end, op.ok = time.monotonic(), r.status_code == 200
        if op.ok and r.json()["name"] != new_name:
            self.soak.tally.wrong_answer(f"move of {rec.id} answered {r.json()['name']!r}")

    @task(4)
    def delete(self) -> None:
        mine = self._mine()
        if not mine or (len(mine) <= KEEP_FILES and self.rng.random() < 0.5):
            return
        rec = self.rng.choice(mine)
        op = Op("delete", time.monotonic())
        rec.ops.append(op)
        r = self.dev.http.call(
            "DELETE", "DELETE /api/file/{id}", f"/api/file/{rec.id}", ok=(204,), fine=(404,)
        )
        op.end, op.ok = time.monotonic(), r.status_code == 204

    @task(1)
    def share_or_revoke(self) -> None:
        """Share the team folder with another account as viewer, or revoke a viewer."""
        account = self.dev.account
        viewers = [i for i, role in account.shared_with.items() if role == "viewer"]
        if viewers and (len(viewers) >= 3 or self.rng.random() < 0.3):
            who = self.soak.accounts[self.rng.choice(viewers)]
            self.world.revoked[(account.index, who.index)] = time.monotonic()
            account.shared_with.pop(who.index, None)
            self.dev.http.call(
                "DELETE",
                "DELETE /api/file/{id}/share/{user}",
                f"/api/file/{account.team_id}/share/{who.username}",
                ok=(204,),
                fine=(404,),
            )
            return
        others = [
            a
            for a in self.soak.accounts
            if a.index != account.index
            and a.index not in account.shared_with
            and (account.index, a.index) not in self.world.revoked  # never share twice
        ]
        if others:
            share(self.soak, self.dev, self.rng.choice(others), "viewer")


def start_followers(soak: Soak) -> None:
    """Every device follows its feed: odd ones over a WebSocket, even ones by long-poll."""
    for device in soak.devices:
        device.follower = Follower(
            device.model, soak.balancer, device.token, device.index % 2 == 1, soak.stats
        )
        device.follower.start()
