"""tools/sweep_b.sh on tiny data, and the job runner it shares with tools/train_ensemble.sh."""
import csv
import json
import subprocess
import sys

import pytest

from conftest import REPO, assert_figure, script_env

pytestmark = pytest.mark.slow  # runs tools/sweep_b.sh end to end

METRIC_KEYS = {"er_old", "er_all", "nfr", "rel_nfr", "pfr", "er_old_model"}


def test_sweep_trains_each_b_and_summarises(tiny_sweep):
    for b in (0.0, 2.0):
        run = tiny_sweep / "MPT_KL" / f"b{b:g}" / "seed42"
        results = json.loads((run / "results.json").read_text())
        assert (results["config"]["method"], results["config"]["b"]) == ("MPT_KL", b)
        assert results["config"]["embed_dim"] == 2
        assert "[update] epoch 1/1" in (run / "train.log").read_text()  # the run's own output
        # --val-fraction: the same metrics on the hold-out, in results.json and every log record.
        assert set(results["val"]) == METRIC_KEYS
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert all(set(r["metrics"]["val"]) == METRIC_KEYS for r in records)
    rows = list(csv.DictReader((tiny_sweep / "tables.csv").open()))
    assert [(r["row"], r["runs"]) for r in rows] == [
        ("Old model", "1"), ("New model", "1"), ("MPT_KL (b=0)", "1"), ("MPT_KL (b=2)", "1")]
    assert "MPT_KL (b=2)" in (tiny_sweep / "tables.md").read_text()
    assert_figure(tiny_sweep / "b_sweep.png")
    selected = json.loads((tiny_sweep / "selected_b.json").read_text())
    assert [(s["method"], s["b"] in (0.0, 2.0)) for s in selected] == [("MPT_KL", True)]


def test_val_fraction_sweep_trains_its_references_on_the_same_split(tiny_sweep):
    """The reference models of a --val-fraction sweep held out the runs' validation images: the
    sweep trained them (refs/) with the same split and every run was scored against them."""
    from utils.checkpoint import read_checkpoint

    refs = {role: tiny_sweep / "refs" / role / f"ckpt_{role}.pth" for role in ("old", "new")}
    for b in (0.0, 2.0):
        results = json.loads((tiny_sweep / "MPT_KL" / f"b{b:g}" / "seed42" / "results.json").read_text())
        assert results["config"]["old_ckpt"] == str(refs["old"])
        assert results["config"]["new_ckpt"] == str(refs["new"])
        assert results["split"]["val_fraction"] == 0.25
        for ckpt in refs.values():
            assert read_checkpoint(ckpt)["split"] == results["split"]
            assert read_checkpoint(ckpt)["embed_dim"] == 2  # the sweep's flags reached them


def test_sweep_with_references_of_another_split_fails(tiny_data, old_ckpt, new_ckpt, tmp_path):
    """References given on the command line are used as they are: trained on the whole training
    set, main.py refuses them for a --val-fraction run, and the sweep trains none of its own."""
    from conftest import common_args

    proc = subprocess.run(
        ["bash", str(REPO / "tools" / "sweep_b.sh"), str(tmp_path / "sweep"),
         *common_args(tiny_data, val_fraction=0.25), "--old-ckpt", str(old_ckpt), "--new-ckpt", str(new_ckpt)],
        cwd=tmp_path, env=dict(script_env(), BS="0", METHODS="MPT_KL", PYTHON=sys.executable),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert not (tmp_path / "sweep" / "refs").exists()
    log = (tmp_path / "sweep" / "MPT_KL" / "b0" / "seed42" / "train.log").read_text()
    assert "trained on the whole training set" in log and "--val-fraction 0.25 --split-seed 42" in log


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
