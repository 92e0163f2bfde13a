"""torchrun: two CPU processes (gloo) against one.

What can be exactly equal: a whole ResNet trained under DDP on the CPU is not the one-process
model, because each rank's BatchNorm normalises its half of the batch (SyncBatchNorm, used on
CUDA, needs NCCL). A head trained on a frozen backbone's cached features has no BatchNorm: its
DDP gradient is the full-batch gradient (up to summation order), so its predictions, and so
ER, NFR and Rel-NFR, must equal the one-process run's exactly; the test set's odd size checks
that the ranks' strided shards are gathered back in order. The other tests check that a
whole-model ImageNet-folder run completes with rank 0 alone writing, and that a user error
stops every rank with exit code 2.
"""
import json
import subprocess
import sys

import pytest

from conftest import REPO, assert_ok, common_args, run_inline, script_env, write_tiny_dataset

pytestmark = pytest.mark.slow  # every test starts processes under torchrun


def torchrun(script: str, *args, cwd) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 script args...`` on the CPU."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / script), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=script_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    """40 training images (the global batches of 8 split evenly over two ranks) and 30 test
    images, 15 of them of old classes: shards of unequal length."""
    return write_tiny_dataset(tmp_path_factory.mktemp("odd") / "data", train=4, test=3)


def test_two_processes_match_one_on_a_frozen_backbone(odd_data, tmp_path):
    common = [*common_args(odd_data, epochs=2, batch_size=8, precision="fp32"), "--freeze-backbone"]
    run_inline("train_old_model.py", *common, "--output-dir", tmp_path / "old", "--save", tmp_path / "old.pth")
    run_inline("train_new_model.py", *common, "--output-dir", tmp_path / "new", "--save", tmp_path / "new.pth")
    update = [*common, "--method", "MPT_KL", "--old-ckpt", tmp_path / "old.pth", "--new-ckpt", tmp_path / "new.pth"]
    run_inline("main.py", *update, "--output-dir", tmp_path / "one")
    proc = torchrun("main.py", *update, "--output-dir", tmp_path / "two", cwd=tmp_path)
    assert_ok(proc)
    assert proc.stdout.count("[update] epoch") == 2  # rank 0 alone reports

    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    metrics = ("er_old", "er_all", "nfr", "rel_nfr", "pfr", "er_old_model")
    assert {k: two[k] for k in metrics} == {k: one[k] for k in metrics}
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    for a, b in zip(*logs):
        assert a["metrics"] == b["metrics"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_imagenet_folder_under_torchrun(tiny_imagenet, tmp_path):
    """The whole model (DDP, DistributedSampler, one loader worker per rank) for one epoch."""
    proc = torchrun("train_old_model.py", "--dataset", "imagenet", "--data-root", tiny_imagenet,
                    "--epochs", 1, "--batch-size", 4, "--image-size", 32, "--workers", 1, "--device", "cpu",
                    "--output-dir", tmp_path / "run", "--save", tmp_path / "old.pth", cwd=tmp_path)
    assert_ok(proc)
    assert proc.stdout.count("[old] epoch 1/1") == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["log.jsonl", "results.json", "state.pth"]
    assert (tmp_path / "old.pth").is_file()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # Each of the old model's val images scored once over the two ranks: 2 old classes x 2 images,
    # so a multiple of 25 %, the one the last epoch logged.
    assert results["er_old"] / 25 == round(results["er_old"] / 25)
    last = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert last["metrics"]["er_old"] == results["er_old"]


def test_user_error_stops_every_rank_with_exit_code_2(tiny_data, tmp_path):
    """Raised after the process group started (the old checkpoint is read inside the run)."""
    proc = torchrun("main.py", *common_args(tiny_data), "--old-ckpt", tmp_path / "missing.pth",
                    "--output-dir", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode != 0
    for rank in (0, 1):
        assert f"[rank {rank}] error: old model checkpoint" in proc.stderr
    assert "exitcode  : 2" in proc.stderr  # torchrun's report of the first worker to stop
    # No traceback from the workers' code; torchrun prints its own from site-packages, which may
    # lie inside the repository (CI installs into ./.venv).
    worker_frames = [line for line in proc.stderr.splitlines()
                     if f'File "{REPO}' in line and "site-packages" not in line]
    assert not worker_frames
