"""gaplab.device: choosing the training device from the active Keras backend only."""

from __future__ import annotations

import os
import re

import pytest

from gaplab.device import DeviceError, backend_version, choose_device, hide_gpus, visible_gpus
from tests.helpers import configured_backend


def test_unknown_device_names_the_choices():
    with pytest.raises(DeviceError, match=r"device='tpu' is unknown; use one of auto, cpu, gpu"):
        choose_device("tpu")


def test_cpu_is_the_cpu_and_without_a_gpu_auto_falls_back_and_gpu_is_refused():
    assert choose_device("cpu") == "CPU"
    if visible_gpus():
        pytest.skip("this machine has a GPU")
    assert choose_device("auto") == "CPU"
    seen = rf"Keras backend {configured_backend()} {re.escape(backend_version())} sees no GPU \(it sees: "
    with pytest.raises(DeviceError, match=seen):
        choose_device("gpu")


def test_hiding_gpus_after_the_backend_was_imported_is_refused_and_changes_nothing():
    backend = configured_backend()  # imports Keras and its backend

    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    imported = rf"must be chosen before Keras and its backend are imported \(already imported: .*{backend}"
    with pytest.raises(DeviceError, match=imported):
        hide_gpus()
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before
