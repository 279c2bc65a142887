"""A clinic whose departments and visit types the generator never uses: learned from its feeds with no
configuration, or pinned in carecast.yaml. Validation, the feature build, training, scoring, an API request with
a department of the site (and one outside its vocabulary) and the page's department filter, in a fresh home each.

The world: a small synthetic world whose department and visit-type columns are rewritten to another site's codes
(and whose generator vocabulary file is removed: it is no longer the generator's world)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from starlette.testclient import TestClient
from test_ui_support import add_user, login

from carecast.settings import load_settings
from features.catalog import MANIFEST_FILE
from features.feeds import vocabulary
from features.synth.codes import DEPARTMENTS, VISIT_TYPES

KEY = "site-vocabulary-key-0123456789"
AS_OF = "2026-06-01"
#: the generator's departments and visit types, as another site names them (a space and capitals on purpose)
SITE_DEPARTMENTS = dict(zip(DEPARTMENTS, ["family_medicine", "neurology", "oncology", "pediatric_neurology",
                                          "Sleep Medicine", "psychiatry", "midwifery", "nephrology"], strict=True))
SITE_VISIT_TYPES = dict(zip(VISIT_TYPES, ["intake", "review", "wellness", "infusion", "same_day"], strict=True))
RARE = "wound_care"   # a department seen 3 times: below vocabulary.min_count, read as other


def _site_world(ok, home: Path) -> Path:
    ok("data", "synth", "--patients", "500", "--seed", "7", "--out", str(home / "site"))
    feeds = home / "site"
    (feeds / vocabulary.FILE).unlink()   # the generator's declared codes: not this site's
    v = pd.read_parquet(feeds / "visits.parquet")
    v["department"] = v["department"].map(SITE_DEPARTMENTS)
    v["visit_type"] = v["visit_type"].map(SITE_VISIT_TYPES)
    v.loc[v.index[:3], "department"] = RARE
    v.to_parquet(feeds / "visits.parquet", index=False)
    return feeds


def _train_and_score(ok) -> None:
    from training import registry
    from training.model import Shape
    from training.train import train_target

    s = load_settings()
    train_target(s, "no_show", shape=Shape(num_boost_round=40, early_stopping_rounds=10), plots_on=False)
    if registry.version_by_alias(s, "no_show", registry.CHAMPION) is None:   # a tiny world: the gate may refuse
        registry.set_alias(s, "no_show", registry.CHAMPION, "1")
    ok("score", "--as-of", AS_OF, "--days", "14", "--calls", "5")


def _client() -> TestClient:
    from serving.app import build_app
    from serving.runtime import Runtime

    s = load_settings()
    rt = Runtime.from_settings(s)
    rt.start(poll=False)
    return TestClient(build_app(rt))


def _served_checks(client: TestClient, department: str) -> dict:
    """An API request with a department of the site and one outside its vocabulary; the page's filter."""
    s = load_settings()
    visits = pd.read_parquet(s.validated_dir / "visits.parquet")
    row = visits[visits.department == department].iloc[0]
    appt = {"appointment_id": "NEW-1", "patient_id": str(row.patient_id), "scheduled_at": "2026-06-10T09:00:00",
            "booked_at": "2026-06-01T09:00:00", "department": department, "visit_type": "review", "telehealth": False}
    auth = {"Authorization": f"Bearer {KEY}"}
    r = client.post("/v1/no-show", headers=auth, json={"appointments": [appt, {**appt, "appointment_id": "NEW-2",
                                                                               "department": "astrology"}]})
    assert r.status_code == 200, r.text
    site, unknown = r.json()["predictions"]
    assert site["notes"] == [] and 0 < site["probability"] < 1
    assert unknown["notes"] == ["department 'astrology' is not in the site's vocabulary the model was trained on: "
                                "scored as 'other'"]
    # the page lists the site's departments (all of them, listed or not) and filters by them
    add_user(s)   # a coordinator account (the page logs in people, not API keys)
    assert login(client).status_code == 303
    assert f'<option value="{department}">' in client.get("/ui/appointments").text
    listed = pd.read_parquet(sorted(s.risk_list_dir.glob("2*"))[-1] / "appointments.parquet")
    shown = str(listed.department.iloc[0])
    page = client.get("/ui/appointments", params={"department": shown})
    assert page.status_code == 200 and f'<option value="{shown}" selected>' in page.text
    rows = list(csv.reader(io.StringIO(client.get("/ui/appointments.csv", params={"department": shown}).text)))[1:]
    assert len(rows) == int((listed.department == shown).sum()) > 0
    assert {r[2] for r in rows} == {shown.replace("_", " ").capitalize()}
    return r.json()


@pytest.mark.slow
def test_a_site_vocabulary_is_learned_from_the_feeds(home: Path, carecast_ok) -> None:
    ok = carecast_ok
    (home / "carecast.yaml").write_text(yaml.safe_dump({"serving": {"api_keys": [KEY]}}))
    feeds = _site_world(ok, home)
    out = ok("data", "validate", str(feeds), "--allow-quarantine")
    assert "department 9 codes (learned)" in out
    s = load_settings()
    learned = json.loads((s.validated_dir / vocabulary.FILE).read_text())
    counts = pd.read_parquet(s.validated_dir / "visits.parquet")["department"].value_counts()
    site = [d for d in counts.index if d != RARE]
    # most frequent first, ties by name; the rare code is read as other, appended last
    assert learned["columns"]["department"] == sorted(site, key=lambda d: (-counts[d], d)) + ["other"]
    assert set(learned["columns"]["visit_type"]) == set(SITE_VISIT_TYPES.values())
    assert learned["sources"]["department"] == "learned"

    ok("features", "build")
    ok("features", "apply")
    ok("features", "materialize")
    manifest = json.loads((s.feature_dir / MANIFEST_FILE).read_text())
    assert manifest["vocabulary"]["columns"] == learned["columns"]
    snapshots = pd.read_parquet(s.feature_dir / "patient_activity.parquet")
    assert {"dept_share_neurology", "dept_share_sleep_medicine", "dept_share_other"} <= set(snapshots.columns)
    assert not [c for c in snapshots.columns if c.startswith("dept_share_") and c[11:] in DEPARTMENTS[1:]]
    rare = snapshots[snapshots.dept_share_other > 0]
    assert rare.patient_id.nunique() >= 1   # the three wound-care visits count as other

    _train_and_score(ok)
    from training import registry

    model = registry.load(s, "no_show")
    assert model.meta["vocabulary"]["columns"]["department"] == learned["columns"]["department"]
    assert model.meta["categorical_columns"]["department_code"] == learned["columns"]["department"]
    with _client() as client:
        _served_checks(client, "neurology")


@pytest.mark.slow
def test_a_site_vocabulary_pinned_in_carecast_yaml(home: Path, carecast_ok) -> None:
    ok = carecast_ok
    pinned = {"department": ["neurology", "oncology", "psychiatry", "family_medicine"],
              "visit_type": ["review", "intake", "infusion"]}
    (home / "carecast.yaml").write_text(yaml.safe_dump({"serving": {"api_keys": [KEY]}, "vocabulary": pinned}))
    feeds = _site_world(ok, home)
    out = ok("data", "validate", str(feeds), "--allow-quarantine")
    assert "department 5 codes (pinned)" in out
    s = load_settings()
    got = json.loads((s.validated_dir / vocabulary.FILE).read_text())["columns"]
    assert got["department"] == [*pinned["department"], "other"]
    assert got["visit_type"] == [*pinned["visit_type"], "other"]
    assert got["sex"] == ["F", "M", "other"]   # an unpinned column is learned (X and U are rarer than 10)

    ok("features", "build")
    ok("features", "apply")
    ok("features", "materialize")
    snapshots = pd.read_parquet(s.feature_dir / "patient_activity.parquet")
    shares = [c for c in snapshots.columns if c.startswith("dept_share_")]
    assert shares == ["dept_share_neurology", "dept_share_oncology", "dept_share_psychiatry",
                      "dept_share_family_medicine", "dept_share_other"]
    # every visit counts in one share: the unpinned departments are other
    visited = snapshots[snapshots.visits_all > 0]
    assert ((visited[shares].sum(axis=1) - 1).abs() < 1e-5).all()
    assert (visited.dept_share_other > 0).any()

    _train_and_score(ok)
    with _client() as client:
        answer = _served_checks(client, "oncology")
    assert answer["model"]["name"] == "carecast-no-show"


def test_a_bad_pin_names_the_file_and_key(home: Path) -> None:
    from carecast.settings import SettingsError

    (home / "carecast.yaml").write_text(yaml.safe_dump({"vocabulary": {"departments": ["neurology"]}}))
    with pytest.raises(SettingsError, match=r"carecast.yaml: vocabulary.departments: unknown key"):
        load_settings()
    (home / "carecast.yaml").write_text(yaml.safe_dump({"vocabulary": {"department": ["neurology", "neurology"]}}))
    with pytest.raises(SettingsError, match=r"carecast.yaml: vocabulary.department: .*unique"):
        load_settings()
