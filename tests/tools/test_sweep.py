"""tools/sweep_b.sh on tiny data, and the job runner it shares with tools/train_ensemble.sh."""
import csv
import json
import subprocess

from conftest import REPO, script_env

METRIC_KEYS = {"er_old", "er_all", "nfr", "rel_nfr", "pfr", "er_old_model"}


def test_sweep_trains_each_b_and_summarises(tiny_sweep):
    for b in (0.0, 2.0):
        run = tiny_sweep / "MPT_KL" / f"b{b:g}" / "seed42"
        results = json.loads((run / "results.json").read_text())
        assert (results["config"]["method"], results["config"]["b"]) == ("MPT_KL", b)
        assert results["config"]["embed_dim"] == 2 and (run / "train.log").is_file()
        # --val-fraction: the same metrics on the hold-out, in results.json and every log record.
        assert set(results["val"]) == METRIC_KEYS
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert all(set(r["metrics"]["val"]) == METRIC_KEYS for r in records)
    rows = list(csv.DictReader((tiny_sweep / "tables.csv").open()))
    assert [(r["row"], r["runs"]) for r in rows] == [("MPT_KL (b=0)", "1"), ("MPT_KL (b=2)", "1")]
    assert "MPT_KL (b=2)" in (tiny_sweep / "tables.md").read_text()
    assert (tiny_sweep / "b_sweep.png").stat().st_size > 1000
    selected = json.loads((tiny_sweep / "selected_b.json").read_text())
    assert [(s["method"], s["b"] in (0.0, 2.0)) for s in selected] == [("MPT_KL", True)]


def bash(script: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=dict(script_env(), **env),
                          capture_output=True, text=True, timeout=60)


def test_jobs_round_robin_over_gpus_and_failures_reported():
    proc = bash('source tools/jobs.sh; job() { echo "$1 gpu$CUDA_VISIBLE_DEVICES"; [ "$1" != 3 ]; }; '
                'run_jobs 5 job', GPUS="0 1")
    assert proc.returncode == 1  # job 3 failed; the others still ran
    assert sorted(proc.stdout.split("\n")[:-1]) == ["0 gpu0", "1 gpu1", "2 gpu0", "3 gpu1", "4 gpu0"]
    proc = bash('source tools/jobs.sh; job() { echo "$1 gpu${CUDA_VISIBLE_DEVICES:-none}"; }; run_jobs 2 job')
    assert proc.returncode == 0 and proc.stdout == "0 gpunone\n1 gpunone\n"


def test_ensemble_members_already_saved_are_skipped(tmp_path):
    for i in range(2):
        (tmp_path / f"ckpt_{i}.pth").write_bytes(b"")
    proc = bash("tools/train_ensemble.sh --epochs 1", N="2", ENSEMBLE_DIR=str(tmp_path), GPUS="0 1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == sorted(
        [f"done already: {tmp_path}/runs/ckpt_{i}" for i in range(2)] + [f"ensemble: 2 members in {tmp_path}"])
    assert bash("tools/train_ensemble.sh", N="0").returncode == 2
