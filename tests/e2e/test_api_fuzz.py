"""A bounded schemathesis run over every route in ``/docs.json``, with the API key: no answer is a 5xx.

The service is the real ASGI app (BentoML's, with the routes of ``serving/app.py``) over real XGBoost models in
a real MLflow registry under a temporary home (the same set-up as tests/integration/test_serving_api.py).
Each operation gets ``CASES`` valid and ``CASES`` invalid requests, generated from its schema with a fixed seed
(the same cases every run). The long, unseeded run is ``benchmarks/bench_fuzz.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import test_serving_api as api
import test_serving_support as sup

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving-asgi")]

CASES = 25   # per operation and mode: with ~11 operations about 550 requests


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("fuzz-home")
    sup.register_all(home, trees=10)
    return home


def test_no_generated_request_gets_a_5xx(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    statuses: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    with api._client(registry, monkeypatch) as client:
        schema = schemathesis.openapi.from_dict(client.get("/docs.json").json())
        # /metrics: BentoML's Prometheus endpoint answers only under a real server (its multiprocess folder);
        # benchmarks/bench_fuzz.py fuzzes it there
        ops = [op for op in (r.ok() for r in schema.get_all_operations()) if op.path != "/metrics"]
        labels = {op.label for op in ops}
        assert {"POST /v1/no-show", "POST /v1/churn", "POST /v1/channel", "POST /v1/outreach-plan",
                "POST /v1/admin/reload", "GET /v1/models"} <= labels, labels
        for op in ops:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                @seed(16)
                @settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
                @given(case=op.as_strategy(generation_mode=mode))
                def one(case) -> None:
                    kw = case.as_transport_kwargs(base_url="http://testserver")
                    kw["headers"] = {**(kw.get("headers") or {}), **api.AUTH}
                    kw.pop("timeout", None)
                    kw.pop("allow_redirects", None)
                    try:
                        r = client.request(**kw, follow_redirects=False)
                    except AssertionError:   # the app sent no response at all: as bad as a 5xx
                        failures.append(f"{op.label} ({mode}): no response to {kw['method']} {kw['url']}")
                        return
                    statuses[(op.label, r.status_code // 100 * 100)] += 1
                    if r.status_code >= 500:
                        failures.append(f"{op.label} ({mode}): {r.status_code} {r.text[:200]}")

                try:
                    one()
                except Unsatisfiable:   # an operation with no input (GET /livez) has no invalid request
                    assert mode == GenerationMode.NEGATIVE, op.label
    total = sum(statuses.values())
    print(f"{total} requests over {len(labels)} operations: "
          + ", ".join(f"{k[0]} {k[1] // 100}xx={v}" for k, v in sorted(statuses.items())))
    assert total >= 200, statuses
    assert not failures, failures[:10]
    # the key was used: the prediction routes answered with data, not only 401
    assert statuses[("POST /v1/churn", 200)] > 0 and statuses[("POST /v1/no-show", 200)] > 0
