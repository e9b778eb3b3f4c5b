"""Authorization over nested grants, checked against a reference model of the rules.

Random trees get random grants for one recipient (viewer or editor, at several depths,
some revoked again); then every route is tried on every node and the status compared
with what this small model of the rules says. The rules (README "Security"):
- a recipient's role on a node is the strongest live grant on it or any folder above it;
  without one the node does not exist for them (404);
- reading needs a role; creating inside a folder or a new version needs editor;
- renaming, moving or deleting a node needs editor on the node *and* on its parent (and
  on the destination folder), and a node that itself carries a live grant for the caller
  can only be changed by its owner;
- managing shares and links is for the owner only (403 for anyone who can see it).
A change that succeeds is undone by the owner before the next try, so every try runs
against the same tree.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import User, manifest

RANK = {None: 0, "viewer": 1, "editor": 2}
FOLDERS = ["R", "R/a", "R/a/b", "R/a/b/d", "R/c", "R/c/e"]
FILES = ["R/f1", "R/a/f2", "R/a/b/f3", "R/c/f4", "R/a/b/d/f5"]


@dataclass
class Tree:
    owner: User
    base: str  # the owner's folder holding this tree
    ids: dict[str, str] = field(default_factory=dict)  # relative path -> id
    grants: dict[str, str] = field(default_factory=dict)  # live grants: path -> role

    def parent(self, rel: str) -> str | None:
        return rel.rpartition("/")[0] or None

    def chain(self, rel: str) -> list[str]:
        parts = rel.split("/")
        return ["/".join(parts[: i + 1]) for i in range(len(parts))]

    def role(self, rel: str | None) -> int:
        if rel is None:
            return 0
        return max((RANK[self.grants.get(p)] for p in self.chain(rel)), default=0)

    # ----------------------------------------------------------- the model

    def read(self, rel: str) -> int:
        return 200 if self.role(rel) else 404

    def create_in(self, rel: str, ok: int) -> int:
        r = self.role(rel)
        return 404 if not r else 403 if r < 2 else ok

    def change(self, rel: str, ok: int) -> int:
        """Rename or delete: editor on the node and its parent; not a granted node."""
        r = self.role(rel)
        if not r:
            return 404
        if r < 2 or rel in self.grants or self.role(self.parent(rel)) < 2:
            return 403
        return ok

    def move(self, rel: str, dest: str) -> int:
        status = self.change(rel, 200)
        if status != 200:
            return status
        return self.create_in(dest, 200)

    def manage(self, rel: str) -> int:
        return 403 if self.role(rel) else 404


def build(owner: User, recipient: User, seed: int) -> Tree:
    rng = random.Random(seed)
    tree = Tree(owner, f"/model{seed}-{rng.randrange(10**6)}")
    for rel in FOLDERS:
        r = owner.http.post("/api/folder", json={"path": f"{tree.base}/{rel}"})
        assert r.status_code == 201, r.text
        tree.ids[rel] = r.json()["id"]
    for rel in FILES:
        tree.ids[rel] = owner.upload(f"{tree.base}/{rel}", rel.encode())["id"]
    candidates = [*FOLDERS, *FILES]
    for rel in rng.sample(candidates, rng.randint(2, 5)):
        role = rng.choice(["viewer", "editor"])
        r = owner.http.post(
            f"/api/file/{tree.ids[rel]}/share", json={"username": recipient.username, "role": role}
        )
        assert r.status_code == 201, r.text
        if rng.random() < 0.25:
            r = owner.http.delete(f"/api/file/{tree.ids[rel]}/share/{recipient.username}")
            assert r.status_code == 204
        else:
            tree.grants[rel] = role
    return tree


def undo(tree: Tree, rel: str, op: str, response: httpx.Response) -> None:
    """Put the tree back the way it was after a change that succeeded."""
    owner, node_id = tree.owner.http, tree.ids[rel]
    if op in ("rename", "move"):
        r = owner.patch(f"/api/file/{node_id}", json={"path": f"{tree.base}/{rel}"})
        assert r.status_code == 200, r.text
    elif op == "delete":
        r = owner.post(f"/api/trash/{node_id}/restore", json={})
        assert r.status_code == 200 and r.json()["path"] == f"{tree.base}/{rel}", r.text


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_nested_grants_follow_the_rules_on_every_route(base_url: str, seed: int) -> None:
    owner, recipient = User(base_url), User(base_url)
    tree = build(owner, recipient, seed)
    http = recipient.http
    mismatches: list[str] = []

    def check(what: str, expected: int, response: httpx.Response) -> None:
        if response.status_code != expected:
            mismatches.append(
                f"{what}: expected {expected}, got {response.status_code} {response.text[:120]}"
            )

    for rel in [*FOLDERS, *FILES]:
        node = tree.ids[rel]
        is_folder = rel in FOLDERS
        check(f"GET {rel}", tree.read(rel), http.get(f"/api/file/{node}"))
        if is_folder:
            check(f"list {rel}", tree.read(rel), http.get("/api/file", params={"id": node}))
            check(
                f"mkdir in {rel}",
                tree.create_in(rel, 201),
                http.post("/api/folder", json={"parent_id": node, "name": f"new-{seed}"}),
            )
            check(
                f"upload into {rel}",
                tree.create_in(rel, 201),
                http.post(
                    "/api/file",
                    json={"parent_id": node, "name": f"up-{seed}.bin", **manifest(b"x")},
                ),
            )
        else:
            check(f"content {rel}", tree.read(rel), http.get(f"/api/file/{node}/content"))
            check(
                f"new version of {rel}",
                tree.create_in(rel, 201),
                http.post("/api/file", json={"file_id": node, **manifest(b"v2 " + rel.encode())}),
            )
        check(
            f"share {rel}",
            tree.manage(rel),
            http.post(
                f"/api/file/{node}/share", json={"username": owner.username, "role": "viewer"}
            ),
        )

        r = http.patch(f"/api/file/{node}", json={"name": rel.rsplit("/", 1)[-1] + "-renamed"})
        check(f"rename {rel}", tree.change(rel, 200), r)
        if r.status_code == 200:
            undo(tree, rel, "rename", r)

        for dest in FOLDERS:
            if dest == tree.parent(rel) or dest == rel or dest.startswith(rel + "/"):
                continue
            r = http.patch(f"/api/file/{node}", json={"parent_id": tree.ids[dest]})
            check(f"move {rel} -> {dest}", tree.move(rel, dest), r)
            if r.status_code == 200:
                undo(tree, rel, "move", r)

        r = http.delete(f"/api/file/{node}")
        check(f"delete {rel}", tree.change(rel, 204), r)
        if r.status_code == 204:
            undo(tree, rel, "delete", r)

    assert not mismatches, f"grants {tree.grants}:\n" + "\n".join(mismatches)
