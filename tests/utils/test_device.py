"""The device and precision policy (utils/device.py), the resumable random state of one GPU
(utils/state.py), and the global batch's division among processes (utils/batches.py)."""
import random

import numpy as np
import pytest
import torch

from utils.batches import TrainLoader
from utils.device import autocast
from utils.errors import UserError
from utils.inputs import ImageSet, Normalize, TensorInputs
from utils.state import rng_state, set_rng_state

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no GPU


def test_bf16_autocasts_on_the_cpu_and_fp32_does_not():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(CPU, "bf16"):
        assert (x @ w).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (x @ w).dtype == torch.float32


def test_rng_state_restores_and_keeps_no_other_gpus():
    """A state saved on the CPU holds no CUDA state, and one saved by an earlier version (the
    states of every visible GPU, a list) restores without touching any GPU."""
    state = rng_state(CPU)
    assert "cuda" not in state
    drawn = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state({**state, "cuda": [torch.zeros(8, dtype=torch.uint8)] * 2}, CPU)
    again = (random.random(), np.random.rand(), torch.rand(1))
    assert drawn[:2] == again[:2] and torch.equal(drawn[2], again[2])


@pytest.mark.parametrize("batch_size, world, ok", [(128, 2, True), (128, 3, False), (6, 4, False)])
def test_global_batch_must_divide_among_the_processes(batch_size, world, ok):
    data = ImageSet(torch.zeros(12, 3, 32, 32, dtype=torch.uint8), torch.zeros(12, dtype=torch.int64))
    loader = TrainLoader(data, batch_size, 0, Normalize())
    make = lambda: TensorInputs({"train": data, "test": data}, Normalize(), loader, batch_size, 64, 0, world)  # noqa: E731
    if ok:
        make()
    else:
        with pytest.raises(UserError, match=f"--batch-size {batch_size} is the global batch"):
            make()
