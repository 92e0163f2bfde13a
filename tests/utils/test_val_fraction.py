"""--val-fraction: a stratified hold-out of the training set, scored every epoch like the test set."""
import json

import pytest

import utils.data
from conftest import NUM_OLD, common_args, run_inline
from utils.data import load_dataset


def test_old_model_trains_on_the_rest_and_reports_val(tiny_data, tmp_path, monkeypatch):
    seen = []

    class Recording(utils.data.TrainLoader):
        def __init__(self, data, *args, **kwargs):
            seen.append(len(data))
            super().__init__(data, *args, **kwargs)

    monkeypatch.setattr(utils.data, "TrainLoader", Recording)
    out = tmp_path / "run"
    run_inline("train_old_model.py", *common_args(tiny_data, val_fraction=0.25, precision="fp32"),
               "--output-dir", out, "--save", tmp_path / "old.pth")
    assert seen == [NUM_OLD * 6]  # 8 images per old class, 2 of them held out
    results = json.loads((out / "results.json").read_text())
    assert set(results["val"]) == {"er_old"} and 0 <= results["val"]["er_old"] <= 100
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert record["metrics"]["val"] == results["val"]


def test_old_and_updated_models_hold_out_the_same_old_class_images(tiny_data):
    """With the same --seed the old model never trains on the updated model's validation images
    of the old classes, so the validation NFR is measured on images neither has seen."""
    full = load_dataset("cifar10", tiny_data).holdout(0.25, seed=42).val
    old = load_dataset("cifar10", tiny_data).classes_below(NUM_OLD).holdout(0.25, seed=42).val
    assert (full.images[full.targets < NUM_OLD] == old.images).all()


@pytest.mark.parametrize("fraction", ["1", "-0.1", "nan"])
def test_fraction_outside_0_1_is_refused(call_script, tiny_data, fraction):
    result = call_script("train_new_model.py", *common_args(tiny_data), "--val-fraction", fraction)
    assert result.returncode == 2 and "--val-fraction must lie in [0, 1)" in result.stderr
