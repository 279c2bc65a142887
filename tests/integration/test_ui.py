"""The coordinators' page without a browser: login required, cookie flags, filters, CSV, mounting prefix."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from test_ui_support import mounted, write_fake_lists

from carecast.settings import load_settings
from serving.ui import create_ui_app

KEY = "coordinator-test-key"


@pytest.fixture()
def client(home: Path) -> TestClient:
    s = load_settings()
    write_fake_lists(s, 300, 120)
    return TestClient(mounted(create_ui_app(s, api_keys=[KEY])), base_url="http://testserver")


def _login(c: TestClient) -> None:
    r = c.post("/ui/login", data={"password": KEY}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/appointments"


def test_refuses_access_without_login(client: TestClient) -> None:
    for path in ("/ui/", "/ui/appointments", "/ui/patients", "/ui/appointments.csv", "/ui/patients.csv?tier=high"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login", path
        assert "A0000" not in r.text and "P0000" not in r.text
    r = client.post("/ui/login", data={"password": "wrong"}, follow_redirects=False)
    assert r.status_code == 401 and "not valid" in r.text and "set-cookie" not in r.headers
    # a forged or tampered cookie is refused
    client.cookies.set("carecast_ui", "9999999999.0123456789abcdef.deadbeef", path="/ui/")
    assert client.get("/ui/appointments", follow_redirects=False).status_code == 303


def test_login_cookie_is_signed_httponly_strict_and_logout_ends_it(client: TestClient) -> None:
    r = client.post("/ui/login", data={"password": KEY}, follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui/" in cookie
    assert KEY not in cookie
    page = client.get("/ui/appointments")
    assert page.status_code == 200 and "A0000000" in page.text
    assert page.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "carecast-no-show v4" in page.text and "2026-06-01 00:00 UTC" in page.text
    client.post("/ui/logout")
    client.cookies.clear()
    assert client.get("/ui/appointments", follow_redirects=False).status_code == 303


def test_no_key_configured_means_nobody_logs_in(home: Path) -> None:
    s = load_settings()
    c = TestClient(mounted(create_ui_app(s, api_keys=[])))
    assert c.post("/ui/login", data={"password": ""}, follow_redirects=False).status_code == 401
    assert "No password is configured" in c.get("/ui/login").text


def test_filters_sort_paging_and_csv_agree(client: TestClient) -> None:
    _login(client)
    q = "department=cardiology&tier=high&sort=when&dir=desc&size=25"
    html = client.get(f"/ui/appointments?{q}").text
    rows = list(csv.reader(io.StringIO(client.get(f"/ui/appointments.csv?{q}").text)))
    header, body = rows[0], rows[1:]
    assert header[:4] == ["#", "When (UTC)", "Department", "Visit"]
    assert body and all(r[2] == "Cardiology" and r[7] == "high" for r in body)
    when = [r[1] for r in body]
    assert when == sorted(when, reverse=True)
    assert f"{len(body)} of 300 rows match" in html
    for r in body[:25]:
        assert r[4] in html                      # the page shows the first 25 CSV rows...
    for r in body[25:]:
        assert r[4] not in html                  # ...and only those
    # page 2 holds the next ones
    if len(body) > 25:
        assert body[25][4] in client.get(f"/ui/appointments?{q}&page=2").text
    # bad input is reported, not an error
    assert "must be a date" in client.get("/ui/appointments?from=yesterday").text


def test_empty_home_says_how_to_build_lists(home: Path) -> None:
    c = TestClient(mounted(create_ui_app(load_settings(), api_keys=[KEY])))
    _login(c)
    assert "carecast score --as-of" in c.get("/ui/appointments").text
