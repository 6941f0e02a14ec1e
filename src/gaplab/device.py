"""Which device training runs on: `--device auto|cpu|gpu`, asked of the active Keras backend only.

    hide_gpus()                      # for --device cpu; before Keras (and its backend) is imported
    label = choose_device("auto")    # "GPU:0 NVIDIA H200", or "CPU" (and `cpu_notice` is worth printing)

Only the backend Keras runs on is imported (JAX, TensorFlow or PyTorch), never another one, so a
machine with JAX but no TensorFlow works. This is the one module that may call a backend directly:
Keras has no backend-neutral way to list GPUs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from importlib import metadata
from pathlib import Path

DEVICES = ("auto", "cpu", "gpu")
# The package each Keras backend is installed as (what pip installs, what sys.modules holds).
BACKEND_PACKAGES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}


class DeviceError(RuntimeError):
    """The requested device is not available; the message names the backend and what it saw."""


def check_backend_installed() -> str:
    """The backend Keras will load, read as Keras reads it without importing it.

    Raises DeviceError if that backend's package is missing.

    Keras takes $KERAS_BACKEND, else "backend" in $KERAS_HOME/keras.json (default ~/.keras), else
    tensorflow; a missing package would otherwise end in a traceback deep inside `import keras`.
    """
    name, source = os.environ.get("KERAS_BACKEND"), "KERAS_BACKEND"
    if not name:
        config = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
        try:
            name, source = json.loads(config.read_text()).get("backend"), str(config)
        except (OSError, ValueError):
            name = None
    if not name:
        name, source = "tensorflow", "Keras's default"
    package = backend_package(name)
    if importlib.util.find_spec(package) is None:
        raise DeviceError(f"the Keras backend is {name} ({source}) but {package} is not installed; install it "
                          "(e.g. pip install -e \".[jax]\" and set KERAS_BACKEND=jax) or choose an installed backend.")
    return name


def prepare_backend(device: str) -> None:
    """Before Keras is imported: check that its backend is installed, and for `cpu` hide every GPU.

    Raises DeviceError naming what is missing.
    """
    check_backend_installed()
    if device == "cpu":
        hide_gpus()


def hide_gpus() -> None:
    """Make every backend see only the CPU. Call before Keras is imported; raises if it already was."""
    loaded = [name for name in BACKEND_PACKAGES.values() if name in sys.modules]
    if loaded:
        raise DeviceError(f"device 'cpu' must be chosen before Keras and its backend are imported "
                          f"(already imported: {', '.join(loaded)}); call gaplab.device.hide_gpus() first.")
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    os.environ["JAX_PLATFORMS"] = "cpu"


def backend() -> str:
    import keras  # not at the top: prepare_backend sets what Keras reads when it loads

    return keras.backend.backend()


def backend_package(name: str | None = None) -> str:
    """The package behind Keras backend `name` (default: the active one), e.g. 'jax'."""
    name = name or backend()
    return BACKEND_PACKAGES.get(name, name)


def backend_version() -> str:
    """The installed version of the package behind the active backend, e.g. '0.10.2' for jax."""
    return metadata.version(backend_package())


def visible_gpus() -> list[str]:
    """The GPUs the active backend sees, as 'GPU:<index> <name>'."""
    name = backend()
    if name == "jax":
        jax = importlib.import_module("jax")
        gpus = [device for device in jax.devices() if device.platform in ("gpu", "cuda", "rocm")]
        return [f"GPU:{index} {device.device_kind}" for index, device in enumerate(gpus)]
    if name == "tensorflow":
        tf = importlib.import_module("tensorflow")
        labels = []
        for index, gpu in enumerate(tf.config.list_physical_devices("GPU")):
            details = tf.config.experimental.get_device_details(gpu)
            labels.append(f"GPU:{index} {details.get('device_name', gpu.name)}")
        return labels
    if name == "torch":
        torch = importlib.import_module("torch")
        if not torch.cuda.is_available():
            return []
        return [f"GPU:{index} {torch.cuda.get_device_name(index)}" for index in range(torch.cuda.device_count())]
    return []


def choose_device(requested: str) -> str:
    """The label of the device training will run on, for `requested` in DEVICES.

    'gpu' with no GPU visible raises DeviceError; 'auto' takes the first GPU, else the CPU;
    'cpu' is the CPU (hide_gpus() should have run before Keras was imported).
    """
    if requested not in DEVICES:
        raise DeviceError(f"device={requested!r} is unknown; use one of {', '.join(DEVICES)}.")
    if requested == "cpu":
        return "CPU"
    gpus = visible_gpus()
    if gpus:
        return gpus[0]
    if requested == "gpu":
        raise DeviceError(
            f"device 'gpu' was asked for but the Keras backend {backend()} {backend_version()} sees no GPU "
            f"(it sees: {', '.join(_seen_devices()) or 'nothing'}); install gaplab's "
            "GPU extra (gpu for TensorFlow, jax-gpu for JAX: pip install -e \".[gpu]\" in gaplab's folder) "
            "or use --device cpu.")
    return "CPU"


def cpu_notice() -> str:
    """The line printed when 'auto' found no GPU."""
    return (f"device auto: the Keras backend {backend()} {backend_version()} sees no GPU, "
            "so training runs on the CPU (for a GPU, install gaplab's gpu or jax-gpu extra).")


def _seen_devices() -> list[str]:
    name = backend()
    if name == "jax":
        return [f"{device.platform}:{device.id} {device.device_kind}"
                for device in importlib.import_module("jax").devices()]
    if name == "tensorflow":
        return [device.name for device in importlib.import_module("tensorflow").config.list_physical_devices()]
    return ["cpu"]
