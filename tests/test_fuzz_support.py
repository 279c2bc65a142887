"""Schemathesis over the API's own OpenAPI document, shared by the bounded run in tests/e2e/test_api_fuzz.py
and the long one in benchmarks/bench_fuzz.py (no tests here)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FuzzResult:
    statuses: Counter = field(default_factory=Counter)      # (operation, status class) -> answers
    failures: list[str] = field(default_factory=list)       # a 5xx or no answer, one line each
    operations: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


def fuzz(client: Any, spec: dict, base_url: str, headers: dict[str, str], cases: int, seed: int | None,
         skip_paths: tuple[str, ...] = (), deadline: float | None = None) -> FuzzResult:
    """``cases`` valid and ``cases`` invalid requests per operation of ``spec``, sent with ``headers`` through
    ``client`` (an httpx client or Starlette's TestClient); stops sending at ``deadline`` (monotonic)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fix_seed
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    out = FuzzResult()
    schema = schemathesis.openapi.from_dict(spec)
    ops = [op for op in (r.ok() for r in schema.get_all_operations()) if op.path not in skip_paths]
    out.operations = [op.label for op in ops]

    def run(op: Any, mode: GenerationMode) -> None:
        @settings(max_examples=cases, deadline=None, database=None, derandomize=seed is not None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def one(case: Any) -> None:
            if deadline is not None and time.monotonic() > deadline:
                return
            kw = case.as_transport_kwargs(base_url=base_url)
            kw["headers"] = {**(kw.get("headers") or {}), **headers}
            kw.pop("timeout", None)
            kw.pop("allow_redirects", None)
            try:
                r = client.request(**kw, follow_redirects=False)
            except AssertionError:   # TestClient: the app sent no response at all, as bad as a 5xx
                out.failures.append(f"{op.label} ({mode}): no response")
                return
            except Exception as exc:  # noqa: BLE001  (a real server that drops the connection: a failure, named)
                out.failures.append(f"{op.label} ({mode}): {type(exc).__name__}")
                return
            out.statuses[(op.label, r.status_code // 100 * 100)] += 1
            if r.status_code >= 500:
                out.failures.append(f"{op.label} ({mode}): {r.status_code} {r.text[:200]}")

        test = fix_seed(seed)(one) if seed is not None else one
        try:
            test()
        except Unsatisfiable:   # an operation with no input (GET /livez) has no invalid request
            if mode != GenerationMode.NEGATIVE:
                raise

    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(op, mode)
    return out


def summary(result: FuzzResult) -> str:
    return (f"{result.total} requests over {len(result.operations)} operations: "
            + ", ".join(f"{k[0]} {k[1] // 100}xx={v}" for k, v in sorted(result.statuses.items())))
