"""The Bento: ``python -m serving.bento build`` packs the three champions and only the runtime requirement set,
refuses at build time when a champion is missing, and ``bentoml serve <tag>`` of the built Bento (not the source
tree) answers an explained prediction on loopback. BentoML's state lives in the test's temporary folder."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import test_serving_support as sup

from carecast.settings import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bento")]

DEV_ONLY = ("pytest", "playwright", "ruff", "nbmake", "ipykernel")


def _env(home: Path, bentoml_home: Path) -> dict[str, str]:
    env = {**os.environ, **sup.serving_env(home), "BENTOML_HOME": str(bentoml_home)}
    env.pop("SERVING_MODEL_SOURCE", None)
    return env


def _bento(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.bento", "build"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_build_without_champions_is_refused(tmp_path: Path, home: Path) -> None:
    env = _env(home, tmp_path / "bentoml")
    sup.register(home, "no_show")  # one champion of three
    out = _bento(env)
    assert out.returncode != 0
    assert "no Bento built" in out.stderr and "carecast-churn: no 'champion' alias" in out.stderr, out.stderr
    assert "carecast-channel" in out.stderr and "carecast-no-show:" not in out.stderr
    assert not (tmp_path / "bentoml" / "bentos").exists() or not any((tmp_path / "bentoml" / "bentos").iterdir())
    assert not (tmp_path / "bentoml" / "models").exists() or not any((tmp_path / "bentoml" / "models").iterdir())


def test_build_and_serve_the_bento(tmp_path: Path, home: Path) -> None:
    versions = sup.register_all(home)
    bentoml_home = tmp_path / "bentoml"
    env = _env(home, bentoml_home)
    out = _bento(env)
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1]
    assert tag.startswith("carecast:"), out.stdout

    name, version = tag.split(":")
    bento_dir = bentoml_home / "bentos" / name / version
    manifest = (bento_dir / "bento.yaml").read_text()
    for model in ("carecast-no-show", "carecast-churn", "carecast-channel"):
        assert f"tag: {model}:" in manifest, manifest
    reqs = (bento_dir / "env" / "python" / "requirements.txt").read_text().lower()
    assert "xgboost-cpu==" in reqs and "psycopg==" in reqs
    shipped = {line.split("==")[0].strip() for line in reqs.splitlines() if "==" in line}
    assert not shipped & set(DEV_ONLY), shipped & set(DEV_ONLY)
    assert not (bento_dir / "src" / "tests").exists()

    # a newer champion in the registry after the build: the Bento keeps serving the versions packed into it
    assert sup.register(home, "no_show", seed=5) != versions["no_show"]

    # serve the built Bento from its own folder: the repository is not on the path, only the tests' feature source
    port = sup.free_port()
    serve_env = {**env, "PYTHONPATH": str(Path(sup.__file__).parent)}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve", tag, "--host", "127.0.0.1",
                             "--port", str(port)], cwd=tmp_path, env=serve_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"bentoml serve {tag} did not become ready: {(tmp_path / 'serve.log').read_text()[-4000:]}")
            time.sleep(0.5)
        auth = {"Authorization": f"Bearer {sup.API_KEY}"}
        r = httpx.get(f"{base}/v1/models", headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        assert {t: m["version"] for t, m in r.json()["models"].items()} == versions, r.json()
        r = httpx.post(f"{base}/v1/no-show", json={"appointments": [sup.appointment(sup.KNOWN[0])], "top_k": 3},
                       headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"]["version"] == versions["no_show"]
        (pred,) = body["predictions"]
        p = pred["probability"]
        total = pred["base_value"] + sum(x["contribution"] for x in pred["reasons"]) + pred["other"]
        assert abs(total - math.log(p / (1 - p))) < 1e-4
        assert pred["reasons"] and all(x["text"] for x in pred["reasons"])
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(20)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
