"""The synthetic world's potential outcomes are consistent with what happened (features/synth/outreach.py)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from features.feeds.contracts import OUTREACH_ACTIONS
from features.synth.generate import SynthConfig, generate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-uplift")
    generate(SynthConfig(patients=400, seed=11, start=dt.date(2023, 1, 1), end=dt.date(2026, 6, 30),
                         today=dt.date(2026, 6, 1)), out)
    v = pd.read_parquet(out / "visits.parquet")
    t = pd.read_parquet(out / "truth" / "noshow.parquet").merge(pd.read_parquet(out / "truth" / "outreach.parquet"),
                                                                on="appointment_id")
    return v.merge(t, on="appointment_id")


def test_the_realised_probability_is_the_potential_outcome_of_the_action_taken(world):
    cols = {a: f"p_{a}" for a in OUTREACH_ACTIONS}
    taken = world[[cols[a] for a in OUTREACH_ACTIONS]].to_numpy()[
        np.arange(len(world)), world["action"].map({a: i for i, a in enumerate(OUTREACH_ACTIONS)}).to_numpy()]
    np.testing.assert_allclose(world["p_no_show"].to_numpy(), taken, rtol=1e-6)
    # the feed shows the same action wherever it shows one
    seen = world["outreach_action"].notna()
    assert seen.mean() > 0.9
    assert (world.loc[seen, "outreach_action"] == world.loc[seen, "action"]).all()


def test_actions_never_raise_the_risk_and_only_help_some(world):
    p = world[[f"p_{a}" for a in OUTREACH_ACTIONS]].to_numpy()
    gain = p[:, :1] - p
    assert (gain >= -1e-9).all()
    # heterogeneous: each action leaves most appointments (almost) untouched and helps some a lot
    for k, a in enumerate(OUTREACH_ACTIONS[1:], start=1):
        assert np.quantile(gain[:, k], 0.5) < 0.5 * np.quantile(gain[:, k], 0.95), a
    # never-comes and sure things answer to nothing
    stuck = world["reason"].isin(["never_comes", "sure_thing"]).to_numpy()
    assert stuck.any() and np.allclose(gain[stuck], 0.0)


def test_a_share_is_randomised_with_its_propensity_and_the_policy_logs_only_later(world):
    seen = world[world["outreach_action"].notna()]
    rnd = seen["outreach_randomised"].astype(bool)
    assert 0.15 < rnd.mean() < 0.25
    np.testing.assert_allclose(seen.loc[rnd, "outreach_propensity"], 1 / len(OUTREACH_ACTIONS))
    pol = seen[~rnd]
    logged = pol["outreach_propensity"].notna()
    assert 0.2 < logged.mean() < 0.8
    assert pol.loc[logged, "outreach_at"].min() > pol.loc[~logged, "outreach_at"].max()
    # the decision is at or after the prediction point and before the visit
    point = np.maximum(seen["scheduled_at"] - pd.Timedelta(hours=72), seen["booked_at"])
    assert ((seen["outreach_at"] >= point - pd.Timedelta(minutes=1)) & (seen["outreach_at"] < seen["scheduled_at"])).all()
