"""Accounts, sessions, device tokens, CSRF: against the real running stack."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import User, unique_name


def test_register_login_me_logout(base_url: str) -> None:
    name = unique_name()
    r = httpx.post(
        f"{base_url}/api/auth/register", json={"username": name, "password": "password1"}
    )
    assert r.status_code == 201
    assert r.json()["username"] == name and len(r.json()["id"]) == 24

    with httpx.Client(base_url=base_url) as browser:
        r = browser.post("/api/auth/login", json={"username": name, "password": "password1"})
        assert r.status_code == 200
        set_cookie = r.headers.get_list("set-cookie")
        session = next(c for c in set_cookie if c.startswith("coffer_session="))
        assert "HttpOnly" in session and "SameSite=lax" in session.replace("Lax", "lax")
        csrf = r.json()["csrf_token"]

        me = browser.get("/api/me")
        assert me.status_code == 200
        assert me.json() == {
            "id": me.json()["id"],
            "username": name,
            "usage_bytes": 0,
            "quota_bytes": None,
            "view": "list",
        }

        # Cookie-authenticated unsafe requests need the CSRF token.
        assert browser.post("/api/folder", json={"path": "/x"}).status_code == 403
        ok = browser.post("/api/folder", json={"path": "/x"}, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 201

        assert browser.post("/api/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        assert browser.get("/api/me").status_code == 401


def test_register_rejects_bad_input(base_url: str) -> None:
    url = f"{base_url}/api/auth/register"
    name = unique_name()
    assert httpx.post(url, json={"username": name, "password": "password1"}).status_code == 201
    taken = httpx.post(url, json={"username": name.upper(), "password": "password1"})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "username_taken"
    for bad in ["a", "has space", "../etc", "x" * 40, "-dash", "nul\x00"]:
        r = httpx.post(url, json={"username": bad, "password": "password1"})
        assert r.status_code == 400, bad
        assert r.json()["error"]["code"] == "invalid_username"
    r = httpx.post(url, json={"username": unique_name(), "password": "short"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_password"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(url, json={"username": unique_name()})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(url, json={"username": 5, "password": "password1"})
    assert r.status_code == 400


def test_device_token_lifecycle(base_url: str) -> None:
    user = User(base_url)
    assert user.http.get("/api/me").json()["username"] == user.username

    wrong = httpx.post(
        f"{base_url}/api/auth/token",
        json={"username": user.username, "password": "wrong-password", "device_name": "x"},
    )
    assert wrong.status_code == 401
    unknown = httpx.post(
        f"{base_url}/api/auth/token",
        json={"username": unique_name(), "password": "whatever1", "device_name": "x"},
    )
    assert unknown.status_code == 401
    assert wrong.json()["error"] == unknown.json()["error"]  # no username enumeration

    assert user.http.delete("/api/auth/token").status_code == 204
    assert user.http.get("/api/me").status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/me"),
        ("GET", "/api/file"),
        ("POST", "/api/file"),
        ("GET", "/api/file/000000000000000000000000"),
        ("GET", "/api/file/000000000000000000000000/content"),
        ("PATCH", "/api/file/000000000000000000000000"),
        ("DELETE", "/api/file/000000000000000000000000"),
        ("POST", "/api/file/000000000000000000000000/commit"),
        ("POST", "/api/folder"),
        ("DELETE", "/api/auth/token"),
        ("POST", "/api/auth/logout"),
    ],
)
def test_api_requires_credentials(base_url: str, method: str, path: str) -> None:
    r = httpx.request(method, base_url + path, json={})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    bad = httpx.request(method, base_url + path, json={}, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


def test_health_and_openapi(base_url: str) -> None:
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base_url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    schema = httpx.get(f"{base_url}/schema/openapi.json").json()
    for path in [
        "/api/auth/register",
        "/api/auth/token",
        "/api/file",
        "/api/file/{file_id}/commit",
        "/api/file/{file_id}/content",
        "/api/folder",
        "/api/me",
    ]:
        assert path in schema["paths"], path


def test_password_guessing_is_throttled_per_address_and_username(base_url: str) -> None:
    victim = User(base_url)
    for _ in range(10):
        r = httpx.post(
            f"{base_url}/api/auth/token",
            json={"username": victim.username, "password": "wrong guess", "device_name": "x"},
        )
        assert r.status_code == 401
    blocked = httpx.post(
        f"{base_url}/api/auth/login",
        json={"username": victim.username, "password": victim.password},
    )
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert blocked.json()["error"]["code"] == "rate_limited"
    # Other accounts are not locked out by it, and the victim's devices keep working.
    other = User(base_url)
    assert (
        httpx.post(
            f"{base_url}/api/auth/login",
            json={"username": other.username, "password": other.password},
        ).status_code
        == 200
    )
    assert victim.http.get("/api/me").status_code == 200


def test_login_and_register_forms_refuse_other_sites_but_work_from_ours(base_url: str) -> None:
    user = User(base_url)
    form = {"username": user.username, "password": user.password, "next": "/files"}
    evil = httpx.post(f"{base_url}/login", data=form, headers={"Origin": "https://evil.example"})
    # A page, not the API: the refusal is an HTML page saying why.
    assert evil.status_code == 403 and "must be sent from this site" in evil.text
    sneaky = httpx.post(f"{base_url}/login", data=form, headers={"Sec-Fetch-Site": "cross-site"})
    assert sneaky.status_code == 403
    ours = httpx.post(f"{base_url}/login", data=form, headers={"Origin": base_url})
    assert ours.status_code == 302 and ours.headers["location"] == "/files"
    assert "coffer_session" in ours.cookies
    wrong = httpx.post(f"{base_url}/login", data={**form, "password": "not it at all"})
    assert wrong.status_code == 401 and "wrong username or password" in wrong.text
    page = httpx.get(f"{base_url}/files", cookies=ours.cookies)
    assert page.status_code == 200 and "<table" in page.text  # works without JavaScript
    assert httpx.get(f"{base_url}/files").status_code == 302  # anonymous: to the login page
