"""`carecast serve`: the prediction API (``bentoml serve``) on loopback, over the state in CARECAST_HOME.

``serving.workers`` reaches BentoML as ``services.carecast.workers`` in ``BENTOML_CONFIG_OVERRIDES`` (merged into any
JSON already there): the service class declares one worker, and the settings are read only when a worker starts,
so the command that starts the server is where the setting is applied. ``bentoml serve`` run by hand takes the same
variable. Settings that declare more replicas than their stores can serve are refused here, before anything starts
(``serving.runtime.deployment_problems``), and again by each worker.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from carecast.cli_support import fail, settings_or_exit
from carecast.settings import REPO_ROOT, Settings

SERVICE = "serving.service:CareCast"
SERVICE_NAME = "carecast"  # the name in @bentoml.service (serving/service.py)
BENTOML_OVERRIDES = "BENTOML_CONFIG_OVERRIDES"


def serve_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: this home, BentoML's own state under it, no usage tracking."""
    env = dict(os.environ if base is None else base)
    env["CARECAST_HOME"] = str(settings.home)
    env.setdefault("BENTOML_HOME", str(settings.home / "bentoml"))
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env[BENTOML_OVERRIDES] = bentoml_overrides(settings, env.get(BENTOML_OVERRIDES))
    return env


def bentoml_overrides(settings: Settings, existing: str | None = None) -> str:
    """BentoML's JSON configuration overrides with ``services.carecast.workers`` = ``serving.workers`` (the setting
    wins over a value already there; everything else already there is kept)."""
    try:
        config = json.loads(existing) if existing and existing.strip() else {}
    except ValueError:
        raise ValueError(f"{BENTOML_OVERRIDES} is not valid JSON") from None
    if not isinstance(config, dict):
        raise ValueError(f"{BENTOML_OVERRIDES} must be a JSON object")
    services = config.setdefault("services", {})
    services.setdefault(SERVICE_NAME, {})["workers"] = settings.serving.workers
    return json.dumps(config, separators=(",", ":"))


def serve_command(settings: Settings, port: int | None = None, bento: str | None = None) -> list[str]:
    bentoml = Path(sys.executable).with_name("bentoml")
    target = bento or SERVICE
    cmd = [str(bentoml), "serve", target, "--host", settings.serving.host,
           "--port", str(port or settings.serving.port)]
    if bento is None:
        cmd += ["--working-dir", str(REPO_ROOT)]
    return cmd


def serve(
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: serving.port, 3000).")] = None,
    bento: Annotated[str | None, typer.Option(help="Serve a built Bento by tag (e.g. carecast:latest) instead of the source tree.")] = None,
) -> None:
    """Start the prediction API (BentoML) on serving.host (127.0.0.1 unless configured)."""
    from serving.runtime import deployment_problems

    s = settings_or_exit()
    if port is not None and not 0 < port < 65536:
        fail(f"--port: must be between 1 and 65535, got {port}")
    problems = deployment_problems(s, registry=bento is None)
    if problems:
        fail("refusing to serve: " + "; ".join(problems))
    if not s.serving.api_keys:
        typer.echo("warning: no API keys (set CARECAST_API_KEYS=key1,key2): every /v1 request will get 401", err=True)
    cmd = serve_command(s, port, bento)
    try:
        env = serve_env(s)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"serving on http://{s.serving.host}:{port or s.serving.port} with {s.serving.workers} worker(s) "
               f"(home {s.home})", err=True)
    os.execve(cmd[0], cmd, env)  # bentoml handles signals and shuts its workers down itself
