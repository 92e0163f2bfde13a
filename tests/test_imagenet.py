"""--dataset imagenet: JPEG folders through DataLoaders, the ImageNet recipe's defaults, the
three scripts end to end on a few-class folder, and per-sample augmentation: the same metrics
for any --workers and after a resume."""
import argparse
import json

import pytest
import torch

import main
from conftest import (
    agreement,
    assert_ok,
    augmented_by_index,
    kill_after_first_epoch,
    run_inline,
    run_script,
    script_command,
    script_env,
    write_tiny_imagenet,
)
from utils.checkpoint import read_checkpoint
from utils.cli import parse, take_method_flags
from utils.data import load_dataset


def parsed(*argv, config=None):
    """main.py's settings (imagenet sets the default of its --b too)."""
    args = parse(main.build_parser(), [*argv, *(["--config", config] if config else [])], section="update")
    take_method_flags(args)
    return args


def test_imagenet_recipe_defaults_apply_only_where_no_flag_is_given(tmp_path):
    a = parsed("--dataset", "imagenet")
    assert (a.lr, a.momentum, a.weight_decay, a.lr_schedule, a.epochs, a.batch_size, a.embed_dim, a.b,
            a.image_size) == (0.1, 0.9, 1e-4, "step", 90, 128, 128, 1.5, 224)
    a = parsed("--dataset", "imagenet", "--lr-schedule", "cosine", "--epochs", "3", "--b", "2")
    assert (a.lr_schedule, a.epochs, a.b) == ("cosine", 3, 2.0)
    config = tmp_path / "c.yaml"
    config.write_text("dataset: imagenet\nweight_decay: 0.0005\n")
    a = parsed(config=str(config))  # a config beats the data set's defaults, which still apply
    assert (a.weight_decay, a.lr_schedule) == (0.0005, "step")
    a = parsed()  # CIFAR keeps the official recipe
    assert ((a.weight_decay, a.lr_schedule, a.epochs, a.embed_dim, a.b, a.image_size)
            == (5e-4, "cosine", 100, None, 4.0, None))
    assert parsed("--arch", "vit_b_32").image_size == 224
    assert "b" not in vars(parsed("--dataset", "imagenet", "--method", "PCT_KL"))  # a b only for MPT


def test_folder_loaders_shard_the_splits_and_keep_the_old_classes(tiny_imagenet):
    data = load_dataset("imagenet", tiny_imagenet)
    assert data.num_classes == 4 and data.classes == sorted(data.classes)
    old = data.classes_below(2)
    assert old.train.targets.unique().tolist() == [0, 1] and len(old.train) == 12
    args = argparse.Namespace(image_size=32, batch_size=4, seed=0, workers=0, eval_batch_size=3)
    shards = [old.inputs(args, torch.device("cpu"), rank, 2) for rank in (0, 1)]
    for rank, inputs in enumerate(shards):
        x, y = next(iter(inputs.train_loader))
        assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and len(inputs.train_loader) == 3
        test_targets = torch.cat([t for _, t in inputs.eval_batches("test")])
        assert test_targets.tolist() == old.test.targets[rank::2].tolist()  # strided shard, in order
    assert torch.equal(shards[0].targets["test"], old.test.targets)


def test_each_process_gets_its_share_of_the_one_process_batches_with_the_same_crops(tiny_imagenet):
    """24 images in batches of 9 over 3 processes (the last 6 shared 2 each): each process gets
    rows r, r + 3, ... of every global batch, each image cropped and flipped as in one process
    (from its own seed, not from a random stream of its process or loader worker)."""
    data = load_dataset("imagenet", tiny_imagenet)
    args = argparse.Namespace(image_size=32, batch_size=9, seed=0, workers=0, eval_batch_size=8)

    def epoch(rank, world):
        loader = data.inputs(args, torch.device("cpu"), rank, world).train_loader
        loader.set_epoch(1)
        return list(loader)

    single = epoch(0, 1)
    assert [len(y) for _, y in single] == [9, 9, 6]
    shards = [epoch(rank, 3) for rank in range(3)]
    for rank, shard in enumerate(shards):
        assert len(shard) == 3
        for (x, y), (xs, ys) in zip(single, shard):
            assert torch.equal(ys, y[rank::3]) and torch.equal(xs, x[rank::3])


def test_crops_and_flips_change_with_the_epoch_and_the_seed_and_repeat_for_any_workers(tmp_path):
    """100 training images through RandomResizedCrop + flip: no image is cropped alike in two
    epochs or under two seeds (a seed that loses its epoch or its run seed repeats them all),
    and every image alike with and without loader workers."""
    data = load_dataset("imagenet", write_tiny_imagenet(tmp_path / "data", num_classes=4, train=25, val=1))

    def crops(seed, epoch, workers=0):
        args = argparse.Namespace(image_size=32, batch_size=25, seed=seed, workers=workers, eval_batch_size=8)
        return augmented_by_index(data.inputs(args, torch.device("cpu")).train_loader, epoch)

    seed42 = crops(42, 0)
    assert len(seed42) == 100
    assert agreement(seed42, crops(42, 1)) <= 0.05
    assert agreement(seed42, crops(43, 0)) <= 0.05
    assert agreement(seed42, crops(42, 0, workers=2)) == 1


@pytest.mark.slow
def test_three_scripts_on_an_imagenet_folder(tiny_imagenet, tmp_path):
    common = ["--dataset", "imagenet", "--data-root", tiny_imagenet, "--epochs", 1, "--batch-size", 4,
              "--image-size", 32, "--workers", 0, "--device", "cpu"]
    run_inline("train_old_model.py", *common, "--output-dir", tmp_path / "old", "--save", tmp_path / "old.pth")
    run_inline("train_new_model.py", *common, "--output-dir", tmp_path / "new", "--save", tmp_path / "new.pth")
    run_inline("main.py", *common, "--method", "MPT_KL", "--old-ckpt", tmp_path / "old.pth",
               "--new-ckpt", tmp_path / "new.pth", "--output-dir", tmp_path / "update")
    old = read_checkpoint(tmp_path / "old.pth")
    assert (old["num_classes"], old["embed_dim"]) == (2, 128)  # classes from the folder, the 128-d embedding
    assert old["inputs"] == {"image_size": 32, "normalization": "imagenet"}
    results = json.loads((tmp_path / "update" / "results.json").read_text())
    assert {"nfr", "rel_nfr", "er_old", "er_all"} <= set(results)
    assert (results["config"]["b"], results["config"]["lr_schedule"]) == (1.5, "step")


def test_missing_val_folder_is_a_user_error(tmp_path):
    (tmp_path / "train" / "n0").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        run_inline("train_old_model.py", "--dataset", "imagenet", "--data-root", tmp_path, "--device", "cpu",
                   "--output-dir", tmp_path / "out")
    assert exit_info.value.code == 2


def imagenet_flags(data_root, workers: int) -> list:
    return ["--dataset", "imagenet", "--data-root", data_root, "--epochs", 2, "--batch-size", 4,
            "--image-size", 32, "--workers", workers, "--device", "cpu"]


def run_outcome(run_dir):
    """What a run computed: its results and epoch records without paths, the command as typed and
    wall-clock times."""
    results = json.loads((run_dir / "results.json").read_text())
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return ({k: v for k, v in results.items() if k not in ("checkpoint", "config", "command")},
            [{k: v for k, v in r.items() if k != "seconds"} for r in records])


@pytest.mark.slow
def test_imagenet_metrics_do_not_depend_on_the_loader_workers(tiny_imagenet, tmp_path):
    """Each sample's crop and flip come from (seed, epoch, index), not from the worker that
    decodes it (workers take their seeds from the DataLoader, one stream per worker)."""
    for workers in (0, 2):
        run_inline("train_old_model.py", *imagenet_flags(tiny_imagenet, workers), "--output-dir",
                   tmp_path / f"w{workers}", "--save", tmp_path / f"w{workers}.pth")
    assert run_outcome(tmp_path / "w0") == run_outcome(tmp_path / "w2")


@pytest.mark.slow
def test_imagenet_run_killed_after_an_epoch_and_resumed_equals_the_uninterrupted_run(tiny_imagenet, tmp_path):
    """With loader workers, whose random streams a resumed run would start afresh."""
    flags = imagenet_flags(tiny_imagenet, workers=2)
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert_ok(run_script("train_old_model.py", *flags, "--output-dir", reference, "--save", reference / "old.pth"))
    kill_after_first_epoch(script_command("train_old_model.py", *flags, "--output-dir", run_dir,
                                          "--save", run_dir / "old.pth"), run_dir, script_env())
    resumed = run_script("train_old_model.py", *flags, "--output-dir", run_dir, "--save", run_dir / "old.pth",
                         "--resume")
    assert_ok(resumed)
    assert "epoch 1/2" not in resumed.stdout   # it continued from the saved epoch
    assert run_outcome(run_dir) == run_outcome(reference)
