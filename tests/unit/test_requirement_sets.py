"""The two requirement sets: the runtime set (requirements.lock, what a Bento ships) and the development set
(requirements-dev.lock), both pinned, disjoint, and agreeing with pyproject.toml."""

from __future__ import annotations

import re
import tomllib

from carecast.settings import REPO_ROOT


def _pins(name: str) -> dict[str, str]:
    out = {}
    for line in (REPO_ROOT / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", line), f"{name}: not an exact pin: {line!r}"
        pkg, version = line.split("==")
        out[re.sub(r"[-_.]+", "-", pkg).lower()] = version
    return out


def _declared(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)", r.strip())
        assert m, f"pyproject.toml: not an exact pin: {r!r}"
        out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(3)
    return out


def test_runtime_and_dev_sets_are_pinned_disjoint_and_match_pyproject() -> None:
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert not set(runtime) & set(dev), set(runtime) & set(dev)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for pkg, version in _declared(project["dependencies"]).items():
        assert runtime.get(pkg) == version, f"runtime dependency {pkg}=={version} not pinned in requirements.lock"
    for pkg, version in _declared(project["optional-dependencies"]["dev"]).items():
        assert runtime.get(pkg, dev.get(pkg)) == version, f"dev dependency {pkg}=={version} not pinned"
    for pkg, version in _declared(project["optional-dependencies"]["spark"]).items():
        assert dev.get(pkg) == version and pkg not in runtime, f"spark extra {pkg}=={version}: dev set only"
    for tool in ("pytest", "pytest-xdist", "playwright", "ruff", "nbmake"):
        assert tool in dev and tool not in runtime, tool


def test_bentofile_ships_the_runtime_set_as_pinned() -> None:
    import yaml

    python = yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())["python"]
    assert python["requirements_txt"] == "./requirements.lock"
    assert python["lock_packages"] is False  # `bentoml build` would otherwise re-lock with uv against the index
