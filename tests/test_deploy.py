"""prefect.yaml's deployments registered by `prefect deploy` on a real Prefect server, against work pools of
each kind (whose job templates validate the job variables), then read back from the server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

from groundwork.project import copy_project, tiny_params_dict

pytestmark = [pytest.mark.server]

POOLS = {"groundwork-process": "process", "groundwork-docker": "docker", "groundwork-kubernetes": "kubernetes"}
DEPLOY_ENV = {"GROUNDWORK_GIT_URL": "https://git.example.com/ml/groundwork.git",
              "GROUNDWORK_IMAGE": "registry.example.com/ml/groundwork:1.4",
              "MLFLOW_TRACKING_URI": "http://mlflow.example.com:5000"}


@pytest.fixture(scope="module")
def deployments(tmp_path_factory: pytest.TempPathFactory,
                prefect_test_server: None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every deployment of prefect.yaml, deployed from a copy of the project to the test server, by name."""
    project = copy_project(tmp_path_factory.mktemp("project"), tiny_params_dict())
    with get_client(sync_client=True) as client:
        for pool, kind in POOLS.items():  # as `prefect work-pool create <pool> --type <kind>` makes them
            template = asyncio.run(get_default_base_job_template_for_infrastructure_type(kind))
            client.create_work_pool(WorkPoolCreate(name=pool, type=kind, base_job_template=template))
        env = {**os.environ, **DEPLOY_ENV, "PREFECT_API_URL": PREFECT_API_URL.value(),
               "GROUNDWORK_PROJECT_DIR": str(project), "PYTHONPATH": str(project)}
        names = [arg for name in ("nightly", "nightly-docker", "nightly-kubernetes", "hourly-adaptive")
                 for arg in ("--name", name)]
        deploy = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", *names], cwd=project,
                                env=env, capture_output=True, text=True)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        found = {d.name: d for d in client.read_deployments()}
        yield project, found


def test_nightly_deployment_for_the_process_pool(deployments: tuple[Path, dict[str, Any]]) -> None:
    project, found = deployments
    nightly = found["nightly"]
    assert nightly.work_pool_name == "groundwork-process"
    assert nightly.entrypoint == "flows/pipeline.py:pipeline"
    [schedule] = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 2 * * *", "UTC", True)
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert nightly.parameters == {"project_dir": ".", "push": False}
    assert {"overrides", "push"} <= set(nightly.parameter_openapi_schema["properties"])
    # the worker runs the flow in the project folder given when deploying
    assert nightly.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}]


def test_hourly_deployment_of_the_adaptive_loop(deployments: tuple[Path, dict[str, Any]]) -> None:
    project, found = deployments
    loop = found["hourly-adaptive"]
    assert (loop.entrypoint, loop.work_pool_name) == ("flows/adaptive.py:adaptive_loop", "groundwork-process")
    [schedule] = loop.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("15 * * * *", "UTC")
    assert loop.concurrency_options.collision_strategy == "CANCEL_NEW" and loop.global_concurrency_limit.limit == 1
    assert loop.parameters == {"project_dir": "."}
    assert loop.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}]
    # the arrival trigger, as the automation `prefect deploy` made of it: an arrival event runs this deployment
    with get_client(sync_client=True) as client:
        [automation] = client.read_automations_by_name("hourly-adaptive__automation_1")
    assert automation.trigger.expect == {"groundwork.batch.arrived"} and automation.enabled
    assert automation.trigger.match.root == {"prefect.resource.id": "groundwork.incoming.*"}
    [action] = automation.actions
    assert (action.type, action.deployment_id) == ("run-deployment", loop.id)


@pytest.mark.parametrize("name", ["nightly-docker", "nightly-kubernetes"])
def test_container_deployments_clone_pull_and_push(deployments: tuple[Path, dict[str, Any]], name: str) -> None:
    _, found = deployments
    deployment = found[name]
    assert POOLS[deployment.work_pool_name] == name.removeprefix("nightly-")
    assert deployment.schedules[0].schedule.cron == found["nightly"].schedules[0].schedule.cron
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.parameters == {"project_dir": ".", "push": True}
    variables = deployment.job_variables
    assert variables["image"] == DEPLOY_ENV["GROUNDWORK_IMAGE"]
    assert variables["env"] == {"MLFLOW_TRACKING_URI": DEPLOY_ENV["MLFLOW_TRACKING_URI"]}
    [clone, workdir, pull] = deployment.pull_steps
    assert clone["prefect.deployments.steps.git_clone"]["repository"] == DEPLOY_ENV["GROUNDWORK_GIT_URL"]
    assert workdir["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ clone.directory }}"
    assert pull["prefect.deployments.steps.run_shell_script"]["script"] == "dvc pull --allow-missing"
