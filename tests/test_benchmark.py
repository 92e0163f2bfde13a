"""The benchmarks run end to end (tiny sizes) and report what they measured: throughput.py's
speedup is the ratio of the times it printed, its images/s the images over those times, the
teachers the method's own, and the batched ensemble computes the loop's logits; flips_scale.py
analyses its runs."""
import re
import subprocess
import sys

import pytest

from conftest import REPO, script_env

pytestmark = pytest.mark.slow  # starts the benchmark and times real epochs


def benchmark(*flags) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--device", "cpu", *flags],
                          cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ratio_bounds(slow: float, fast: float, half_step: float) -> tuple[float, float]:
    """The range of slow / fast for the unrounded values behind two printed, rounded ones."""
    return (slow - half_step) / (fast + half_step), (slow + half_step) / max(fast - half_step, 1e-9)


def last_speedup(out: str) -> float:
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"speedup \d+\.\d\dx", last), out
    return float(last.split()[1].rstrip("x"))


def test_epoch_speedup_is_the_ratio_of_its_timed_epochs():
    train = 48
    out = benchmark("--method", "MPT_KL", "--train-size", str(train), "--test-size", "24", "--batch-size", "16",
                    "--workers", "0", "--repeats", "1", "--precision", "fp32")
    assert "MPT_KL (teachers: new, old)" in out  # the method's own teachers
    rows = {name: (float(wall), float(rate)) for name, wall, rate in re.findall(
        r"^(baseline \(official-style\)|engine --precision fp32)\s+(\d+\.\d+) s median of \[[^]]*\], "
        r"(\d+\.\d) images/s", out, re.M)}
    assert len(rows) == 2, out
    for wall, rate in rows.values():
        low, high = ratio_bounds(train, wall, 0.005)
        assert low - 0.05 <= rate <= high + 0.05  # images/s: the training images over the epoch's time
    low, high = ratio_bounds(rows["baseline (official-style)"][0], rows["engine --precision fp32"][0], 0.005)
    assert low - 0.005 <= last_speedup(out) <= high + 0.005


def test_ensemble_speedup_is_the_ratio_of_its_steps_and_both_agree():
    out = benchmark("--ensemble", "--ensemble-size", "2", "--batch-size", "4", "--steps", "1", "--repeats", "1",
                    "--precision", "fp32")
    ms = dict(re.findall(r"^(loop|batched)\s+(\d+\.\d) ms/step median", out, re.M))
    assert set(ms) == {"loop", "batched"}, out
    low, high = ratio_bounds(float(ms["loop"]), float(ms["batched"]), 0.05)
    assert low - 0.005 <= last_speedup(out) <= high + 0.005
    difference = float(re.search(r"max \|batched - loop\| = (\S+)", out).group(1))
    assert difference < 1e-4  # fp32: one computation, two schedules


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


def run_benchmark(name: str, *flags) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *flags], cwd=REPO, env=script_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_seeded_transform_overhead_is_the_difference_of_its_timings():
    out = run_benchmark("seeded_transform.py", "--samples", "200", "--repeats", "1")
    plain, seeded, overhead = (float(re.search(rf"^{k}\s+(-?\d+\.\d) us", out, re.M).group(1))
                               for k in ("plain", "seeded", "overhead"))
    assert abs((seeded - plain) - overhead) <= 0.1 + 1e-9   # each printed to 0.1 us


def test_folder_loading_names_the_limit_its_numbers_show(tmp_path):
    out = run_benchmark("folder_loading.py", "--device", "cpu", "--images", "48", "--batch-size", "8",
                        "--image-size", "32", "--workers-list", "0 1", "--model-steps", "1", "--dir", str(tmp_path))
    loaded = {int(w): float(r) for w, r in re.findall(r"^loader, (\d+) worker\(s\): (\d+) images/s", out, re.M)}
    trained = float(re.search(r"^model resnet18, .*: (\d+) images/s", out, re.M).group(1))
    assert set(loaded) == {0, 1} and trained > 0
    verdict = re.search(r"with (\d+) worker\(s\) the (.+) is the limit \((\d+) loaded vs (\d+) trained", out)
    workers, limit, got, want = int(verdict[1]), verdict[2], float(verdict[3]), float(verdict[4])
    assert got == loaded[workers] and want == trained
    assert (limit == "loader") == (got < want)
