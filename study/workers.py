"""Several worker processes on one study: their environment, GPU placement, sampler seeds, and their lives.

Workers coordinate only through the study's Optuna storage: each starts a trial while the finished
and running trials are fewer than the target, counted under the study's lock
(`study.session.run_worker`). This module only spawns the processes, forwards Ctrl-C/SIGTERM to
them, waits, and says which one died of what, during which trial. A worker that dies is not
replaced: the others go on, and its trial is failed once its heartbeat is older than the grace
period, after which another worker runs a trial in its place.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence

import numpy as np

from study import stopping
from study.commands import UsageError
from study.contract import worker_name

# Set in a worker's environment: its index. Its presence makes `python -m study.run` a worker
# (no stores to create, no summary), so the CLI and MLproject stay free of internal flags.
WORKER_INDEX_ENV = "GAPLAB_WORKER_INDEX"
# Set in a worker's environment: its TPE sampler's seed, chosen by the command (`sampler_seed`).
SAMPLER_SEED_ENV = "GAPLAB_SAMPLER_SEED"
# Set by `mlflow run`: the id of the run it created for the command.
LAUNCHER_RUN_ENV = "MLFLOW_RUN_ID"
# Workers a GPU holds at once: each trains a small CNN and leaves the GPU idle while it logs and measures.
WORKERS_PER_GPU = 4


def take_launcher_run(environ: MutableMapping[str, str]) -> str | None:
    """The run `mlflow run` created (None without one), removed from `environ`.

    Left there, MLflow would resume that run at a trial's `start_run`, and a worker inheriting it
    would do the same; the command attaches it as the study's parent run instead.
    """
    return environ.pop(LAUNCHER_RUN_ENV, None) or None


def list_gpus() -> list[str]:
    """'index name' of each NVIDIA GPU nvidia-smi lists; empty without a driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [" ".join(part.strip() for part in line.split(",", 1)) for line in listing.splitlines() if line.strip()]


def parse_gpus(value: str, available: Sequence[str]) -> tuple[str, ...]:
    """The GPU indices `--gpus` names (default: every GPU there is); UsageError for an empty entry or a GPU
    that does not exist."""
    indices = [entry.split(" ", 1)[0] for entry in available]
    if not value:
        return tuple(indices)
    there = "; ".join(available) if available else "none (nvidia-smi lists no GPU)"
    wanted = [part.strip() for part in value.split(",")]
    if not all(wanted):
        raise UsageError(f"--gpus={value!r} has an empty entry; give GPU indices separated by commas, e.g. "
                         f"--gpus 0,1. The GPUs here are: {there}.")
    missing = [part for part in wanted if part not in indices]
    if missing:
        raise UsageError(f"--gpus={value!r} names GPU {', '.join(missing)} that does not exist; the GPUs here "
                         f"are: {there}.")
    return tuple(dict.fromkeys(wanted))


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_worker_count(workers: int, device: str, gpus: Sequence[str]) -> None:
    """UsageError unless `--workers` fits the machine: one worker per CPU core when training on CPUs
    (`--device cpu`, or no GPU listed), else WORKERS_PER_GPU per GPU used."""
    if device != "cpu" and gpus:
        limit, why = WORKERS_PER_GPU * len(gpus), f"{WORKERS_PER_GPU} per GPU, {len(gpus)} GPU(s) used"
    else:
        limit, why = cpu_cores(), f"one per CPU core when training on CPUs, {cpu_cores()} core(s) here"
    if workers > limit:
        raise UsageError(f"--workers={workers} is too many; use at most {limit} ({why}).")


def gpu_environment(index: int, gpus: Sequence[str]) -> dict[str, str]:
    """What worker `index` needs to train on GPU `index` mod G alone; nothing without GPUs."""
    if not gpus:
        return {}
    # Several workers may share a GPU: none may take all its memory up front.
    return {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)], "TF_FORCE_GPU_ALLOW_GROWTH": "true",
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def worker_environment(base: dict[str, str], index: int, gpus: Sequence[str], seed: int) -> dict[str, str]:
    """The environment of worker `index`: its GPU, its sampler seed, and no launcher run id."""
    env = dict(base)
    take_launcher_run(env)
    env[WORKER_INDEX_ENV] = str(index)
    env[SAMPLER_SEED_ENV] = str(seed)
    env.update(gpu_environment(index, gpus))
    return env


def sampler_seed(seed: int, trials_at_start: int, worker_index: int, joining_live_study: bool,
                 start_number: int = 0) -> int:
    """The TPE sampler's seed for one process: the same inputs give the same seed, others another.

    A resume starts at another trial count, each command that begins the study has its own number
    (`start_number`, counted under the study's lock, so also commands started at the same moment),
    and a worker has its own index, so no two processes of one command or of several commands draw
    the same "random" points. A process that joins a
    study other processes are running is not reproducible anyway (which trials it sees depends on
    timing), so it adds fresh entropy: two joiners at the same count must not draw alike either.
    """
    entropy = [seed, trials_at_start, worker_index, start_number]
    if joining_live_study:
        entropy.append(int.from_bytes(os.urandom(8), "little"))
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def run_workers(argv: Sequence[str], seeds: Sequence[int], gpus: Sequence[str],
                trial_of: Callable[[str], str], poll_s: float = 0.5,
                program: str = "study.run") -> tuple[bool, list[str]]:
    """Run one worker (`python -m <program> *argv`, the command's own program: study.objective.Trainer) per
    sampler seed to their end.

    Returns (interrupted, one report per worker that died).

    `trial_of(host_pid)` names the trial a dead worker was running.
    """
    processes = [
        # Own process group: a terminal's Ctrl-C reaches the workers once, forwarded from here.
        subprocess.Popen([sys.executable, "-m", program, *argv], start_new_session=True,
                         env=worker_environment(dict(os.environ), index, gpus, seed))
        for index, seed in enumerate(seeds)
    ]
    deaths: list[str] = []
    interrupted = forwarded_repeat = False
    running = dict(enumerate(processes))
    while running:
        try:
            time.sleep(poll_s)
            if stopping.repeated.is_set() and not forwarded_repeat:
                # A second Ctrl-C raises nothing here (study.stopping); the workers get it: their trials stop at once.
                forwarded_repeat = True
                for process in running.values():
                    if process.poll() is None:
                        process.send_signal(signal.SIGINT)
            for index, process in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[index]
                if code < 0 or (code not in (0, stopping.EXIT_CODE) and not interrupted):
                    cause = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    report = (f"worker {index} (pid {process.pid}) died from {cause} during "
                              f"{trial_of(worker_name(pid=process.pid))}")
                    deaths.append(report)
                    print(f"{report}; the other {len(running)} worker(s) go on.", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            interrupted = True
            for process in running.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
    return interrupted, deaths
