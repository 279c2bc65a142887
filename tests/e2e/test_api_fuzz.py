"""A bounded schemathesis run over every route in ``/docs.json``, with the API key: no answer is a 5xx.

The service is the real ASGI app (BentoML's, with the routes of ``serving/app.py``) over real XGBoost models in
a real MLflow registry under a temporary home (the same set-up as tests/integration/test_serving_api.py).
Each operation gets ``CASES`` valid and ``CASES`` invalid requests generated from its schema with a fixed seed
(the same cases every run). The long, unseeded run against a real server is ``benchmarks/bench_fuzz.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_serving_api as api
import test_serving_support as sup
from test_fuzz_support import fuzz, summary

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving-asgi")]

CASES = 25   # per operation and mode: about 300 requests over 9 operations


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("fuzz-home")
    sup.register_all(home, trees=10)
    return home


def test_no_generated_request_gets_a_5xx(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with api._client(registry, monkeypatch) as client:
        # /metrics: BentoML's Prometheus endpoint answers only under a real server (its multiprocess folder);
        # benchmarks/bench_fuzz.py fuzzes it there
        res = fuzz(client, client.get("/docs.json").json(), "http://testserver", api.AUTH, CASES, seed=16,
                   skip_paths=("/metrics",))
    print(summary(res))
    assert {"POST /v1/no-show", "POST /v1/churn", "POST /v1/channel", "POST /v1/outreach-plan",
            "POST /v1/admin/reload", "GET /v1/models"} <= set(res.operations), res.operations
    assert res.total >= 200, res.statuses
    assert not res.failures, res.failures[:10]
    # the key was used: the prediction routes answered with data, not only 401
    assert res.statuses[("POST /v1/churn", 200)] > 0 and res.statuses[("POST /v1/no-show", 200)] > 0
