"""What a reader can do next, as things to copy: the best setting retrained on its own, and, while the study
has too few trials for a paired answer, how many more it needs and the command that adds them."""

from __future__ import annotations

import json
import shlex

from optuna.trial import TrialState

from gaplab.config import PRESETS, TrainConfig
from study import contract, space
from study.commands import command
from study.report import stats
from study.report.views import TrialView, fmt_param, points

# The study's first trials are the seed's four presets, two of them without batchnorm (no momentum curve).
PRESETS_WITHOUT_BATCHNORM = 2


def _number(name: str, value: float) -> str:
    return fmt_param(name, value) if name in space.names() and space.param(name).whole else f"{value:g}"


def retrain(best: TrialView | None, settings: dict) -> list[tuple[str, str]]:
    """The best trial's training as one command: its config (the searched values, the study's image size, epochs
    and seed) trained with the gaplab library on the study's data. No flag of `python -m study.run` trains one
    given setting, so the command is the library call."""
    if best is None:
        return []
    base = PRESETS.get(best.preset or "", TrainConfig())
    values = {"batchnorm": best.batchnorm, **{p.name: best.params.get(p.name, getattr(base, p.name))
                                              for p in space.PARAMS if p.exists(best.batchnorm)}}
    missing = [name for name in ("image_size", "epochs", "seed") if name not in settings]
    for name in ("image_size", "epochs", "seed"):
        values[name] = settings.get(name, getattr(TrainConfig(), name))
    config = ", ".join(f"{name}={value}" if isinstance(value, bool) else f"{name}={_number(name, value)}"
                       for name, value in values.items())
    size, seed = values["image_size"], values["seed"]
    data_dir = settings.get("data_dir") or ""
    data = (f"load_image_folder({json.dumps(data_dir)}, {size}, seed={seed})" if data_dir
            else f"generate_shapes({size}, seed={seed})")
    loader = "load_image_folder" if data_dir else "generate_shapes"
    program = (f"from gaplab import TrainConfig, {loader}, train; data = {data}; "
               f"result = train(TrainConfig({config}), data); print(result.final_metrics())")
    what = (f"Retrain the best setting (trial {best.number}) on its own, with the gaplab library (the study's "
            "commands search; none trains one given setting). It prints the metrics the trial logged, measured "
            "again: seeded, but another machine or backend can differ slightly.")
    if missing:
        what += f" The study did not store its {', '.join(missing)}: the command uses gaplab's defaults."
    return [(what, shlex.join(["python", "-c", program]))]


def trials_needed(views: list[TrialView], with_curves: list[TrialView], study_name: str,
                  settings: dict) -> list[str]:
    """Below the headline, while fewer than stats.MIN_PAIRED_N batchnorm trials with momentum curves trained to the
    end (the trials the headline effect is over): what the trials with curves show so far, how many more a paired
    answer needs, and the command that adds them."""
    have, need = sum(v.state == TrialState.COMPLETE for v in with_curves), stats.MIN_PAIRED_N
    if have >= need:
        return []
    finished = sum(v.state in contract.FINISHED_STATES for v in views)
    so_far = []
    for view in sorted(with_curves, key=lambda v: v.number):
        curve, held = view.curve, view.curve.test_accuracy
        if held:
            chosen = stats.chosen_index(curve.val_accuracy, curve.momentum)
            so_far.append(f"trial {view.number} {points(held[chosen] - held[curve.own])}")
    shown = (f" So far, held-out accuracy at the val-chosen momentum minus at the trial's own: "
             f"{', '.join(so_far)} points (no interval below {need} trials)." if so_far else "")
    return [f"Trials needed: a paired answer needs {need} trials with batchnorm and a momentum curve that trained to "
            f"the end (not pruned); this study has {have}, of {finished} finished (the first 4 trials are the seed's "
            f"presets, "
            f"{PRESETS_WITHOUT_BATCHNORM} of them without batchnorm, so at least {need + PRESETS_WITHOUT_BATCHNORM} "
            f"trials in all).{shown} Add {need - have} with: "
            f"{study_command(finished + need - have, study_name, settings)} {STORAGE_NOTE}."]


# What the commands below leave out: the storage is not among the stored settings.
STORAGE_NOTE = "(and the --storage it used, if not the default)"


def study_command(trials: int, study_name: str, settings: dict, *extra: str) -> str:
    """The `study.run` command that takes the study, with the settings it stored, to `trials` trials in all;
    `extra`: more flags (e.g. `--confirm K`)."""
    flags = ["--trials", str(trials), "--study_name", study_name]
    if settings.get("data_dir"):
        flags += ["--data_dir", str(settings["data_dir"])]
    for name in ("image_size", "epochs", "seed"):
        if name in settings:
            flags += [f"--{name}", str(settings[name])]
    if settings.get("pruner") not in (None, "median"):
        flags += ["--pruner", str(settings["pruner"])]
    if settings.get("prune_on") not in (None, contract.DEFAULT_PRUNE_ON):
        flags += ["--prune_on", str(settings["prune_on"])]
    return shlex.join([*command("study.run").split(), *flags, *extra])
