"""Same-class updates (PCT's and ELODI's settings): --old-fraction 1.0 makes every class old, and
--old-data-fraction trains the old model on part of every class's training images."""
import json

import numpy as np
import pytest
import torch

import train_old_model
import utils.runner
from conftest import NUM_CLASSES, assert_ok, assert_user_error, common_args, run_inline, run_script
from utils.cli import parse
from utils.data import indices_digest, load_dataset, old_data_subset
from utils.metrics import flip_metrics


def test_flip_metrics_count_every_sample_when_every_class_is_old():
    targets = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    old_pred = np.array([0, 1, 2, 0, 0, 2, 2, 3])  # right on 6 of 8
    pred = np.array([0, 2, 2, 3, 1, 1, 0, 3])      # flips on samples 1, 4 and 6; fixes 3 and 5
    metrics = flip_metrics(targets, old_pred, pred, num_old=4)
    assert metrics["nfr"] == pytest.approx(100 * 3 / 8)
    assert metrics["pfr"] == pytest.approx(100 * 2 / 8)
    assert metrics["er_old"] == metrics["er_all"] == pytest.approx(100 * 3 / 8)
    assert metrics["rel_nfr"] == pytest.approx(100 * (3 / 8) / ((6 / 8) * (3 / 8)))


def test_old_data_subset_takes_the_fraction_of_every_class_by_split_seed():
    targets = torch.tensor([0] * 10 + [1] * 30 + [2] * 4)
    index = torch.arange(100, 100 + len(targets))  # indices into a larger training set
    chosen, record = old_data_subset(targets, index, 0.5, split_seed=7)
    assert torch.bincount(targets[chosen]).tolist() == [5, 15, 2]
    assert len(set(chosen.tolist())) == len(chosen)
    assert record == {"old_data_fraction": 0.5, "split_seed": 7, "subset_sha256": indices_digest(index[chosen])}
    again, _ = old_data_subset(targets, index, 0.5, split_seed=7)
    other, other_record = old_data_subset(targets, index, 0.5, split_seed=8)
    assert torch.equal(chosen, again) and not torch.equal(chosen, other)
    assert other_record["subset_sha256"] != record["subset_sha256"]
    everything, whole = old_data_subset(targets, index, 1.0, split_seed=7)
    assert torch.equal(everything, torch.arange(len(targets))) and whole == {"old_data_fraction": 1.0}


def image_keys(images: torch.Tensor) -> set:
    return {bytes(im.numpy().tobytes()) for im in images}


def test_old_data_and_validation_hold_outs_are_disjoint(tiny_data):
    """--val-fraction is chosen first, on the whole training set; the old model's share comes from
    the rest, so it never trains on a validation image, and the hash names its own images."""
    flags = common_args(tiny_data, val_fraction=0.25, old_fraction=1.0, old_data_fraction=0.5)
    args = parse(train_old_model.build_parser(), flags, section="old")
    data = utils.runner.load_data(args, "old")
    train, val = data.dataset.train, data.dataset.val
    assert data.num_old == data.head_size == NUM_CLASSES
    assert len(val) == NUM_CLASSES * 2 and len(train) == NUM_CLASSES * 3  # 8 a class: 2 held out, 3 of 6
    assert torch.bincount(train.targets).tolist() == [3] * NUM_CLASSES
    assert not image_keys(train.images) & image_keys(val.images)
    full = load_dataset("cifar10", tiny_data).train
    where = {bytes(im.numpy().tobytes()): i for i, im in enumerate(full.images)}
    indices = torch.tensor([where[bytes(im.numpy().tobytes())] for im in train.images])
    assert data.old_data == {"old_data_fraction": 0.5, "split_seed": 42, "subset_sha256": indices_digest(indices)}
    # The new models of the experiment train on everything but the validation images.
    new_args = parse(train_old_model.build_parser(), flags[:-2] + ["--old-data-fraction", "1"], section="old")
    assert len(utils.runner.load_data(new_args, "new").dataset.train) == NUM_CLASSES * 6


@pytest.mark.parametrize("fraction", ["0", "1.5", "nan"])
def test_old_data_fraction_out_of_range_is_refused(tiny_data, call_script, fraction):
    result = call_script("train_old_model.py", *common_args(tiny_data), "--old-data-fraction", fraction)
    assert_user_error(result, "--old-data-fraction", "(0, 1]")


@pytest.mark.parametrize("method, equivalent", [("MPT_KL", "MPT_KL_nobias"), ("MPT_LM", "MPT_LM_nobias"),
                                                ("MPT_nodistillation", "No_Treatment")])
def test_methods_acting_on_new_classes_only_are_refused_without_new_classes(tiny_data, tmp_path, call_script,
                                                                            method, equivalent):
    result = call_script("main.py", *common_args(tiny_data, old_fraction=1.0), "--method", method,
                         "--old-ckpt", tmp_path / "missing.pth", "--output-dir", tmp_path / "run")
    assert_user_error(result, method, f"--method {equivalent}", "--old-fraction 1.0")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def data_growth(tiny_data, tmp_path_factory):
    """An old ResNet-18 on half of every class's images and a new ResNet-50 reference on all."""
    root = tmp_path_factory.mktemp("growth")
    shared = common_args(tiny_data, old_fraction=1.0)
    assert_ok(run_script("train_old_model.py", *shared, "--old-data-fraction", "0.5", "--lr", "0.01",
                         "--output-dir", root / "old", "--save", root / "old.pth"))
    assert_ok(run_script("train_new_model.py", *shared, "--arch", "resnet50", "--lr", "0.01",
                         "--output-dir", root / "new", "--save", root / "new.pth"))
    return root, shared


@pytest.mark.slow
def test_old_model_records_its_share_of_the_images(data_growth):
    root, _ = data_growth
    results = json.loads((root / "old" / "results.json").read_text())
    assert results["train_size"] == NUM_CLASSES * 4  # 8 training images a class, half of them
    assert results["num_old"] == results["num_classes"] == NUM_CLASSES
    assert results["old_data"]["old_data_fraction"] == 0.5 and results["old_data"]["split_seed"] == 42
    assert results["setting"] == {"old_fraction": 1.0, "arch": "resnet18", "old_arch": "resnet18",
                                  "old_data_fraction": 0.5}
    ckpt = torch.load(root / "old.pth", weights_only=False)
    assert ckpt["old_data"] == results["old_data"] and ckpt["num_old_classes"] == NUM_CLASSES
    assert json.loads((root / "new" / "results.json").read_text())["train_size"] == NUM_CLASSES * 8


@pytest.mark.slow
@pytest.mark.parametrize("method", ["PCT_KL", "MPT_KL_nobias"])
def test_updates_on_the_same_classes_score_every_sample(data_growth, method):
    """An architecture upgrade with data growth: the ResNet-18 old model (half the images) is
    rebuilt from its checkpoint, the ResNet-50 updated model distils from it and the ResNet-50
    reference; its metrics, recomputed from predictions.npz, count every test sample."""
    root, shared = data_growth
    out = root / method
    run_inline("main.py", *shared, "--arch", "resnet50", "--lr", "0.01", "--method", method,
               "--old-ckpt", root / "old.pth", "--new-ckpt", root / "new.pth", "--output-dir", out)
    results = json.loads((out / "results.json").read_text())
    saved = np.load(out / "predictions.npz")
    assert int(saved["num_old"]) == NUM_CLASSES and len(saved["targets"]) == NUM_CLASSES * 4
    recomputed = flip_metrics(saved["targets"], saved["old_pred"], saved["pred"], NUM_CLASSES)
    for name, value in recomputed.items():
        assert results[name] == pytest.approx(value, nan_ok=True), name
    flipped = (saved["old_pred"] == saved["targets"]) & (saved["pred"] != saved["targets"])
    assert results["nfr"] == pytest.approx(100 * flipped.mean())  # over all 40 samples, not half
    assert results["er_old"] == results["er_all"]
    assert results["setting"] == {"old_fraction": 1.0, "arch": "resnet50", "old_arch": "resnet18",
                                  "old_data_fraction": 0.5}


def test_a_class_incremental_old_model_is_refused_for_a_same_class_update(tiny_data, old_ckpt, tmp_path,
                                                                          call_script):
    result = call_script("main.py", *common_args(tiny_data, old_fraction=1.0), "--method", "PCT_KL",
                         "--old-ckpt", old_ckpt, "--output-dir", tmp_path / "run")
    assert_user_error(result, "trained with 5 old classes", "uses 10", "--old-fraction")
    assert not (tmp_path / "run").exists()
