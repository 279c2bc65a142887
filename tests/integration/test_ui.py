"""The coordinators' page without a browser: accounts and sessions, throttling, same-origin POSTs, the access
trail of what was shown, filters, CSV (and its guards), mounting prefix."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from test_ui_support import PASSWORD, USER, add_user, fake_result, login, mounted, page_client

from carecast.audit import AuditLog
from carecast.settings import load_settings
from scoring.score import ScoreOptions, write
from serving.ui import create_ui_app

ORIGIN = {"Origin": "http://testserver"}


@pytest.fixture()
def client(home: Path) -> TestClient:
    return page_client()


def _login(c: TestClient) -> None:
    r = login(c)
    assert r.status_code == 303 and r.headers["location"] == "/ui/appointments", r.text


def _csrf(c: TestClient) -> str:
    html = c.get("/ui/appointments").text
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_refuses_access_without_login(client: TestClient) -> None:
    for path in ("/ui/", "/ui/appointments", "/ui/patients", "/ui/appointments.csv", "/ui/patients.csv?tier=high"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/login", path
        assert "A0000" not in r.text and "P0000" not in r.text
    r = login(client, password="wrong password here")
    assert r.status_code == 401 and "not valid" in r.text and "set-cookie" not in r.headers
    r = login(client, name="nobody")                         # an unknown name reads the same
    assert r.status_code == 401 and "not valid" in r.text
    # a forged session cookie is refused
    client.cookies.set("carecast_session", "forged-token-0123456789", path="/ui/")
    assert client.get("/ui/appointments", follow_redirects=False).status_code == 303


def test_login_cookie_is_httponly_strict_and_logout_revokes_at_once(client: TestClient) -> None:
    r = login(client)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui/" in cookie
    assert PASSWORD not in cookie
    token = client.cookies.get("carecast_session")
    page = client.get("/ui/appointments")
    assert page.status_code == 200 and "A0000000" in page.text and 'id="who">coord<' in page.text
    assert page.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "carecast-no-show v4" in page.text and "2026-06-01 00:00 UTC" in page.text
    # logging out needs the session's CSRF token
    assert client.post("/ui/logout", data={"csrf": "wrong"}, headers=ORIGIN).status_code == 403
    assert client.get("/ui/appointments", follow_redirects=False).status_code == 200
    r = client.post("/ui/logout", data={"csrf": _csrf(client)}, headers=ORIGIN, follow_redirects=False)
    assert r.status_code == 303
    # the old cookie, replayed, no longer opens anything: the session is gone on the server
    client.cookies.set("carecast_session", token, path="/ui/")
    assert client.get("/ui/appointments", follow_redirects=False).status_code == 303


def test_disabling_a_user_ends_their_session_at_once(client: TestClient, carecast_ok) -> None:
    _login(client)
    assert client.get("/ui/patients", follow_redirects=False).status_code == 200
    out = carecast_ok("users", "disable", USER)
    assert "1 session(s) ended" in out
    assert client.get("/ui/patients", follow_redirects=False).status_code == 303
    assert login(client).status_code == 401                    # and cannot log in again
    assert "no" in carecast_ok("users", "list").splitlines()[1].split("\t")[1]
    carecast_ok("users", "enable", USER)
    _login(client)


def test_the_eleventh_wrong_password_in_a_minute_is_refused(client: TestClient, carecast_ok) -> None:
    for i in range(10):
        r = login(client, password=f"wrong password {i}")
        assert r.status_code == 401, (i, r.status_code)
    r = login(client, password="wrong password 10")
    assert r.status_code == 429 and "Too many failed logins" in r.text and int(r.headers["retry-after"]) > 0
    # locked: even the right password is refused, and no session is made
    r = login(client)
    assert r.status_code == 429 and "set-cookie" not in r.headers
    # an administrator lifts the lock on the name (the address has a higher limit: 50)
    carecast_ok("users", "unlock", USER)
    _login(client)


def test_cross_origin_posts_are_refused(client: TestClient) -> None:
    r = login(client, origin="http://evil.example")
    assert r.status_code == 403 and "another site" in r.text and "set-cookie" not in r.headers
    r = client.post("/ui/login", data={"username": USER, "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 403                                 # neither Origin nor Referer
    r = client.post("/ui/login", data={"username": USER, "password": PASSWORD}, follow_redirects=False,
                    headers={"Referer": "http://evil.example/form"})
    assert r.status_code == 403
    r = client.post("/ui/login", data={"username": USER, "password": PASSWORD}, follow_redirects=False,
                    headers={"Referer": "http://testserver/ui/login"})
    assert r.status_code == 303
    csrf = _csrf(client)
    r = client.post("/ui/logout", data={"csrf": csrf}, headers={"Origin": "http://evil.example"}, follow_redirects=False)
    assert r.status_code == 403
    assert client.get("/ui/appointments", follow_redirects=False).status_code == 200   # still logged in


def test_trusted_origin_is_accepted(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARECAST_ACCOUNTS__TRUSTED_ORIGINS", "https://carecast.example")
    s = load_settings()
    add_user(s)
    c = TestClient(mounted(create_ui_app(s)), base_url="http://testserver")
    assert login(c, origin="https://carecast.example").status_code == 303


def test_no_user_means_nobody_logs_in(home: Path) -> None:
    c = TestClient(mounted(create_ui_app(load_settings())), base_url="http://testserver")
    assert login(c).status_code == 401
    assert "carecast users add" in c.get("/ui/login").text


def test_page_and_export_reads_are_in_the_access_trail(client: TestClient, carecast_ok) -> None:
    _login(client)
    page = client.get("/ui/patients?tier=high&size=25")
    shown = re.findall(r'data-key="patient_id" title="(Q\d+)"', page.text)
    assert len(shown) == 25
    rows = list(csv.reader(io.StringIO(client.get("/ui/patients.csv?tier=high").text)))[1:]
    exported = [r[1] for r in rows]
    trail = AuditLog.from_settings(load_settings())
    recs = trail.what_saw(USER)
    assert [r.what for r in recs] == ["page patients", "export patients.csv"]
    assert list(recs[0].patients) == shown and recs[0].detail["tier"] == "high" and recs[0].who == "user:coord"
    assert list(recs[1].patients) == exported and recs[1].detail["rows"] == len(exported)
    assert [r.what for r in trail.who_saw(shown[0])] == ["page patients", "export patients.csv"]
    out = carecast_ok("audit", "who-saw", shown[0])
    assert "user:coord" in out and "export patients.csv" in out
    out = carecast_ok("audit", "what-saw", USER, "--patients")
    assert "page patients" in out and exported[-1] in out
    assert "intact: 2 record(s)" in carecast_ok("audit", "verify")


def test_an_unwritable_trail_withholds_the_list(client: TestClient, home: Path) -> None:
    _login(client)
    (home / "audit").write_text("")                    # a file where the trail's folder goes: cannot be written
    r = client.get("/ui/appointments")
    assert r.status_code == 503 and "A0000000" not in r.text and "access record" in r.text
    assert client.get("/ui/appointments.csv").status_code == 503


def test_long_ids_bidi_and_formula_cells(home: Path) -> None:
    """A 3,000-character id is cut on the page (full value on hover); bidi controls are neutralised on the
    page and in the CSV; CSV cells starting with = + - @ TAB or CR are guarded."""
    s = load_settings()
    res = fake_result(6, 4)
    long_id, rlo = "P" + "9" * 2999, "P12\u202e345"
    res.appointments.loc[0, "patient_id"] = long_id
    res.appointments.loc[1, "patient_id"] = rlo
    for i, lead in enumerate(["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"][:4]):
        res.patients.loc[i, "patient_id"] = lead
    res.appointments.loc[2, "patient_id"] = "\tTAB"
    res.appointments.loc[3, "patient_id"] = "\rCR"
    write(s, res, ScoreOptions())
    add_user(s)
    c = TestClient(mounted(create_ui_app(s)), base_url="http://testserver")
    _login(c)
    html = c.get("/ui/appointments").text
    assert f'title="{long_id}"' in html and "P" + "9" * 22 + "\u2026" in html and ">" + long_id + "<" not in html
    assert "\u202e" not in html and "P12\ufffd345" in html
    rows = list(csv.reader(io.StringIO(c.get("/ui/appointments.csv").text, newline="")))[1:]
    ids = {r[5] for r in rows}
    assert long_id in ids and "P12\ufffd345" in ids and "'\tTAB" in ids and "'\rCR" in ids
    pats = {r[1] for r in list(csv.reader(io.StringIO(c.get("/ui/patients.csv").text)))[1:]}
    assert {"'=1+1", "'+1", "'-1", "'@SUM(A1)"} <= pats


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
    s = load_settings()
    add_user(s)
    c = TestClient(mounted(create_ui_app(s)), base_url="http://testserver")
    _login(c)
    assert "carecast score --as-of" in c.get("/ui/appointments").text
