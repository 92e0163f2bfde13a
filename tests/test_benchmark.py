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


@pytest.mark.slow
def test_flips_benchmark_analyses_its_runs(tmp_path):
    """benchmarks/flips_scale.py at a tiny size: its runs are analysed against the baseline, and
    it reports time and memory."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "flips_scale.py"), "--runs", "4",
                           "--samples", "400", "--classes", "40", "--resamples", "50", "--dir", str(tmp_path)],
                          cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"tools\.flips: 4 runs x 400 samples x 40 classes, --baseline, 50 resamples: "
                     r"\d+\.\d s, peak RSS \d+\.\d\d GiB$", proc.stdout.strip())
    report = (tmp_path / "flips" / "flips.json").read_text()
    assert report.count('"p_holm"') == 3  # three runs against the baseline
