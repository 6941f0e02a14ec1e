"""The confirmation (`--confirm K`): after the search, each arm retrained on K fresh seeds.

The search's best trial is the largest of many noisy val accuracies, measured on one seed (one weight
initialisation, one data order). The confirmation retrains, once the study has its `--trials`:

* `recommended`: the best trial's parameters, chosen on val with the report's recommended batchnorm fix
  applied (study.report.confirmation.current_recommendation: the same trial and option the report names);
* `best_without_bn`: the best trial without batchnorm, chosen on val, where the study has one and the
  recommended trial has batchnorm (otherwise it would train the recommended setting again);
* `starting_point`: the seed's own setting, the `seed-bn` preset (batchnorm at momentum 0.99).

Each arm trains with the same K seeds, `confirmation_seeds(study seed, K)`: seed i is the same on every
rerun, so a larger K tops up, and the arms pair on seed. A seed changes the weight initialisation and
the data order (gaplab.trainer); the split, and so the test images, is drawn from the study's seed when
the data loads, and stays. Each training measures its momentum curve and PreciseBN as a trial does, so
the report reads "with the fix" and "as trained" off one training.

The trainings are trials of a companion Optuna study on the same storage
(contract.confirmation_study_name), queued one at a time with every parameter fixed (no sampler draws),
so they never count towards `--trials`. They start under the study's own lock and heartbeat like the
search's trials (study.session), so `--workers N` share them, and a process killed at any moment leaves
a trial that the next start fails and queues again: a rerun ends with exactly K per arm. A confirmation
belongs to the recommendation it confirms (contract.CONFIRMS_ATTR, its key): when more trials change
the recommendation, the old runs stay, labelled with the old key, and the new one gets its own K.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from gaplab.config import MAX_SEED, TrainConfig
from study import contract, space, stopping
from study.commands import fail
from study.optuna_study import OpenStudy, train_one_trial, trial_start
from study.progress import format_seconds
from study.report.confirmation import Recommendation, best_without_batchnorm, recommendation_of
from study.report.views import trial_views
from study.tracking import Tracker

# Confirmation seed i (from 1) is the study's seed + SEED_OFFSET + i: never the study's own seed, and read at
# a glance in a run's name (seed 0's confirmation seeds are 1001, 1002, ...).
SEED_OFFSET = 1000
STARTING_PRESET = "seed-bn"


def confirmation_seeds(study_seed: int, k: int) -> list[int]:
    """The K seeds each arm trains with: the same first seeds for every K, so a larger K tops up."""
    return [(study_seed + SEED_OFFSET + i) % (MAX_SEED + 1) for i in range(1, k + 1)]


@dataclass(frozen=True)
class Arm:
    """One arm: its name, the search trial it retrains (None: a preset the study never finished) and its config."""

    name: str
    source_trial: int | None
    config: TrainConfig


def trial_config(trial: FrozenTrial, base: TrainConfig) -> TrainConfig:
    """The config a search trial trained with: `base` with its searched values and batchnorm."""
    values = space.public_params(trial.params)
    batchnorm = bool(trial.user_attrs.get(contract.BATCHNORM_ATTR, True))
    return base.replace(batchnorm=batchnorm, **{name: values[name] for name in space.names() if name in values})


def arms(study: optuna.Study, base: TrainConfig, recommendation: Recommendation,
         without_bn: int | None) -> list[Arm]:
    """The arms to confirm, in contract.ARMS order."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = [Arm(contract.RECOMMENDED_ARM, recommendation.trial, trial_config(trials[recommendation.trial], base))]
    if without_bn is not None:
        out.append(Arm(contract.WITHOUT_BN_ARM, without_bn, trial_config(trials[without_bn], base)))
    preset = next((t.number for t in trials.values() if t.user_attrs.get(contract.PRESET_ATTR) == STARTING_PRESET
                   and t.state in contract.FINISHED_STATES), None)
    out.append(Arm(contract.STARTING_POINT_ARM, preset, space.preset_config(base, STARTING_PRESET)))
    return out


@dataclass(frozen=True)
class Plan:
    """What this command confirms: the recommendation, its arms and the K seeds."""

    recommendation: Recommendation
    arms: list[Arm]
    seeds: list[int]

    def wanted(self) -> list[tuple[Arm, int]]:
        """Every (arm, seed), seed-major, so that an interrupted confirmation has whole pairs across arms."""
        return [(arm, seed) for seed in self.seeds for arm in self.arms]

    def missing(self, companion: optuna.Study) -> list[tuple[Arm, int]]:
        """The (arm, seed) pairs of this recommendation that no trial holds: none finished, queued or running,
        none failed by its own error (trained again, it would fail again)."""
        held = {(t.user_attrs.get(contract.ARM_ATTR), t.user_attrs.get(contract.SEED_ATTR))
                for t in companion.get_trials(deepcopy=False)
                if t.user_attrs.get(contract.CONFIRMS_ATTR) == self.recommendation.key
                and (t.state != TrialState.FAIL or contract.FAILED_BY_ERROR_ATTR in t.user_attrs)}
        return [(arm, seed) for arm, seed in self.wanted() if (arm.name, seed) not in held]


def open_companion(opened: OpenStudy) -> optuna.Study:
    """The confirmation's companion study on the study's storage (created where new); the caller holds the lock."""
    companion = optuna.create_study(study_name=contract.confirmation_study_name(opened.name),
                                    storage=opened.storage, load_if_exists=True, direction="maximize",
                                    pruner=optuna.pruners.NopPruner())
    for name in (contract.PARENT_RUN_ID_ATTR, contract.TRACKING_URI_ATTR):
        # The heartbeat's callback (study.tracking.recovery.end_stale_trial_run) finds a dead trial's run by these.
        if name in opened.study.user_attrs and companion.user_attrs.get(name) != opened.study.user_attrs[name]:
            companion.set_user_attr(name, opened.study.user_attrs[name])
    return companion


def plan(opened: OpenStudy, companion: optuna.Study, k: int) -> Plan | None:
    """The confirmation of the study's current recommendation (the report's own,
    study.report.confirmation.recommendation_of) with K seeds, recorded on the companion study; None where no
    trial is complete. The caller holds the lock."""
    views = trial_views(opened.study)
    recommendation = recommendation_of(views)
    if recommendation is None:
        return None
    base = opened.settings.base
    companion.set_user_attr(contract.CONFIRM_K_ATTR, k)
    companion.set_user_attr(contract.RECOMMENDATION_ATTR, recommendation.as_attr())
    return Plan(recommendation, arms(opened.study, base, recommendation, best_without_batchnorm(views, recommendation)),
                confirmation_seeds(base.seed, k))


def enqueue(companion: optuna.Study, recommendation: Recommendation, arm: Arm, seed: int) -> None:
    """Queue one confirmation training: the arm's values as fixed parameters, its identity as user attributes."""
    attrs = {contract.ARM_ATTR: arm.name, contract.SEED_ATTR: seed, contract.CONFIRMS_ATTR: recommendation.key,
             contract.BATCHNORM_ATTR: arm.config.batchnorm}
    if arm.source_trial is not None:
        attrs[contract.SOURCE_TRIAL_ATTR] = arm.source_trial
    companion.enqueue_trial(space.optuna_params(arm.config), user_attrs=attrs)


def confirmation_config(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """A queued confirmation trial's config (study.objective's `suggest_fn`): its fixed values, its seed."""
    attrs = trial.user_attrs
    return space.suggest(trial, base.replace(batchnorm=attrs[contract.BATCHNORM_ATTR], seed=attrs[contract.SEED_ATTR]))


def run_identity(trial: optuna.Trial) -> tuple[str, dict[str, str]]:
    """A confirmation run's name (`confirm-<arm>-seed-<seed>`) and tags: arm, seed, the recommendation it confirms."""
    arm, seed = trial.user_attrs[contract.ARM_ATTR], trial.user_attrs[contract.SEED_ATTR]
    return f"confirm-{arm}-seed-{seed}", {contract.ARM_TAG: arm, contract.SEED_TAG: str(seed),
                                          contract.CONFIRMS_TAG: trial.user_attrs[contract.CONFIRMS_ATTR]}


def estimated_seconds(study: optuna.Study, missing: list[tuple[Arm, int]]) -> float:
    """What training `missing` takes, from the search's measured durations: each arm's source trial's (a
    confirmation trains the same config, to the end), else the median complete trial's; NaN without either."""
    complete = {t.number: t.duration.total_seconds()
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.duration is not None}
    median = statistics.median(complete.values()) if complete else math.nan
    return sum(complete.get(arm.source_trial, median) for arm, _ in missing)


def cost_line(opened: OpenStudy, confirmation: Plan, missing: list[tuple[Arm, int]]) -> str:
    """What the confirmation will cost: trainings in all and still to train, and the time the search's trials
    took for the same configs (divided among `--workers`)."""
    seconds = estimated_seconds(opened.study, missing) / opened.settings.workers
    estimate = (f"; about {format_seconds(seconds)}, as long as the search took for the same settings"
                if math.isfinite(seconds) else "")
    names = ", ".join(arm.name for arm in confirmation.arms)
    return (f"confirmation of {confirmation.recommendation.key}: {len(confirmation.arms)} arm(s) ({names}) x "
            f"{len(confirmation.seeds)} seed(s) = {len(confirmation.wanted())} training(s), "
            + (f"{len(missing)} to train{estimate}" if missing else "all trained"))


def run_confirmation(opened: OpenStudy, parent_run_id: str, k: int, label: str = "", poll_s: float = 1.0) -> int:
    """Confirm the study's recommendation with `k` seeds per arm (nothing for k 0); 0 when every (arm, seed)
    pair has a trial that ended, stopping.EXIT_CODE if stopped. Runs in every worker after the search, training
    with the study's trainer (`opened.trainer`)."""
    if k == 0:
        return 0
    # The companion's runs nest in the study's parent run and carry the companion's name (contract.STUDY_TAG), so
    # that study.tracking.recovery finds a dead confirmation training's run in the companion study.
    with Tracker(contract.confirmation_study_name(opened.name), parent_run_id=parent_run_id) as tracker:
        with opened.lock(), stopping.interrupts_deferred():
            companion = open_companion(opened)
            tracker.recover(companion)  # runs a killed process's writer held
            confirmation = plan(opened, companion, k)
            missing = confirmation.missing(companion) if confirmation else []
        if confirmation is None:
            print(f"{label}no confirmation: the study has no complete trial to confirm.", file=sys.stderr, flush=True)
            return 0
        print(label + cost_line(opened, confirmation, missing), flush=True)
        # The companion's handle: its dead trials failed, its trials the fixed ones queued here, named by arm and seed.
        on_companion = dataclasses.replace(opened, study=companion, name=companion.study_name)
        objective = on_companion.objective(tracker, suggest_fn=confirmation_config, run_identity=run_identity)
        try:
            return _train_missing(opened, on_companion, confirmation, objective, label, poll_s)
        except KeyboardInterrupt:
            return stopping.EXIT_CODE  # the Tracker ends its runs KILLED on leaving


def _train_missing(opened: OpenStudy, on_companion: OpenStudy, confirmation: Plan,
                   objective: Callable[[optuna.Trial], float], label: str, poll_s: float) -> int:
    """study.session.run_worker's loop, for the companion: each start, under the study's lock, fails dead trials,
    queues the next missing pair and trains it; waits while others train the last ones. 1 once as many trainings
    in a row failed without their own error (a store that refuses every run) as there are pairs.

    Not run_worker itself: it ends at a count of finished trials, and the confirmation ends when every pair is
    held (`Plan.missing`), which no count says: a pair whose training failed by its own error is done, and an
    earlier recommendation's trainings in the companion count for nothing."""
    companion = on_companion.study
    total = len(confirmation.wanted())
    failures = 0
    while True:
        stopping.raise_if_requested()
        with trial_start(opened.lock()) as start:
            on_companion.fail_dead_trials()
            missing = confirmation.missing(companion)
            waiting = companion.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            running = companion.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if missing or waiting:
                if not waiting:
                    enqueue(companion, confirmation.recommendation, *missing[0])
                progress = _Progress(total - len(missing) + 1, total, label)
                train_one_trial(start, companion, opened.storage, objective, [progress])
        if not (missing or waiting):
            if not running:
                return 0
            time.sleep(poll_s)
            continue
        failures = failures + 1 if progress.failed_without_error else 0
        if failures >= total:
            return fail(f"{label}the last {failures} confirmation training(s) all failed; see the FAILED runs' "
                        "'error' tag in MLflow. Stopping.", exit_code=1)


class _Progress:
    """Optuna callback: one line per confirmation training, and whether it failed other than by its own error."""

    def __init__(self, done: int, total: int, label: str):
        self.done, self.total, self.label = done, total, label
        self.failed_without_error = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        attrs = trial.user_attrs
        self.failed_without_error = (trial.state == TrialState.FAIL
                                     and contract.FAILED_BY_ERROR_ATTR not in attrs)
        print(f"{self.label}[confirm {self.done}/{self.total}] {attrs.get(contract.ARM_ATTR)} seed "
              f"{attrs.get(contract.SEED_ATTR)} {trial.state.name:<8} val={attrs.get('val_accuracy', math.nan):.3f} "
              f"test={attrs.get('test_accuracy', math.nan):.3f}", flush=True)
