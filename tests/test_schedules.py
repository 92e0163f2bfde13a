"""What a run trains with, from its own records: the learning rate of every epoch (cosine over
--epochs, x0.1 steps), a frozen backbone that neither learns nor decays, a class split other than
half, and the flags of another method (ignored out loud)."""
import json
import math

import numpy as np
import pytest
import torch

import utils.runner
from conftest import common_args, run_inline, run_script
from models import build_model
from utils.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # every test here trains


def logged_lrs(run_dir):
    return [json.loads(line)["lr"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def frozen_run(data, out, *flags, epochs):
    """An old model's head on a frozen random backbone: a real run whose epochs take milliseconds."""
    run_inline("train_old_model.py", *common_args(data, epochs=epochs), "--freeze-backbone", *flags,
               "--output-dir", out, "--save", out / "old.pth")
    return out


def test_cosine_schedule_logs_the_lr_each_epoch_trained_with(tiny_data, tmp_path):
    epochs = 5
    out = frozen_run(tiny_data, tmp_path / "cosine", "--lr", 0.05, epochs=epochs)
    expected = [0.05 * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    lrs = logged_lrs(out)
    assert lrs[0] == 0.05  # the first epoch trains at --lr, not at the next epoch's rate
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lrs[-1] > 0  # annealed over --epochs: zero would come only after the last epoch


def test_step_schedule_logs_each_step_where_it_happens(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(utils.runner, "LR_STEP_EPOCHS", 2)  # the ImageNet recipe's 30, shortened
    out = frozen_run(tiny_data, tmp_path / "step", "--lr-schedule", "step", epochs=5)
    assert logged_lrs(out) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001], rel=1e-12)


def test_frozen_backbone_neither_learns_nor_decays(tiny_data, tmp_path):
    """A large weight decay would shrink every backbone weight it reached; the frozen backbone
    leaves the run exactly as it was drawn, and the optimizer holds the head alone."""
    out = frozen_run(tiny_data, tmp_path / "frozen", "--weight-decay", 0.5, epochs=2)
    saved = read_checkpoint(out / "old.pth")["model"]
    torch.manual_seed(utils.runner.FROZEN_BACKBONE_SEED)  # as build_model draws the frozen backbone
    drawn = build_model("resnet18", 5).state_dict()
    backbone = [k for k in drawn if k.startswith("backbone.")]
    assert backbone and all(torch.equal(saved[k], drawn[k]) for k in backbone)
    assert not torch.equal(saved["fc.weight"], drawn["fc.weight"])  # the head trained
    state = torch.load(out / "state.pth", weights_only=False)
    (group,) = state["optimizer"]["param_groups"]
    assert group["weight_decay"] == 0.5 and len(group["params"]) == 2  # fc.weight, fc.bias


def test_a_run_with_another_old_fraction(tiny_data, tmp_path):
    """--old-fraction 0.3 of 10 classes: the old model has 3 outputs, the update's flips are
    counted on classes 0-2, and every file says so."""
    old = tmp_path / "old"
    run_inline("train_old_model.py", *common_args(tiny_data), "--old-fraction", 0.3, "--output-dir", old,
               "--save", old / "ckpt.pth")
    assert read_checkpoint(old / "ckpt.pth")["num_classes"] == 3
    out = tmp_path / "update"
    run_inline("main.py", *common_args(tiny_data), "--old-fraction", 0.3, "--method", "PCT_KL",
               "--old-ckpt", old / "ckpt.pth", "--output-dir", out)
    results = json.loads((out / "results.json").read_text())
    saved = np.load(out / "predictions.npz")
    assert results["num_old"] == int(saved["num_old"]) == 3 and saved["old_logits"].shape == (40, 3)
    y, old_pred, pred = saved["targets"], saved["old_pred"], saved["pred"]
    on_old = y < 3
    assert on_old.sum() == 12 and old_pred.max() < 3  # 4 test images per class
    flips = (old_pred[on_old] == y[on_old]) & (pred[on_old] != y[on_old])
    assert results["nfr"] == pytest.approx(100 * np.mean(flips))
    assert results["er_old"] == pytest.approx(100 * np.mean(pred[on_old] != y[on_old]))


def test_flags_of_another_method_warn_and_change_no_folder(tiny_data, old_ckpt, tmp_path):
    """main.py --method PCT_KL --b 2 runs as main.py --method PCT_KL: the same default folder,
    without -b in its name; one warning line names --b, and results.json records it."""
    args = [*common_args(tiny_data), "--method", "PCT_KL", "--old-ckpt", old_ckpt]
    with_b = run_script("main.py", *args, "--b", "2", cwd=tmp_path)
    assert with_b.returncode == 0, with_b.stderr
    warnings = [line for line in with_b.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--b" in warnings[0] and "PCT_KL" in warnings[0]
    (folder,) = (tmp_path / "runs" / "update").iterdir()
    assert folder.name.rsplit("-", 1)[0] == "cifar10-resnet18-PCT_KL-seed42"  # no -b2, no -b4
    results = json.loads((folder / "results.json").read_text())
    assert results["ignored_flags"] == {"--b": 2.0} and "b" not in results["config"]
    plain = run_script("main.py", *args, "--resume", cwd=tmp_path)  # the same run: resumable, nothing to do
    assert plain.returncode == 0, plain.stderr
    assert [p.name for p in (tmp_path / "runs" / "update").iterdir()] == [folder.name]
    assert "warning:" not in plain.stderr
