"""What a result's own copy of its model costs, against the train() call it comes from, in one run.

    PYTHONPATH=src python benchmarks/result_model.py --image_size 32 --rounds 8

`train()` reuses one compiled model per architecture, so a result must copy the trained model or
hand out a view that a later training overwrites. Per train() call (momentum alternating, as in a
study) it times:

1. stored values: copying every variable to NumPy at the end of train() (`timings["copy_seconds"]`);
   this is what every call pays;
2. a fresh model holding them: building the model and assigning the values (what reading
   `result.model` costs once, or what every call would pay with an eagerly built copy);
3. the fresh model's first prediction on val (its predict program is traced anew).

Each is printed as a median and as a share of the train() call's median, side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time

from gaplab.config import TrainConfig
from gaplab.data import generate_shapes
from gaplab.metrics import predict_classes
from gaplab.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--n_images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    data = generate_shapes(args.image_size, n_images=args.n_images)
    base = TrainConfig(depth=args.depth, image_size=args.image_size, epochs=args.epochs, dropout=0.3)
    train(base, data)  # compile before timing
    seconds: dict[str, list[float]] = {"train() call": [], "1. stored values": [], "2. fresh model": [],
                                       "3. its first prediction": []}
    for index in range(args.rounds):
        started = time.perf_counter()
        result = train(base.replace(bn_momentum=0.9 if index % 2 else 0.99), data)
        seconds["train() call"].append(time.perf_counter() - started)
        seconds["1. stored values"].append(result.timings["copy_seconds"])
        started = time.perf_counter()
        model = result.model
        seconds["2. fresh model"].append(time.perf_counter() - started)
        started = time.perf_counter()
        predict_classes(model, data.val.x)
        seconds["3. its first prediction"].append(time.perf_counter() - started)
    megabytes = sum(value.nbytes for value in result.trained_values) / 2**20
    call = statistics.median(seconds["train() call"])
    print(f"{args.image_size} px, {len(data.train)} training images, depth {args.depth}, {args.epochs} epochs, "
          f"{args.rounds} calls; stored values {megabytes:.2f} MiB per result")
    for name, values in seconds.items():
        middle = statistics.median(values)
        print(f"{name:<24} median {middle * 1000:9.2f} ms  ({middle / call:.4f} of a train() call; "
              f"range {min(values) * 1000:.2f}-{max(values) * 1000:.2f} ms)")


if __name__ == "__main__":
    main()
