"""The study↔report contract: every name the study writes and the report (or a user) reads back.

The study (`study.run`, `study.objective`, `study.tracking`) writes these into
Optuna's storage and MLflow; the report, the importances and the tests read them. Each name is
defined here once, so "where is `mlflow_run_id` defined?" has one answer. Nothing here imports
Keras or MLflow.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from gaplab import curve

# The searched parameters, their names and how Optuna stores them, are declared in study.space
# (`space.PARAMS`, `space.names()`).

# What `--trials` counts, and what the report treats as measured.
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TrialCounts:
    """A study's trials by state: `finished` (complete and pruned) is what `--trials` counts."""

    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @classmethod
    def of(cls, study: optuna.Study) -> TrialCounts:
        states = Counter(trial.state for trial in study.get_trials(deepcopy=False))
        return cls(complete=states[TrialState.COMPLETE], pruned=states[TrialState.PRUNED],
                   failed=states[TrialState.FAIL], running=states[TrialState.RUNNING],
                   waiting=states[TrialState.WAITING])


# ---------------------------------------------------------------- study user attributes
PARENT_RUN_ID_ATTR = "mlflow_parent_run_id"
TRACKING_URI_ATTR = "mlflow_tracking_uri"
CLASS_NAMES_ATTR = "class_names"
# The `--trials` of the latest command that ran the study: the report tells presets still queued past it
# (the study reached its total first) from trials an interruption left queued.
TRIALS_TARGET_ATTR = "trials_target"
# How many commands began the study (set-up counts itself in, under the study's lock): a command's sampler
# seed draws on it, so that commands started together on one study do not sample alike.
COMMANDS_STARTED_ATTR = "commands_started"
# The study's settings every process must share (image size, epochs, seed, data, dataset digest, pruner,
# prune_on) and its data_dir: a resume with other settings is refused, and the report reads the seed and
# prune_on from here. Studies begun before pruner and prune_on were fixed lack those two keys.
SETTINGS_ATTR = "settings"
# The keys of SETTINGS_ATTR that must match for a process to resume or join the study.
SHARED_SETTING_KEYS = ("dataset", "dataset_digest", "image_size", "epochs", "seed", "pruner", "prune_on")

# ---------------------------------------------------------------- trial user attributes
PRESET_ATTR = "preset"
# Set on a trial that failed by its own error (not a stop or a death): a preset that did is not trained again.
FAILED_BY_ERROR_ATTR = "failed_by_error"
RUN_ID_ATTR = "mlflow_run_id"
MODEL_URI_ATTR = "model_uri"
# The trial's settings that are not Optuna parameters: momentum as trained (derived from its
# complement), and whether the model has batchnorm at all (presets without BN).
BN_MOMENTUM_ATTR = "bn_momentum"
BATCHNORM_ATTR = "batchnorm"
# "host:pid" of the worker process that ran the trial (`worker_name`): names the trial of a worker that died.
WORKER_ATTR = "worker"


def worker_name(host: str | None = None, pid: int | None = None) -> str:
    """`host:pid`, the name of a worker process (this one by default), as WORKER_ATTR holds it."""
    return f"{host or socket.gethostname()}:{os.getpid() if pid is None else pid}"


def parse_worker_name(worker: str) -> tuple[str, int | None]:
    """(host, pid) of a `worker_name`; pid None where it is not one."""
    host, _, pid = worker.rpartition(":")
    return host, int(pid) if pid.isdigit() else None

# Besides these, every key of `gaplab.trainer.TrainResult.final_metrics()` is a trial user
# attribute of the same name (val_accuracy, gap, mode_gap, steps, ...).

# ---------------------------------------------------------------- MLflow tags and statuses
def trial_run_name(trial_number: int) -> str:
    """The name of a trial's MLflow run and of its logged model: `trial-007`."""
    return f"trial-{trial_number:03d}"


TRIAL_STATE_TAG = "trial_state"
TRIAL_NUMBER_TAG = "optuna_trial_number"
STUDY_TAG = "study_name"
# What a run that is not a trial's is to its study: the parent run of every trial, or the run `mlflow run`
# created in another experiment, which then also names the study's experiment and parent run.
STUDY_ROLE_TAG = "study_role"
PARENT_ROLE = "parent"
LAUNCHER_ROLE = "launcher"
STUDY_EXPERIMENT_TAG = "study_experiment"
STUDY_PARENT_RUN_TAG = "study_parent_run_id"
ERROR_TAG = "error"
# The registered model (named after the study) version of the best trial carries this alias (study.tracking).
BEST_MODEL_ALIAS = "best"
# A trial run's timings (fit_seconds, eval_seconds, ...) are metrics under this prefix. The MLflow UI shows
# a run's `system/` metrics on its "System metrics" tab, so the "Model metrics" tab opens on the momentum
# curve, the accuracies and the gap, not on a dozen bar charts of seconds. Studies run before this
# version logged them under "timing/".
TIMING_METRIC_PREFIX = "system/timing/"
# MLflow has no "pruned" status: a pruned trial was stopped on purpose, like a killed run.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
# A trial whose worker died (no heartbeat): its run ends KILLED, trial_state FAIL, and the error
# tag starts with this.
WORKER_DIED = "worker died"
# A finished trial's run that was never written (its process stopped first): KILLED, the error tag starts so.
NOT_WRITTEN = "not written"
# A trial's run whose writing failed: FAILED, the error tag starts so (the trial keeps its Optuna state).
WRITE_FAILED = "writing the run failed"
# A trial run's confusion matrices ({"split", "class_names", "matrix"}), on val and on test.
CONFUSION_MATRIX_ARTIFACT = "confusion_matrix.json"
CONFUSION_MATRIX_TEST_ARTIFACT = "confusion_matrix_test.json"
# The study's experiment is tagged as model training. A UI that reads the tag (experiment types,
# MLflow 3.4 until workflow-based navigation replaced them, mlflow/mlflow#20161) opens the experiment
# in its runs view, not the GenAI one, and does not ask for its type. MLflow 3.17's UI ignores the
# tag: its "GenAI / Model training" switch (remembered by the browser, or
# `?workflowType=machine_learning` in the URL) decides; see docs/ui.md.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# ---------------------------------------------------------------- momentum measured in pairs
# Trial user attribute holding the same object as the trial run's `momentum_curve.json`
# (written and read by gaplab.curve.MomentumCurve):
#   {"own_momentum": m, "momentum": [...sorted grid incl. m...], "val_accuracy": [...],
#    "train_eval_accuracy": [...], "test_accuracy": [...], "gap": [...], "mode_gap": [...],
#    "recalibrated": {"val_accuracy": v, "train_eval_accuracy": t, "gap": g, "mode_gap": d}}
# Lists have equal length; gap = train_accuracy - val_accuracy at that momentum, mode_gap =
# train_accuracy - train_eval_accuracy at that momentum. Val chooses the best momentum; test_accuracy
# (the test split at each momentum) scores that choice on images no selection used. Curves stored
# before test_accuracy was measured lack it: it is not in MOMENTUM_CURVE_KEYS, the lists every
# stored curve has. Absent for trials without batchnorm or that diverged.
# "train_eval_images": n (from this version on; older curves lack it and measured train-eval on the
# whole training split): train-eval at every point (the own and recalibrated ones included, so the
# curve's points compare on the same images) is measured on a fixed stratified subset of n training
# images, val's size, drawn from the seed (gaplab.momentum.train_eval_subset); PreciseBN recalibrates on
# it too (from this version on; before, on the whole training split). The trial's final
# train_eval_accuracy and mode_gap stay on the whole training split, so they can differ from the
# curve's own point by that subset's sampling error.
MOMENTUM_CURVE_ATTR = "momentum_curve"
MOMENTUM_CURVE_KEYS = curve.LIST_KEYS
MOMENTUM_CURVE_ARTIFACT = "momentum_curve.json"
MOMENTUM_CURVE_FIGURE = "momentum_curve.png"
# The curve as MLflow metrics, one point per momentum m at step gaplab.curve.momentum_step(m)
# = round(1000 · log10(1 / (1 − m))), a thousand per "nine" of m: 0 → 0, 0.9 → 1000, 0.99 → 2000,
# 0.999 → 3000. A curve never holds two momenta with the same step, so the points cannot collide.
# The MLflow UI groups a run's metrics in sections named by the prefix before the last "/", puts those
# sections before the unprefixed metrics, labels every x-axis "Step" and cuts a chart's title to about
# 20 characters: the prefix puts the curve first and its section's header says what the step is
# (MLflow names allow letters, digits, "_-. /" and, except on Windows, ":"). Studies run before this
# version logged these as val_accuracy_at_momentum, train_eval_accuracy_at_momentum, ...
MOMENTUM_CURVE_METRIC_PREFIX = "momentum curve - step 1000 2000 3000 is momentum 0.9 0.99 0.999/"
VAL_ACCURACY_AT_MOMENTUM_METRIC = MOMENTUM_CURVE_METRIC_PREFIX + "val_accuracy"
TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC = MOMENTUM_CURVE_METRIC_PREFIX + "train_eval_accuracy"
# Where the curve has test_accuracy.
TEST_ACCURACY_AT_MOMENTUM_METRIC = MOMENTUM_CURVE_METRIC_PREFIX + "test_accuracy"
# Per-epoch (step = epoch) and final metrics, and trial user attributes like every final metric:
# the val accuracy at the curve's best momentum, and that momentum.
BEST_MOMENTUM_METRIC = "best_momentum"
VAL_ACCURACY_AT_BEST_MOMENTUM_METRIC = "val_accuracy_at_best_momentum"
# What the pruner is fed each epoch (`--prune_on`): the val accuracy at the trial's own momentum,
# or at the best grid momentum. The objective is always the val accuracy at the own momentum.
PRUNE_ON_METRIC = {"best_momentum": VAL_ACCURACY_AT_BEST_MOMENTUM_METRIC, "own_momentum": "val_accuracy"}
DEFAULT_PRUNE_ON = "best_momentum"

# ---------------------------------------------------------------- confirmation (`--confirm K`, study.confirm)
# After the search, each arm is retrained on K fresh seeds in a companion Optuna study on the same storage,
# named confirmation_study_name(study): enqueued fixed trials, no sampler, never counted by `--trials`.
CONFIRMATION_SUFFIX = "/confirmation"
# `--confirm K`'s default: the command's, MLproject's (tests/test_mlproject.py checks they are equal) and the K the
# report's "not confirmed" command asks for where the study never stored one. 3 costs 18 % of the default study's
# wall (docs/costs.md#confirmation).
DEFAULT_CONFIRM_K = 3
# The arms, in the report's order: the best trial's parameters (evaluated with the report's recommended
# batchnorm fix, read off the same training's momentum curve or PreciseBN, and as trained); the best
# trial without batchnorm, where the study has any and the recommended trial has batchnorm (else it is the
# recommended trial itself, and is not trained twice); the seed's own setting (the `seed-bn` preset).
RECOMMENDED_ARM = "recommended"
WITHOUT_BN_ARM = "best_without_bn"
STARTING_POINT_ARM = "starting_point"
ARMS = (RECOMMENDED_ARM, WITHOUT_BN_ARM, STARTING_POINT_ARM)
# Companion study user attributes: the K last asked for, and the recommendation the latest command
# confirmed (a dict: "key", "trial" (the search trial), "option" (a study.report.paired option) and
# "momentum" (the fix's momentum, where the option has one)).
CONFIRM_K_ATTR = "confirm_k"
RECOMMENDATION_ATTR = "recommendation"
# Confirmation trial user attributes (besides every final metric and MOMENTUM_CURVE_ATTR, as a search trial
# has): its arm, its seed, the recommendation key it confirms, and the search trial whose parameters it trains.
ARM_ATTR = "arm"
SEED_ATTR = "seed"
CONFIRMS_ATTR = "confirms"
SOURCE_TRIAL_ATTR = "source_trial"
# MLflow: confirmation runs, named `confirm-<arm>-seed-<seed>`, carry these tags, plus STUDY_TAG with the companion
# study's name and TRIAL_NUMBER_TAG with the companion trial's number (the study's own trial runs carry its name,
# so a dead trial's run is found in its own study); the registered `best` version carries the confirmed held-out
# accuracy (the mean test accuracy, as trained, of the confirmation trainings of its trial) and their count.
ARM_TAG = "confirm_arm"
SEED_TAG = "confirm_seed"
CONFIRMS_TAG = "confirms"
CONFIRMED_TEST_ACCURACY_TAG = "confirmed_test_accuracy"
# Beside it: over how many seeds (the version's trial retrained as its arm, as trained).
CONFIRMED_N_TAG = "confirmed_n"


def confirmation_study_name(study_name: str) -> str:
    """The companion study holding `study_name`'s confirmation trainings."""
    return study_name + CONFIRMATION_SUFFIX
