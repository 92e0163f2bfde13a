"""--dataset imagenet: JPEG folders through DataLoaders, the ImageNet recipe's defaults, and the
three scripts end to end on a few-class folder."""
import argparse
import json

import pytest
import torch

import main
from conftest import run_inline
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
    assert (a.weight_decay, a.lr_schedule, a.epochs, a.embed_dim, a.b, a.image_size) == (5e-4, "cosine", 100, None, 4.0, None)
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
