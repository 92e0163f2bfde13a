"""tools/gpu_check.sh without a GPU: one line, exit status 2, nothing written. (With a GPU it runs
the CUDA tests, the benchmarks, a training study, the scaling and the other CUDA paths:
tests/test_cuda.py and its report cover that.)"""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, script_env


def gpu_check(tmp_path, *args, **env):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so that the test means the same on every machine.
    env = {**script_env(), "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "REPORT": str(tmp_path / "report.md"), **env}
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), *map(str, args)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # imports torch in a child process
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    proc = gpu_check(tmp_path)
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("gpu_check: no CUDA GPU visible") and "run this on a machine with one" in lines[0]
    assert f"built for CUDA {torch.version.cuda};" in lines[0]
    assert "TORCH_INDEX_URL=" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []   # no report, no run folder


@pytest.mark.slow
def test_an_old_driver_is_named_with_torchs_own_warning(tmp_path_factory, tmp_path):
    """What a machine whose driver is too old for the torch build shows: nvidia-smi runs, torch
    finds no usable GPU and warns why (stubbed: nvidia-smi, and torch.cuda.is_available)."""
    stubs = tmp_path_factory.mktemp("stubs")
    (stubs / "nvidia-smi").write_text('#!/usr/bin/env bash\n[ "$1" = --query-gpu=driver_version ] && echo 470.82.01\n')
    (stubs / "nvidia-smi").chmod(0o755)
    (stubs / "sitecustomize.py").write_text(
        "import warnings\nimport torch\n\n"
        "def is_available():\n"
        "    warnings.warn('CUDA initialization: The NVIDIA driver on your system is too old '\n"
        "                  '(found version 11040).\\n'\n"
        "                  'Please update your GPU driver.')\n"
        "    return False\n\n"
        "torch.cuda.is_available = is_available\n")
    proc = gpu_check(tmp_path, PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(stubs))
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) == 1, lines
    assert f"built for CUDA {torch.version.cuda}; NVIDIA driver 470.82.01 (nvidia-smi)" in lines[0]
    assert ("torch warned: CUDA initialization: The NVIDIA driver on your system is too old (found version "
            "11040). Please update your GPU driver.") in lines[0]
    assert not list(tmp_path.iterdir())


def test_an_interpreter_without_torch_is_named_in_one_line(tmp_path):
    proc = gpu_check(tmp_path, "some/data", PYTHON="false")
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).splitlines()
    assert lines == ["gpu_check: cannot import torch with false; install the requirements "
                     "(./install_requirements.sh) or set PYTHON"]
    assert not list(tmp_path.iterdir())


def test_help_prints_the_usage(tmp_path):
    proc = gpu_check(tmp_path, "--help")
    assert proc.returncode == 2
    assert proc.stdout.startswith("The GPU check:") and "usage: tools/gpu_check.sh [DATA_ROOT]" in proc.stdout
    assert "EPOCHS=3" in proc.stdout and "SEEDS=" in proc.stdout
