"""One frozen config for a training run, and the seed's four presets.

Every field name is used unchanged as Optuna parameter, CLI flag, MLproject parameter and MLflow
param, so a config can be logged whole with `as_params()` and rebuilt with `from_params()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Smaller images leave no room for a single conv block (3x3 conv, then 2x2 pool).
MIN_IMAGE_SIZE = 8
# Decoded images are held in memory as uint8, image_size**2 * 3 bytes each: 3 MiB at 1024 px, so a
# thousand images already take 3 GiB. Larger sizes are refused rather than met with a MemoryError.
MAX_IMAGE_SIZE = 1024
# NumPy's legacy seeding, which Keras's set_random_seed uses, takes 0 .. 2**32 - 1 and nothing else.
MAX_SEED = 2**32 - 1


def _in_binary_units(count: float) -> str:
    unit = "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if count < 1024:
            break
        count, unit = count / 1024, larger
    return f"{count:.1f} {unit}"


def image_size_problem(image_size: int) -> str | None:
    """Why `image_size` cannot be used, as `image_size=<value> is invalid; <remedy>.`, or None."""
    if image_size < MIN_IMAGE_SIZE:
        return f"image_size={image_size} is invalid; use at least {MIN_IMAGE_SIZE} pixels."
    if image_size > MAX_IMAGE_SIZE:
        one = image_size * image_size * 3
        return (f"image_size={image_size} is invalid; use at most {MAX_IMAGE_SIZE} pixels: one decoded image at "
                f"{image_size} px takes {_in_binary_units(one)} as uint8, 1000 images {_in_binary_units(one * 1000)}.")
    return None


def seed_problem(seed: int) -> str | None:
    """Why `seed` cannot be used, as `seed=<value> is invalid; <remedy>.`, or None."""
    if not 0 <= seed <= MAX_SEED:
        return f"seed={seed} is invalid; use an integer from 0 to {MAX_SEED} (2**32 - 1)."
    return None


class ConfigError(ValueError):
    """Raised for a config value that cannot train; the message names the value."""


# Besides its own momentum, every BatchNormalization layer keeps moving statistics for these
# momenta, so one training measures the model at each of them (see gaplab.momentum). An empty
# grid switches that off.
MOMENTUM_GRID: tuple[float, ...] = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class TrainConfig:
    """What one training run needs besides the data."""

    depth: int = 3
    batchnorm: bool = True
    bn_momentum: float = 0.99
    dropout: float = 0.5
    batch_size: int = 32
    epochs: int = 6
    learning_rate: float = 1e-3
    image_size: int = 32
    seed: int = 0
    momentum_grid: tuple[float, ...] = MOMENTUM_GRID

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first value out of range; the config itself otherwise.

        Whether `depth` fits `image_size` is the model's to say (`gaplab.model.allowed_depths`).
        """
        for problem in (image_size_problem(self.image_size), seed_problem(self.seed)):
            if problem:
                raise ConfigError(problem)
        checks = (
            (self.depth >= 1, "depth", "use at least 1 conv block"),
            (0.0 <= self.dropout < 1.0, "dropout", "use 0 <= dropout < 1"),
            (0.0 <= self.bn_momentum < 1.0, "bn_momentum", "use 0 <= bn_momentum < 1"),
            (self.batch_size >= 1, "batch_size", "use at least 1"),
            (self.epochs >= 1, "epochs", "use at least 1"),
            (self.learning_rate > 0, "learning_rate", "use a positive value"),
        )
        for valid, name, remedy in checks:
            if not valid:
                raise ConfigError(f"{name}={getattr(self, name)} is invalid; {remedy}.")
        grid = self.momentum_grid
        if any(not 0.0 <= m < 1.0 for m in grid) or len(set(grid)) != len(grid):
            raise ConfigError(f"momentum_grid={grid} is invalid; use distinct momenta with 0 <= m < 1, or () for none.")
        return self

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def as_params(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, object]) -> TrainConfig:
        """Rebuild from string or typed values (e.g. MLflow params); unknown keys are ignored."""
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in params:
                continue
            raw = params[field.name]
            kind = type(field.default)
            if kind is bool and isinstance(raw, str):
                values[field.name] = raw.strip().lower() in ("1", "true", "yes")
            elif kind is tuple:
                # A logged tuple reads back as its repr, e.g. "(0.0, 0.5)"; "()" is the empty grid.
                items = raw.strip("()[] ").split(",") if isinstance(raw, str) else raw
                values[field.name] = tuple(float(item) for item in items if str(item).strip())
            else:
                values[field.name] = kind(raw)
        return cls(**values)


# The seed's models. Dropout rate 0.5 is assumed where the seed used Dropout; seed-final has none.
PRESETS: dict[str, TrainConfig] = {
    "seed-initial": TrainConfig(depth=2, batchnorm=False, dropout=0.5),
    "seed-deeper": TrainConfig(depth=3, batchnorm=False, dropout=0.5),
    "seed-bn": TrainConfig(depth=3, batchnorm=True, bn_momentum=0.99, dropout=0.5),
    "seed-final": TrainConfig(depth=3, batchnorm=True, bn_momentum=0.8, dropout=0.0),
}

# What the seed reported for each preset (train, val, test accuracy), for the report's table.
SEED_RESULTS: dict[str, tuple[float, float, float]] = {
    "seed-initial": (0.83, 0.88, 0.83),
    "seed-deeper": (0.97, 0.97, 0.98),
    "seed-bn": (0.99, 0.44, 0.46),
    "seed-final": (1.00, 0.99, 0.99),
}
