"""Train the seed's four presets on one dataset and print how each splits its train/val gap.

    python -m gaplab                                  # built-in dataset, its defaults
    python -m gaplab --data_dir ../shared/data/trashnet150 --image_size 64 --epochs 8

This is the reproducible check behind the table in docs/phenomenon.md: on the built-in dataset, seed-bn's
inference-mode accuracy falls far below its fit() accuracy (mode gap), and seed-final's does not.
"""

from __future__ import annotations

import sys

from gaplab.config import PRESETS, ConfigError, TrainConfig
from gaplab.data import DEFAULT_IMAGE_SIZE, DEFAULT_IMAGES, DataError, generate_shapes, load_image_folder
from gaplab.usage import ArgumentParser, fail

COLUMNS = ("train_accuracy", "train_eval_accuracy", "val_accuracy", "val_accuracy_recalibrated", "test_accuracy",
           "gap", "mode_gap", "generalization_gap")


def compare_presets(data, presets, epochs: int, batch_size: int, seed: int) -> list[dict[str, float | str]]:
    """One row per preset: its final metrics and optimizer steps."""
    from gaplab.trainer import train  # imports Keras: after the flags are checked

    rows = []
    for name in presets:
        config = PRESETS[name].replace(image_size=data.image_size, epochs=epochs, batch_size=batch_size, seed=seed)
        result = train(config, data)
        rows.append({"preset": name, **result.final_metrics()})
    return rows


def format_table(rows: list[dict[str, float | str]]) -> str:
    header = "| preset | " + " | ".join(COLUMNS) + " | steps |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for row in rows:
        cells = " | ".join(f"{row[c]:.2f}" for c in COLUMNS)
        lines.append(f"| {row['preset']} | {cells} | {int(row['steps'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m gaplab", description=__doc__.splitlines()[0])
    # Snake case as in the study's commands; the dashed spellings stay as aliases.
    parser.add_argument("--data_dir", "--data-dir", default="", help="image folder (default: the built-in dataset)")
    parser.add_argument("--image_size", "--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="built-in dataset size")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--batch_size", "--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    args = parser.parse_args(argv)
    try:
        # Every value before any image is read or drawn, named by its flag.
        TrainConfig(image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
                    seed=args.seed).validate()
    except ConfigError as error:
        return fail(f"--{error}")
    try:
        if args.data_dir:
            data = load_image_folder(args.data_dir, args.image_size, seed=args.seed)
        else:
            data = generate_shapes(args.image_size, args.images, args.seed)
        rows = compare_presets(data, args.presets, args.epochs, args.batch_size, args.seed)
    except (DataError, ConfigError) as error:
        return fail(str(error))
    print(f"dataset {data.name}: {len(data.train)}/{len(data.val)}/{len(data.test)} images at {data.image_size} px")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
