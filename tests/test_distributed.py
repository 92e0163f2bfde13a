"""torchrun: several CPU processes (gloo) against one.

What can be exactly equal: a whole ResNet trained under DDP on the CPU is not the one-process
model, because each rank's BatchNorm normalises its part of the batch (SyncBatchNorm, used on
CUDA, needs NCCL). A head trained on a frozen backbone's cached features has no BatchNorm: its
DDP gradient is the full-batch gradient (up to summation order), so its predictions, and so
ER, NFR and Rel-NFR, must equal the one-process run's exactly; the test set's odd size checks
that the ranks' strided shards are gathered back in order. Three processes (spawned, gloo):
every step's gradient equals the one-process gradient of its global batch when the last global
batch cannot be shared evenly; rank 0 alone downloads CIFAR. Three processes (torchrun): every
pipeline trains with finite losses on a training set whose size modulo the batch is 1. The
other tests check that a whole-model ImageNet-folder run completes with rank 0 alone writing,
and that a user error stops every rank with exit code 2, printed once.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torchvision.datasets

from conftest import (
    REPO,
    assert_ok,
    common_args,
    run_inline,
    script_env,
    write_cifar_pickles,
    write_tiny_dataset,
    write_tiny_imagenet,
)
from methods import get_method
from utils.batches import TrainLoader
from utils.engine import Teachers, train_one_epoch
from utils.evaluation import split_logits
from utils.inputs import ImageSet, TensorInputs, no_transform
from utils.runner import load_data

pytestmark = pytest.mark.slow   # every test here starts processes


def torchrun(script: str, *args, cwd, processes: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node PROCESSES script args...`` on the CPU."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
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
    """The whole model (DDP, the seeded per-sample loader, one loader worker per rank) for one epoch."""
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


def test_user_error_stops_every_rank_with_exit_code_2_and_is_printed_once(tiny_data, tmp_path):
    """Raised after the process group started (the old checkpoint is read inside the run): every
    rank meets it, rank 0 prints it, torchrun stops the others before they would."""
    proc = torchrun("main.py", *common_args(tiny_data, batch_size=15), "--old-ckpt", tmp_path / "missing.pth",
                    "--output-dir", tmp_path / "run", cwd=tmp_path, processes=3)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and errors[0].startswith("error: old model checkpoint"), proc.stderr
    assert "exitcode  : 2" in proc.stderr  # torchrun's report of the first worker to stop
    # No traceback from the workers' code; torchrun prints its own from site-packages, which may
    # lie inside the repository (CI installs into ./.venv).
    worker_frames = [line for line in proc.stderr.splitlines()
                     if f'File "{REPO}' in line and "site-packages" not in line]
    assert not worker_frames


# --------------------------------------------------------------------------------------------
# Three spawned processes (gloo), each running the repository's own code.
# --------------------------------------------------------------------------------------------
WORLD = 3


def spawn(worker, tmp_path, *args):
    """Run ``worker(rank, init_file, *args)`` in WORLD processes."""
    mp.spawn(worker, args=(str(tmp_path / "pg-init"), *args), nprocs=WORLD)


def join_group(rank: int, init_file: str):
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


FEATURES, CLASSES, LR = 8, 3, 0.5


def feature_set(n: int) -> ImageSet:
    g = torch.Generator().manual_seed(1)
    return ImageSet(torch.randn(n, FEATURES, generator=g), torch.randint(0, CLASSES, (n,), generator=g))


def linear_model() -> torch.nn.Module:
    """No batch statistics: a DDP step's gradient can equal the one-process gradient."""
    torch.manual_seed(0)
    return torch.nn.Linear(FEATURES, CLASSES)


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def train_epoch_on_rank(rank, init_file, n, batch_size, out):
    """One epoch of train_one_epoch under DDP; rank 0 saves the gradient of every step."""
    join_group(rank, init_file)
    try:
        model = linear_model()
        grads = []

        class RecordingSGD(torch.optim.SGD):
            def step(self, closure=None):
                grads.append(flat_grad(model).clone())
                return super().step(closure)

        loader = TrainLoader(feature_set(n), batch_size, seed=7, normalize=no_transform, augment=False,
                             rank=rank, world_size=WORLD)
        train_one_epoch(torch.nn.parallel.DistributedDataParallel(model), loader,
                        RecordingSGD(model.parameters(), lr=LR), get_method("No_Treatment"), Teachers(), 0)
        if rank == 0:
            torch.save(torch.stack(grads), out)
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.parametrize("n, tail", [(19, 1), (23, 5)])
def test_every_step_has_the_one_process_gradient_of_its_global_batch(tmp_path, n, tail):
    """Batches of 6 over 3 processes: a tail of 1 cannot go to every process (dropped), a tail
    of 5 is shared 2, 2, 1 (the losses weighted by those shares)."""
    batch_size = 6
    assert n % batch_size == tail
    spawn(train_epoch_on_rank, tmp_path, n, batch_size, str(tmp_path / "grads.pt"))
    distributed = torch.load(tmp_path / "grads.pt")

    # One process, by hand: the mean loss over each global batch, cut from the same permutation.
    data = feature_set(n)
    order = TrainLoader(data, batch_size, seed=7, normalize=no_transform).epoch_randomness()[0]
    kept = n - tail if tail < WORLD else n
    model = linear_model()
    expected = []
    for start in range(0, kept, batch_size):
        idx = order[start:start + batch_size]
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(data.images[idx]), data.targets[idx]).backward()
        expected.append(flat_grad(model).clone())
        with torch.no_grad():
            for p in model.parameters():
                p -= LR * p.grad
    assert len(distributed) == len(expected) == -(-kept // batch_size)
    for step, (got, want) in enumerate(zip(distributed, expected)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=f"step {step}")


def load_data_on_rank(rank, init_file, root, calls):
    """load_data with torchvision's CIFAR-10 download replaced by a recorder that 'downloads'
    (writes the pickled files) slowly, as a real download would."""
    join_group(rank, init_file)

    class RecordingDownload:
        def __init__(self, root, train=True, download=False):
            with open(calls, "a") as f:
                f.write(f"{rank}\n")
            if not download:
                raise RuntimeError("Dataset not found or corrupted")
            time.sleep(1.0)
            write_cifar_pickles(Path(root), "cifar10")

    torchvision.datasets.CIFAR10 = RecordingDownload
    try:
        args = SimpleNamespace(dataset="cifar10", data_root=root, old_fraction=0.5, val_fraction=0.0, split_seed=42)
        data = load_data(args, "new")
        Path(f"{calls}.{rank}").write_text(str(len(data.dataset.train)))
    finally:
        torch_dist.destroy_process_group()


def test_rank_0_alone_downloads_cifar_and_the_others_read_its_copy(tmp_path):
    root, calls = tmp_path / "data", tmp_path / "calls"
    spawn(load_data_on_rank, tmp_path, str(root), str(calls))
    assert calls.read_text().split() == ["0"]
    assert [Path(f"{calls}.{rank}").read_text() for rank in range(WORLD)] == ["40"] * WORLD


def node_local_download(rank, init_file, roots, calls):
    """Ranks 0 and 1 on one node, rank 2 alone on another, each node with its own data folder."""
    os.environ["LOCAL_RANK"] = str([0, 1, 0][rank])
    load_data_on_rank(rank, init_file, roots[0 if rank < 2 else 1], calls)


def test_a_node_local_folder_is_downloaded_once_per_node(tmp_path):
    roots, calls = [str(tmp_path / "node-a"), str(tmp_path / "node-b")], tmp_path / "calls"
    spawn(node_local_download, tmp_path, roots, str(calls))
    assert sorted(calls.read_text().split()) == ["0", "2"]   # the first process of each node
    assert [Path(f"{calls}.{rank}").read_text() for rank in range(WORLD)] == ["40"] * WORLD


def score_two_rows(rank, init_file, out):
    join_group(rank, init_file)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(FEATURES, CLASSES)
        rows = feature_set(2)
        inputs = TensorInputs({"val": rows}, no_transform, None, batch_size=3, eval_batch_size=4, rank=rank,
                              world=WORLD)
        logits = split_logits(model, inputs, "val", torch.device("cpu"))
        torch.save(logits, f"{out}.{rank}")
    finally:
        torch_dist.destroy_process_group()


def test_a_split_with_fewer_rows_than_processes_leaves_a_shard_empty(tmp_path):
    """2 rows over 3 processes: rank 2 scores nothing and every rank gets both rows' logits."""
    spawn(score_two_rows, tmp_path, str(tmp_path / "logits"))
    torch.manual_seed(0)
    expected = torch.nn.Linear(FEATURES, CLASSES)(feature_set(2).images).detach()
    for rank in range(WORLD):
        torch.testing.assert_close(torch.load(tmp_path / f"logits.{rank}"), expected)


# --------------------------------------------------------------------------------------------
# Three processes under torchrun, a training set whose size modulo the batch is 1.
# --------------------------------------------------------------------------------------------
def finite_epochs(run_dir) -> list:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert records and all(r["loss"] == r["loss"] and abs(r["loss"]) < float("inf") for r in records)
    return records


def test_old_and_new_models_train_on_three_processes_with_a_tail_of_one(tmp_path):
    """25 old-class images in batches of 12, 100 images in batches of 33: the last image of each
    epoch cannot go to 3 processes, so it is left out, said once."""
    for role, per_class, batch_size in (("old", 5, 12), ("new", 10, 33)):
        data = write_tiny_dataset(tmp_path / f"data-{role}", train=per_class, test=2)
        run = tmp_path / role
        proc = torchrun(f"train_{role}_model.py", *common_args(data, epochs=2, batch_size=batch_size),
                        "--output-dir", run, "--save", tmp_path / f"{role}.pth", cwd=tmp_path, processes=3)
        assert_ok(proc)
        assert proc.stderr.count("note: the last 1 of the") == 1
        assert [r["dropped"] for r in finite_epochs(run)] == [1, 1]


@pytest.mark.parametrize("pipeline", ["pil", "imagenet", "freeze-backbone"])
def test_every_pipeline_trains_on_three_processes_with_a_tail_of_one(tmp_path, pipeline):
    if pipeline == "imagenet":   # 4 classes x 7 images in batches of 9
        data = write_tiny_imagenet(tmp_path / "data", train=7)
        flags = ["--dataset", "imagenet", "--data-root", data, "--epochs", 1, "--batch-size", 9,
                 "--image-size", 32, "--device", "cpu", "--workers", 1]
    else:   # 100 images in batches of 33
        data = write_tiny_dataset(tmp_path / "data", train=10, test=2)
        extra = ["--data-pipeline", "pil", "--workers", 1] if pipeline == "pil" else ["--freeze-backbone"]
        flags = [*common_args(data, batch_size=33), *extra]
    proc = torchrun("train_new_model.py", *flags, "--output-dir", tmp_path / "run", "--save", tmp_path / "new.pth",
                    cwd=tmp_path, processes=3)
    assert_ok(proc)
    assert [r["dropped"] for r in finite_epochs(tmp_path / "run")] == [1]
