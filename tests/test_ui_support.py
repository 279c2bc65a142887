"""Helpers for the coordinators' page tests and benchmark: synthetic risk lists and a live server (no tests here)."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.synth.codes import DEPARTMENTS, VISIT_TYPES
from scoring.score import Result, ScoreOptions, write
from serving.outreach import ACTION_WORDS

REASONS = ["Missed 2 of 5 appointments in the past year", "Booked 45 days ahead", "Has $320 overdue for 95 days",
           "Lives 32 km from the clinic", "Last missed an appointment 28 days ago", "Replied to 20% of outreach"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _tier(p: np.ndarray) -> np.ndarray:
    return np.where(p >= 0.30, "high", np.where(p >= 0.15, "medium", "low"))


def fake_result(n_appts: int = 300, n_patients: int = 200, seed: int = 0,
                as_of: dt.datetime = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)) -> Result:
    """A risk-list result with the columns ``carecast score`` writes, sorted riskiest first."""
    rng = np.random.default_rng(seed)

    def plan_cols(n: int) -> dict:
        actions = rng.choice(list(ACTION_WORDS), n)
        ch = rng.choice(["sms", "email", "phone", "portal", ""], n, p=[.4, .2, .2, .15, .05])
        reasons = ["; ".join(rng.choice(REASONS, 3, replace=False)) for _ in range(n)]
        return {"reasons": reasons, "reason_features": ["f1,f2,f3"] * n, "channel": ch, "action": actions,
                "action_label": [ACTION_WORDS[a] for a in actions], "expected_benefit": rng.random(n) / 3,
                "uses_coordinator": rng.random(n) < 0.1, "coordinator_rank": pd.array([None] * n, dtype="Int64"),
                "drivers": reasons, "why": [f"Risk reason {i % 7}" for i in range(n)]}

    p = np.sort(rng.beta(2, 4, n_appts))[::-1]
    when = pd.Timestamp(as_of) + pd.to_timedelta(rng.integers(0, 14 * 24 * 4, n_appts) * 15, unit="min")
    appts = pd.DataFrame({"rank": np.arange(1, n_appts + 1), "appointment_id": [f"A{i:07d}" for i in range(n_appts)],
                          "patient_id": [f"P{i % 997:06d}" for i in range(n_appts)], "scheduled_at": when,
                          "department": rng.choice(DEPARTMENTS, n_appts), "visit_type": rng.choice(VISIT_TYPES, n_appts),
                          "telehealth": rng.random(n_appts) < 0.2, "probability": p, "risk_tier": _tier(p),
                          "known_patient": True, **plan_cols(n_appts)})
    q = np.sort(rng.beta(2, 3, n_patients))[::-1]
    last = pd.Timestamp(as_of) - pd.to_timedelta(rng.integers(1, 700, n_patients), unit="D")
    pats = pd.DataFrame({"rank": np.arange(1, n_patients + 1), "patient_id": [f"Q{i:06d}" for i in range(n_patients)],
                         "department": rng.choice(DEPARTMENTS, n_patients), "last_visit": last, "probability": q,
                         "risk_tier": _tier(q), "known_patient": True, **plan_cols(n_patients)})
    models = {t: {"name": f"carecast-{t.replace('_', '-')}", "version": v}
              for t, v in (("no_show", "4"), ("churn", "2"), ("channel", "3"))}
    empty = pd.DataFrame({"x": []})
    return Result(as_of, appts, pats, empty, empty, models,
                  {"appointments": n_appts, "appointments_listed": n_appts, "patients_listed": n_patients})


def write_fake_lists(settings, n_appts: int = 300, n_patients: int = 200, seed: int = 0) -> Path:
    return write(settings, fake_result(n_appts, n_patients, seed), ScoreOptions())


USER, PASSWORD = "coord", "correct horse battery"


def add_user(settings, name: str = USER, password: str = PASSWORD) -> None:
    """A coordinator account in the settings' home (what ``carecast users add`` makes)."""
    from serving.ui.auth import Accounts

    Accounts.from_settings(settings).add_user(name, password)


def login(client, name: str = USER, password: str = PASSWORD, prefix: str = "/ui", origin: str = "http://testserver"):
    """POST the login form as the page's own browser would (same Origin); the response, not followed."""
    return client.post(f"{prefix}/login", data={"username": name, "password": password},
                       headers={"Origin": origin}, follow_redirects=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving ``app`` on a free loopback port in a thread (``with Server(app) as url``)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def mounted(ui_app, prefix: str = "/ui"):
    """The page mounted under ``prefix`` in a parent app, as the service mounts it."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    return Starlette(routes=[Mount(prefix, ui_app)])


def page_client():
    """A TestClient on the page of the current ``CARECAST_HOME`` with fake lists (300 appointments, 120 patients)
    and one coordinator account."""
    from starlette.testclient import TestClient

    from carecast.settings import load_settings
    from serving.ui import create_ui_app

    s = load_settings()
    write_fake_lists(s, 300, 120)
    add_user(s)
    return TestClient(mounted(create_ui_app(s)), base_url="http://testserver")
