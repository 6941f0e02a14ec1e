"""Shared fixtures: small generated image folders and datasets, every store under tmp_path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TRASHNET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trashnet150"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    # No test may read or write the user's caches or tracking stores.
    monkeypatch.setenv("GAPLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GAPLAB_COMPILE_CACHE_DIR", str(tmp_path / "xla"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    yield
    # A test that set MLflow's global tracking URI must not point later tests at its store.
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)


@pytest.fixture
def mock_study(tmp_path, monkeypatch):
    """A working folder with its own MLflow store, for studies run in this process (tests.test_study.run_mocked)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def write_image(path: Path, colour, size: int = 20, mode: str = "RGB", fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.new("RGB", (size, size), tuple(colour))
    image = rgb.convert(mode) if mode not in ("I;16",) else Image.fromarray(
        np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    )
    image.save(path, format=fmt)
    return path


def make_folder(root: Path, counts: dict[str, int], size: int = 20, ext: str = ".png") -> Path:
    """root/<class>/<i><ext>, each class its own colour with a little per-image variation."""
    rng = np.random.default_rng(0)
    for index, (name, count) in enumerate(sorted(counts.items())):
        base = np.array([(index * 70) % 256, (index * 130 + 40) % 256, (index * 200 + 90) % 256])
        for i in range(count):
            colour = np.clip(base + rng.integers(-10, 10, 3), 0, 255)
            write_image(root / name / f"{i}{ext}", colour, size)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "photos", {"cat": 10, "dog": 10, "emu": 10})


@pytest.fixture(scope="session")
def tiny_data():
    from gaplab.data import generate_shapes

    return generate_shapes(image_size=16, n_images=96, seed=0)
