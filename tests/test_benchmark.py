"""benchmarks/throughput.py runs end to end (tiny sizes) and ends with its speedup line."""
import re
import subprocess
import sys

import pytest

from conftest import REPO, script_env


@pytest.mark.parametrize("flags", [
    ["--method", "MPT_KL", "--train-size", "48", "--test-size", "24", "--batch-size", "16",
     "--workers", "0", "--repeats", "1"],
    ["--ensemble", "--ensemble-size", "2", "--batch-size", "4", "--steps", "1", "--repeats", "1"],
], ids=["epoch", "ensemble"])
def test_benchmark_prints_its_speedup_last(flags):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--device", "cpu", *flags],
                          cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"speedup \d+\.\d\dx", proc.stdout.strip().splitlines()[-1]), proc.stdout
