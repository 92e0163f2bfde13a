"""tools/gpu_check.sh without a GPU: one line, exit status 2, nothing written. (With a GPU it runs
the CUDA tests, the benchmarks and a training study: tests/test_cuda.py and its report cover that.)"""
import subprocess
import sys

import pytest

from conftest import REPO, script_env

pytestmark = pytest.mark.slow  # starts tools/gpu_check.sh


def gpu_check(tmp_path, *args, **env):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so that the test means the same on every machine.
    env = {**script_env(), "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "REPORT": str(tmp_path / "report.md"), **env}
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), *map(str, args)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    proc = gpu_check(tmp_path)
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("gpu_check: no CUDA GPU visible") and "run this on a machine with one" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []   # no report, no run folder


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
