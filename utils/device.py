"""The one device and precision policy, used by the three scripts, the evaluator and the benchmark.

``--precision fp32`` (the default) is the official code's numerics: float32 with PyTorch's own
TF32 defaults left untouched (cuDNN convolutions may use TF32, ``torch.backends.cudnn.allow_tf32``
is True; matmuls do not, ``torch.backends.cuda.matmul.allow_tf32`` is False).
``--precision bf16``: bf16 autocast for the training forward passes (student and teachers), on
CUDA and on the CPU alike, so that the CPU test suite exercises the same path.
Scoring (test and validation predictions of every model) is always plain fp32: NFR counts
per-sample argmax flips, and rounding at near-ties would move it.
"""
from __future__ import annotations

import contextlib
import os
import platform

import numpy as np
import PIL
import torch
import torchvision

from utils.errors import UserError

PRECISIONS = ("fp32", "bf16")


def setup_device(name: str, fast: bool = False) -> torch.device:
    """The process's device (under torchrun, the GPU of its LOCAL_RANK) with cuDNN set to the
    official deterministic mode, or to autotuning with ``fast``."""
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(local_gpu())
        device = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cudnn.deterministic = not fast
    torch.backends.cudnn.benchmark = fast
    return device


def local_gpu() -> int:
    """This process's GPU: its LOCAL_RANK (torchrun starts one process per GPU of a node). Every
    process of the node checks that the node has a GPU for each of them, so that they all stop
    with the same one-line error (and rank 0 alone prints it) rather than some with CUDA's."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), local_rank + 1)
    visible = torch.cuda.device_count()
    if visible == 0:
        raise UserError("--device cuda, but this process sees no CUDA GPU (tools/gpu_check.sh says why); "
                        "use --device cpu, or run where a GPU is visible")
    if processes > visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise UserError(f"{processes} processes on this node (LOCAL_RANK up to {processes - 1}) but only "
                        f"{visible} GPU(s) visible{f' (CUDA_VISIBLE_DEVICES={shown})' if shown is not None else ''}; "
                        f"start at most {visible} per node (torchrun --nproc-per-node {visible})")
    return local_rank


def autocast(device: torch.device, precision: str):
    """The training forward passes' context: bf16 autocast on the device's type, or nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def folds_teachers(device: torch.device, precision: str) -> bool:
    """Whether training-time teachers get BatchNorm folded into their convolutions and ELODI's
    members run as one vmapped computation. Both change logits by rounding only, so they are
    used only where bf16 already rounds, and only on CUDA: on the CPU the vmapped grouped
    convolutions ran slower than a loop (benchmarks/throughput.py --ensemble)."""
    return device.type == "cuda" and precision == "bf16"


def prefers_channels_last(device: torch.device) -> bool:
    """Channels-last memory format for convolutions: faster on CUDA tensor cores only."""
    return device.type == "cuda"


def environment(name: str) -> dict:
    """The software and hardware a run used. Deterministic mode repeats a run to the last digit
    on the same stack only: kernels differ between CPU instruction sets and GPU models, and
    JPEG decoding between Pillow builds."""
    device = torch.device(name)
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}")
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "pillow": PIL.__version__, "numpy": np.__version__,
            "hardware": hardware}
