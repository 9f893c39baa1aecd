"""Serve a deployment of prefect.yaml from this process, no work pool needed: `nightly` (the pipeline, `make
serve`) or `hourly-adaptive` (the adaptive loop, `make schedule-loop`).

The schedule, event triggers, concurrency limit and parameters are read from prefect.yaml, the one place they are
declared.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron


def deployment_spec(root: Path, name: str) -> dict[str, Any]:
    """The named deployment's entry in root/prefect.yaml."""
    spec = yaml.safe_load((root / "prefect.yaml").read_text())
    for deployment in spec.get("deployments", []):
        if deployment["name"] == name:
            return deployment
    raise KeyError(f"{root / 'prefect.yaml'}: no deployment named {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Register the deployment with the Prefect API and run its scheduled and triggered flow runs until
    interrupted."""
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__)
    parser.add_argument("--project-dir", type=Path, default=Path("."), help="the project holding prefect.yaml")
    parser.add_argument("--deployment", default="nightly", help="the deployment of prefect.yaml to serve")
    args = parser.parse_args(argv)
    spec = deployment_spec(args.project_dir, args.deployment)
    limit = spec.get("concurrency_limit")
    path, _, name = spec["entrypoint"].partition(":")  # flows/pipeline.py:pipeline
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
    flow.serve(
        name=spec["name"],
        description=spec.get("description"),
        schedules=[Cron(s["cron"], timezone=s.get("timezone", "UTC")) for s in spec.get("schedules", [])],
        triggers=[DeploymentEventTrigger(**{key: value for key, value in trigger.items() if key != "type"})
                  for trigger in spec.get("triggers", [])],
        global_limit=ConcurrencyLimitConfig(**limit) if limit else None,
        parameters=spec.get("parameters"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
