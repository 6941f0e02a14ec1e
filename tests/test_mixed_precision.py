"""Mixed precision: the momentum grid and the runtime hyperparameters stay float32 under a float16 policy.

Each case runs in a subprocess because the backend is fixed per process, and so that the policy
and the trainer's compiled-model cache of one case never reach another test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Trains a 16 px model for one epoch under the policy, directly (model.fit, to compare the grid
# with Keras's own statistics) and through gaplab.trainer.train; prints what the test checks.
SCRIPT = r"""
import json, sys
import keras, numpy as np
policy = sys.argv[1]
keras.mixed_precision.set_global_policy(policy)
try:
    from gaplab.config import TrainConfig
    from gaplab.data import generate_shapes
    from gaplab.model import batchnorm_layers, build_model
    from gaplab.trainer import train

    own = 0.999
    config = TrainConfig(image_size=16, depth=2, bn_momentum=own, dropout=0.2, batch_size=8, epochs=1,
                         momentum_grid=(0.0, 0.9, own))
    model = build_model(config, 3, runtime_hyperparameters=True)
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 16, 16, 3)).astype("float32")
    model.fit(x, rng.integers(0, 3, 32), epochs=1, batch_size=8, verbose=0)
    layers = []
    for layer in batchnorm_layers(model):
        means, variances = layer.grid_statistics()
        index = int(np.argmin(np.abs(np.asarray(layer.momentum_grid) - own)))
        layers.append({
            "grid_mean_error": float(np.abs(means[index] - layer.moving_mean.numpy()).max()),
            "grid_variance_error": float(np.abs(variances[index] - layer.moving_variance.numpy()).max()),
            "moving_mean_moved": float(np.abs(layer.moving_mean.numpy()).max()),
            "momentum": float(keras.ops.convert_to_numpy(layer.momentum)),
        })
    result = train(config, generate_shapes(image_size=16, n_images=60))
    print(json.dumps({"backend": keras.backend.backend(), "compute_dtype": model.get_layer("conv1").compute_dtype,
                      "layers": layers, "val_accuracy": result.val_accuracy, "epochs": result.epochs}))
finally:
    keras.mixed_precision.set_global_policy("float32")
"""


def _run(backend: str, policy: str, tmp_path) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT),
           "GAPLAB_COMPILE_CACHE_DIR": str(tmp_path / "xla"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, policy],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("backend, policy, compute_dtype",
                         [("jax", "mixed_bfloat16", "bfloat16"), ("tensorflow", "mixed_float16", "float16")])
def test_the_grid_matches_keras_statistics_and_training_runs_under_mixed_precision(tmp_path, backend, policy,
                                                                                    compute_dtype):
    measured = _run(backend, policy, tmp_path)
    assert measured["backend"] == backend and measured["compute_dtype"] == compute_dtype
    assert len(measured["layers"]) == 2
    for layer in measured["layers"]:
        # In bfloat16, 0.999 would read as 1.0 and the statistics would never leave their initial zeros.
        assert layer["momentum"] == pytest.approx(0.999, abs=1e-7)
        assert layer["moving_mean_moved"] > 1e-4
        assert layer["grid_mean_error"] <= 1e-6 and layer["grid_variance_error"] <= 1e-6
    assert measured["epochs"] == 1 and 0.0 <= measured["val_accuracy"] <= 1.0
