"""Package the service and the champion models as a Bento.

``export`` copies each target's ``champion`` from the MLflow registry into BentoML's model store
(``$BENTOML_HOME``, by default ``$CARECAST_HOME/bentoml``) as ``carecast-no-show:<generated>`` and
so on, each labelled with its MLflow version; the service declares them as
``bentoml.models.BentoModel`` class attributes when they are in the store, so ``bentoml build``
packs them. ``build`` does both steps.

    python -m serving.bento export     # champions -> BentoML model store
    python -m serving.bento build      # export, then `bentoml build` at the repo root

Both refuse, before anything is written to the store, when a target has no loadable champion: a Bento
without its models would only fail when it starts (docs/scaling.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from carecast.settings import REPO_ROOT, Settings, load_settings
from carecast.targets import TARGETS
from serving.cli import serve_env
from serving.model_source import MlflowModelSource, ModelNotAvailable, ServedModel, export_snapshot


class BuildRefused(SystemExit):
    """A Bento cannot be built; the message says which champion is missing and why."""


def champions(settings: Settings) -> dict[str, ServedModel]:
    """Every target's champion, loaded from the registry; refuses with every missing one named."""
    source = MlflowModelSource(settings.tracking_uri, settings.mlflow.registry_uri)
    models, missing = {}, []
    for target in TARGETS:
        try:
            models[target] = source.load(target)
        except ModelNotAvailable as e:
            missing.append(str(e))
    if missing:
        raise BuildRefused(f"no Bento built: {'; '.join(missing)} (registry {settings.tracking_uri}). "
                           "Train and promote first: carecast train --target all && carecast promote --target all")
    return models


def export(settings: Settings) -> dict[str, str]:
    import bentoml  # about a second: imported only when exporting

    tags = {}
    for target, model in champions(settings).items():
        name = TARGETS[target].registered_model
        with bentoml.models.create(name, labels={"mlflow_version": model.version, "registered_model": name},
                                   metadata={"target": target, "mlflow_version": model.version}) as bm:
            export_snapshot(model, Path(bm.path))
        tags[target] = str(bm.tag)
    return tags


def build(settings: Settings) -> str:
    tags = export(settings)
    print("exported: " + ", ".join(tags.values()))
    # bentofile.yaml: the runtime requirement set as pinned (`lock_packages: false`), so no index is asked
    out = subprocess.run([str(Path(sys.executable).with_name("bentoml")), "build", "--output", "tag"],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise BuildRefused(f"bentoml build failed (exit {out.returncode}); its output is above")
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return tag


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    settings = load_settings()
    os.environ.update(serve_env(settings))  # BENTOML_HOME under the home unless set
    if args[:1] == ["export"]:
        print(export(settings))
    elif args[:1] == ["build"]:
        print(build(settings))
    else:
        raise SystemExit("usage: python -m serving.bento export|build")


if __name__ == "__main__":
    main()
