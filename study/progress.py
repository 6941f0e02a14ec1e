"""The command's progress: one line per finished trial, with n/N, state, val, gap, best and ETA."""

from __future__ import annotations

import math
import time

import optuna

from study import contract


class ProgressPrinter:
    """Optuna callback: one line per finished trial with n/N, state, val, gap, best and ETA."""

    def __init__(self, target: int, label: str = ""):
        self.target, self.label = target, label
        self.started = time.perf_counter()
        self.finished_here = 0
        self.last_state = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = contract.TrialCounts.of(study).finished
        self.last_state = trial.state
        if trial.state != optuna.trial.TrialState.FAIL:
            self.finished_here += 1
        per_trial = (time.perf_counter() - self.started) / max(self.finished_here, 1)
        eta = per_trial * max(self.target - done, 0)
        val = trial.user_attrs.get("val_accuracy", float("nan"))
        gap = trial.user_attrs.get("gap", float("nan"))
        try:
            best = f"{study.best_value:.3f} (#{study.best_trial.number})"
        except ValueError:
            best = "-"
        preset = trial.user_attrs.get(contract.PRESET_ATTR)
        label = f" [{preset}]" if preset else ""
        print(f"{self.label}[{done}/{self.target}] trial {trial.number}{label} {trial.state.name:<8} val={val:.3f} "
              f"gap={gap:+.3f} best={best} ETA {format_seconds(eta)}", flush=True)


def format_seconds(seconds: float) -> str:
    """`7s`, `5m03s`, `2h05m`, `3d04h`; `over a year` beyond 365 days (a huge --trials), `?` if unknown."""
    if not math.isfinite(seconds):
        return "?"
    if seconds > 365 * 86400:
        return "over a year"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d{hours:02d}h" if days else f"{hours}h{minutes:02d}m" if hours
            else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")
