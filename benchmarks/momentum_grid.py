"""What tracking the momentum grid costs, measured side by side (the machine is shared and noisy).

    PYTHONPATH=src python benchmarks/momentum_grid.py --data_dir ../shared/data/trashnet150 --image_size 64

1. Training: two compiled models of one architecture, the grid off (`momentum_grid=()`) and on
   (the default grid), take train steps on the same batches in alternating blocks; the ratio of
   their median block times (wall and this process's CPU time) is the grid's training overhead.
2. Evaluation: one epoch's train steps vs one val pass at each grid momentum (what evaluating
   the whole grid every epoch costs) and vs the curve after training (train and val at each).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gaplab.compiled import CompiledModels
from gaplab.config import MOMENTUM_GRID, TrainConfig
from gaplab.data import generate_shapes, load_image_folder
from gaplab.momentum import accuracies_by_momentum


def _block_seconds(model, batches) -> tuple[float, float]:
    """Wall and CPU seconds (all threads of this process; less sensitive to other processes)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for x, y in batches:
        model.train_on_batch(x, y)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--steps_per_block", type=int, default=10)
    args = parser.parse_args()
    data = (load_image_folder(args.data_dir, args.image_size) if args.data_dir
            else generate_shapes(args.image_size))
    base = TrainConfig(depth=args.depth, batch_size=args.batch_size, image_size=args.image_size,
                       bn_momentum=0.99, dropout=0.3)
    compiled = CompiledModels()
    models = {"off": compiled.prepared(base.replace(momentum_grid=()), data.num_classes),
              "on": compiled.prepared(base.replace(momentum_grid=MOMENTUM_GRID), data.num_classes)}
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.train))
    batches = [(data.train.x[order[i:i + args.batch_size]], data.train.y[order[i:i + args.batch_size]])
               for i in range(0, args.steps_per_block * args.batch_size, args.batch_size)]
    for model in models.values():  # trace and compile before timing
        _block_seconds(model, batches[:2])
    times = {"off": [], "on": []}
    for block in range(args.blocks):
        for label in (("off", "on") if block % 2 == 0 else ("on", "off")):
            times[label].append(_block_seconds(models[label], batches))
    for index, clock in enumerate(("wall", "CPU")):
        off = statistics.median(t[index] for t in times["off"]) / args.steps_per_block
        on = statistics.median(t[index] for t in times["on"]) / args.steps_per_block
        ratios = [a[index] / b[index] for a, b in zip(times["on"], times["off"])]
        print(f"train step ({clock} time): grid off {off * 1000:.1f} ms, on {on * 1000:.1f} ms; on/off "
              f"{on / off:.3f} (median of paired block ratios {statistics.median(ratios):.3f})")
    step_on = statistics.median(t[0] for t in times["on"]) / args.steps_per_block

    model = models["on"]
    val, train = (data.val.x, data.val.y), (data.train.x, data.train.y)
    accuracies_by_momentum(model, base.bn_momentum, MOMENTUM_GRID, [val])  # compile predict
    epoch_seconds = step_on * (len(data.train) // args.batch_size)  # full batches only, as train() runs
    started = time.perf_counter()
    accuracies_by_momentum(model, base.bn_momentum, MOMENTUM_GRID, [val])
    grid_val = time.perf_counter() - started
    started = time.perf_counter()
    accuracies_by_momentum(model, base.bn_momentum, MOMENTUM_GRID, [train, val])
    curve = time.perf_counter() - started
    print(f"one epoch's train steps ~{epoch_seconds:.2f} s; val at all {len(MOMENTUM_GRID) + 1} momenta "
          f"{grid_val:.2f} s ({grid_val / epoch_seconds:.2f} of an epoch); the curve after training "
          f"(train and val) {curve:.2f} s ({curve / epoch_seconds:.2f} of an epoch)")


if __name__ == "__main__":
    main()
