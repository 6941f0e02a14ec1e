"""The study's parent run: one per study, for all its processes and commands, found or created under the study's
lock; and the run `mlflow run` created, linked to it where it is not the parent itself."""

from __future__ import annotations

import os

import mlflow
import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from study import contract


def attach_parent_run(study: optuna.Study, study_name: str, launcher_run: str | None) -> tuple[mlflow.ActiveRun, bool]:
    """Start (or reopen) the study's parent run; (the run, whether it is new). The caller holds the study's lock.

    A study has one parent run for all its processes, in the study's experiment (`study_experiment`). It
    is the run whose id the study keeps; else the one tagged as the study's parent there (a process
    killed between creating it and recording it); else the run `mlflow run` created, where that is in
    the study's experiment; else a new one. A launcher's run elsewhere is linked to it (`link_launcher_run`).
    """
    client = mlflow.MlflowClient()
    stored = study.user_attrs.get(contract.PARENT_RUN_ID_ATTR)
    parent_id = stored if stored and _is_active(client, stored) else None
    experiment_name = study_experiment(client, study_name, launcher_run)
    experiment = client.get_experiment_by_name(experiment_name)
    if parent_id is None and experiment is not None:
        found = client.search_runs(
            [experiment.experiment_id], f"tags.{contract.STUDY_TAG} = '{study_name}' and "
            f"tags.{contract.STUDY_ROLE_TAG} = '{contract.PARENT_ROLE}'", order_by=["attributes.start_time ASC"],
            max_results=1)
        parent_id = found[0].info.run_id if found else None
    new = parent_id is None
    if new and launcher_run and experiment is not None \
            and client.get_run(launcher_run).info.experiment_id == experiment.experiment_id:
        parent_id = launcher_run
        # `mlflow run` gives its run a random name; the study's is what users look for in the UI.
        client.update_run(launcher_run, name=study_name)
    if parent_id is None:
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        parent_id = client.create_run(experiment_id, run_name=study_name, tags={
            contract.STUDY_TAG: study_name, contract.STUDY_ROLE_TAG: contract.PARENT_ROLE}).info.run_id
    client.set_tag(parent_id, contract.STUDY_TAG, study_name)
    client.set_tag(parent_id, contract.STUDY_ROLE_TAG, contract.PARENT_ROLE)
    if parent_id != stored:
        study.set_user_attr(contract.PARENT_RUN_ID_ATTR, parent_id)
    # The fluent API's experiment follows the parent's (a stale one from earlier in this process would refuse it).
    mlflow.set_experiment(experiment_id=client.get_run(parent_id).info.experiment_id)
    parent = mlflow.start_run(run_id=parent_id)
    if launcher_run and launcher_run != parent_id:
        link_launcher_run(client, launcher_run, study_name, parent)
    return parent, new


def _is_active(client: mlflow.MlflowClient, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False  # not in this tracking store (or deleted): the study gets another parent run


def study_experiment(client: mlflow.MlflowClient, study_name: str, launcher_run: str | None) -> str:
    """The experiment the study's runs go in: `$MLFLOW_EXPERIMENT_NAME` where set, else the one `mlflow run`
    was told (`--experiment-name` or `--experiment-id`, i.e. any but MLflow's Default), else the study's name."""
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return os.environ["MLFLOW_EXPERIMENT_NAME"]
    if launcher_run:
        experiment_id = client.get_run(launcher_run).info.experiment_id
        if experiment_id != DEFAULT_EXPERIMENT_ID:
            return client.get_experiment(experiment_id).name
    return study_name


def link_launcher_run(client: mlflow.MlflowClient, launcher_run: str, study_name: str,
                      parent: mlflow.ActiveRun) -> None:
    """Point the run `mlflow run` created, which is not the study's parent (it sits in another experiment,
    MLflow's Default where no experiment was named), to the study: tagged with the study's name, its
    experiment and parent run, named after the study, and described with a link to the parent run."""
    experiment_id, parent_id = parent.info.experiment_id, parent.info.run_id
    experiment = client.get_experiment(experiment_id).name
    client.update_run(launcher_run, name=f"{study_name} (launcher)")
    for key, value in ((contract.STUDY_TAG, study_name), (contract.STUDY_ROLE_TAG, contract.LAUNCHER_ROLE),
                       (contract.STUDY_EXPERIMENT_TAG, experiment), (contract.STUDY_PARENT_RUN_TAG, parent_id),
                       (MLFLOW_RUN_NOTE, f"This run launched study **{study_name}**: its parent run and trials are in "
                                         f"experiment [{experiment}](#/experiments/{experiment_id}), parent run "
                                         f"[{study_name}](#/experiments/{experiment_id}/runs/{parent_id}).")):
        client.set_tag(launcher_run, key, value)

