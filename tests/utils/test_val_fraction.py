"""--val-fraction: a stratified hold-out of the training set, scored every epoch like the test set."""
import json
import shutil

import pytest
import torch

import utils.cifar
import utils.runner
from conftest import NUM_OLD, assert_user_error, common_args, error_of, run_inline
from utils.data import load_dataset, validation_split


@pytest.mark.slow
def test_old_model_trains_on_the_rest_and_reports_val(tiny_data, tmp_path, monkeypatch):
    seen = []

    class Recording(utils.cifar.TrainLoader):
        def __init__(self, data, *args, **kwargs):
            seen.append(len(data))
            super().__init__(data, *args, **kwargs)

    monkeypatch.setattr(utils.cifar, "TrainLoader", Recording)
    out = tmp_path / "run"
    run_inline("train_old_model.py", *common_args(tiny_data, val_fraction=0.25, precision="fp32"),
               "--output-dir", out, "--save", tmp_path / "old.pth")
    assert seen == [NUM_OLD * 6]  # 8 images per old class, 2 of them held out
    results = json.loads((out / "results.json").read_text())
    assert set(results["val"]) == {"er_old"}
    data = load_dataset("cifar10", tiny_data)  # the held-out old-class images, scored here again
    val = data.holdout(validation_split(data.train.targets, 0.25, split_seed=42)[0]).classes_below(NUM_OLD).val
    expected = error_of(tmp_path / "old.pth", "old", NUM_OLD, val.images, val.targets)
    assert results["val"]["er_old"] == pytest.approx(expected)
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert record["metrics"]["val"] == results["val"]


def test_old_and_updated_models_hold_out_the_same_old_class_images(tiny_data):
    """The split is chosen on the whole training set, with --split-seed, before the old model's
    classes are taken: the old model never trains on the updated model's validation images of
    the old classes, so the validation NFR is measured on images neither has seen."""
    data = load_dataset("cifar10", tiny_data)
    held, record = validation_split(data.train.targets, 0.25, split_seed=42)
    full = data.holdout(held).val
    old = data.holdout(held).classes_below(NUM_OLD).val
    assert (full.images[full.targets < NUM_OLD] == old.images).all()
    assert len(held) == 10 * 2 and record["val_fraction"] == 0.25 and record["split_seed"] == 42


def test_validation_split_is_disjoint_from_training_by_index():
    """Every training image carries its own index in its pixels: after the hold-out, the training
    and validation splits hold disjoint indices that together are the whole training set, the
    validation split exactly the held-out ones, the same share of every class."""
    from utils.inputs import Dataset, ImageSet

    n, classes = 200, 4
    index = torch.arange(n)
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = index % 256, index // 256
    targets = torch.arange(n) % classes
    data = Dataset("tagged", list("abcd"), ImageSet(images, targets), ImageSet(images[:1], targets[:1]))
    held, _ = validation_split(targets, 0.1, split_seed=5)
    split = data.holdout(held)

    def indices(part):
        return (part.images[:, 0, 0, 0].long() + 256 * part.images[:, 0, 0, 1].long()).tolist()

    train, val = indices(split.train), indices(split.val)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(n))
    assert sorted(val) == sorted(held.tolist())
    assert torch.equal(split.val.targets, targets[held]) and torch.equal(split.train.targets, targets[train])
    assert torch.bincount(split.val.targets).tolist() == [5] * classes  # 10 % of each class's 50


def test_split_depends_on_the_split_seed_only(tiny_data):
    """The same --split-seed gives the same held-out images (and record) for every training
    --seed; another --split-seed another split, with another hash."""
    import main
    from utils.cli import parse

    def split(*flags):
        args = parse(main.build_parser(), [*common_args(tiny_data, val_fraction=0.25), *flags], section="update")
        return utils.runner.load_data(args, "update")

    a, b, c = split("--seed", "1"), split("--seed", "7"), split("--split-seed", "3")
    assert a.holdout == b.holdout and torch.equal(a.dataset.val.images, b.dataset.val.images)
    assert c.holdout["split_seed"] == 3 and c.holdout["heldout_sha256"] != a.holdout["heldout_sha256"]
    assert not torch.equal(a.dataset.val.images, c.dataset.val.images)


@pytest.mark.parametrize("fraction", ["1", "-0.1", "nan"])
def test_fraction_outside_0_1_is_refused(call_script, tiny_data, fraction):
    result = call_script("train_new_model.py", *common_args(tiny_data), "--val-fraction", fraction)
    assert result.returncode == 2 and "--val-fraction must lie in [0, 1)" in result.stderr


# --- the reference models of a --val-fraction run must hold out the same images ----------------

@pytest.fixture(scope="module")
def split_refs(tiny_data, tmp_path_factory):
    """Reference models trained with --val-fraction 0.1: old and new with the default
    --split-seed 42, and a new one with --split-seed 3."""
    folder = tmp_path_factory.mktemp("split-refs")

    def train(script, name, *flags):
        run_inline(script, *common_args(tiny_data, val_fraction=0.1), *flags,
                   "--save", folder / f"{name}.pth", "--output-dir", folder / name)
        return folder / f"{name}.pth"

    return {"old": train("train_old_model.py", "old"), "new": train("train_new_model.py", "new"),
            "new_split3": train("train_new_model.py", "new_split3", "--split-seed", 3)}


def update(call_script, tiny_data, out, old, new, *flags):
    return call_script("main.py", *common_args(tiny_data, val_fraction=0.1), "--old-ckpt", old,
                       "--new-ckpt", new, "--output-dir", out, *flags)


@pytest.mark.parametrize("full_set", ["old", "new"])
def test_references_trained_on_the_whole_training_set_are_refused(call_script, tiny_data, old_ckpt, new_ckpt,
                                                                   split_refs, tmp_path, full_set):
    """They trained on this run's validation images: its validation metrics would mean nothing."""
    refs = {"old": split_refs["old"], "new": split_refs["new"], full_set: {"old": old_ckpt, "new": new_ckpt}[full_set]}
    out = tmp_path / "run"
    result = update(call_script, tiny_data, out, refs["old"], refs["new"])
    line = assert_user_error(result, str(refs[full_set]), "trained on the whole training set",
                             "--val-fraction 0.1 --split-seed 42")
    assert result.stderr.strip() == line
    assert not out.exists()


@pytest.mark.slow
def test_references_of_another_split_are_refused(call_script, tiny_data, split_refs, tmp_path):
    out = tmp_path / "run"
    result = update(call_script, tiny_data, out, split_refs["old"], split_refs["new_split3"])
    assert_user_error(result, str(split_refs["new_split3"]), "another split",
                      "--val-fraction 0.1 --split-seed 3", "--val-fraction 0.1 --split-seed 42")
    assert not out.exists()


@pytest.mark.slow
def test_references_of_the_same_split_serve_every_training_seed(call_script, tiny_data, split_refs, tmp_path):
    """The split is --split-seed's, not --seed's: an update with another training seed uses the
    same references, and reports its validation metrics."""
    from utils.checkpoint import read_checkpoint

    out = tmp_path / "run"
    result = update(call_script, tiny_data, out, split_refs["old"], split_refs["new"], "--seed", 7)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["seed"] == 7
    assert {"nfr", "er_old", "er_all"} <= set(results["val"])
    assert results["split"] == read_checkpoint(split_refs["new"])["split"]
    assert results["split"]["val_fraction"] == 0.1 and results["split"]["split_seed"] == 42
    assert read_checkpoint(out / "checkpoint.pth")["split"] == results["split"]


def test_ensemble_members_trained_on_the_whole_training_set_are_refused(call_script, tiny_data, new_ckpt,
                                                                        split_refs, tmp_path):
    members = tmp_path / "ensemble"
    members.mkdir()
    for i in range(2):
        shutil.copy(new_ckpt, members / f"ckpt_{i}.pth")
    out = tmp_path / "run"
    result = update(call_script, tiny_data, out, split_refs["old"], split_refs["new"], "--method", "ELODI",
                    "--ensemble-dir", members, "--ensemble-size", 2)
    assert_user_error(result, str(members / "ckpt_0.pth"), "trained on the whole training set")
    assert not out.exists()
