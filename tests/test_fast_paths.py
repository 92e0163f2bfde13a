"""Every fast path of the GPU runs here on the CPU, end to end for one epoch, and agrees with the
plain fp32 path: bf16 autocast, channels-last, BatchNorm-folded teachers, the vmapped ELODI
ensemble, torch.compile. (The device-resident loader is the default data path of every test;
tests/utils/test_batches.py checks it against torchvision's transforms.) Scoring is plain fp32 in
every mode, so the old model's predictions and logits never change."""
import json
import shutil

import numpy as np
import pytest
import torch

import utils.cifar
import utils.engine
import utils.runner
from conftest import NUM_CLASSES, NUM_OLD, common_args, run_inline
from models import build_model
from utils.checkpoint import atomic_save, model_checkpoint

pytestmark = pytest.mark.slow  # every test trains or compiles a model

# One epoch (five steps) at lr 1e-4 from the same weights on the same batches. The epoch's mean
# training loss is the sharp check: a path that only rounds differently moves it by less than
# LOSS_TOL (measured: 4e-5 for folded teachers, 1e-3 for bf16), a wrong one (a teacher that is
# not the reference model) by the size of a loss term. The test logits come through eval-mode
# BatchNorm whose running statistics have seen five batches, which amplifies rounding: they
# agree to LOGIT_TOL of their scale (measured: 1% for folded teachers, 15% for bf16).
LR = 1e-4
LOSS_TOL = {"fp32": 1e-3, "bf16": 1e-2}
LOGIT_TOL = {"fp32": 0.03, "bf16": 0.25}


def train(tmp_path, name, data, old_ckpt, new_ckpt, *flags, method="MPT_KL") -> dict:
    """The run's predictions.npz arrays and its epoch's mean training loss ("loss")."""
    out = tmp_path / name
    run_inline("main.py", *common_args(data, lr=LR), "--method", method, "--old-ckpt", old_ckpt,
               "--new-ckpt", new_ckpt, "--output-dir", out, *flags)
    arrays = dict(np.load(out / "predictions.npz"))
    arrays["loss"] = json.loads((out / "log.jsonl").read_text())["loss"]
    return arrays


def write_reference(path, role: str, num_classes: int, seed: int):
    """A freshly initialised reference model: its eval-mode logits are of order one (the
    session's one-epoch references reach ~1e5, where every rounding difference is huge)."""
    torch.manual_seed(seed)
    model = build_model("resnet18", num_classes)
    atomic_save(model_checkpoint(model, arch="resnet18", num_classes=num_classes, embed_dim=None,
                                 dataset="cifar10", num_old=NUM_OLD, role=role, epoch=0, metrics={},
                                 config={}, inputs={"image_size": None, "normalization": "cifar"}), path)
    return path


@pytest.fixture(scope="module")
def old_ckpt(tmp_path_factory):
    return write_reference(tmp_path_factory.mktemp("refs") / "old.pth", "old", NUM_OLD, 1)


@pytest.fixture(scope="module")
def new_ckpt(tmp_path_factory):
    return write_reference(tmp_path_factory.mktemp("refs") / "new.pth", "new", NUM_CLASSES, 2)


@pytest.fixture(scope="module")
def plain(tiny_data, old_ckpt, new_ckpt, tmp_path_factory):
    return train(tmp_path_factory.mktemp("plain"), "run", tiny_data, old_ckpt, new_ckpt, "--precision", "fp32")


def assert_equal_as_stored(a, b):
    """Equal up to float32 rounding and one step of the stored dtype (float16 or float32)."""
    assert a.dtype == b.dtype
    step = np.spacing(np.maximum(np.abs(a), np.abs(b))).astype(np.float32)
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32))
    worst = np.argmax(diff - step)
    assert np.all(diff <= step + 1e-5 * np.abs(b.astype(np.float32))), \
        f"{a.flat[worst]} vs {b.flat[worst]} differ by more than one {a.dtype} step"


def assert_agrees(fast, plain, mode: str = "fp32"):
    assert np.array_equal(fast["old_pred"], plain["old_pred"])
    # Scored in plain fp32, unfolded, in every mode: equal up to float32 rounding (the CPU's conv
    # kernels may be chosen differently once a process has run bf16 ones), which the stored float16
    # can turn into one step of its own resolution (at 0.13 that step is 1.2e-4).
    assert_equal_as_stored(fast["old_logits"], plain["old_logits"])
    fast_logits, plain_logits = (a["logits"].astype(np.float32) for a in (fast, plain))
    diff, scale = np.abs(fast_logits - plain_logits).max(), 1 + np.abs(plain_logits).max()
    assert diff < LOGIT_TOL[mode] * scale, f"max |logit difference| {diff:.3g} >= {LOGIT_TOL[mode]} x {scale:.3g}"
    assert fast["loss"] == pytest.approx(plain["loss"], rel=LOSS_TOL[mode])


def test_bf16_trains_and_agrees(tiny_data, old_ckpt, new_ckpt, tmp_path):
    """No_Treatment: the student alone (bf16 teachers are the folded-teacher test's business)."""
    runs = {p: train(tmp_path, p, tiny_data, old_ckpt, new_ckpt, "--precision", p, method="No_Treatment")
            for p in ("fp32", "bf16")}
    assert_agrees(runs["bf16"], runs["fp32"], "bf16")
    assert not np.array_equal(runs["bf16"]["logits"], runs["fp32"]["logits"])  # autocast really ran


def test_folded_teachers_agree(plain, tiny_data, old_ckpt, new_ckpt, tmp_path, monkeypatch):
    folded = []
    real_fold = utils.engine.fold_batchnorm
    monkeypatch.setattr(utils.runner, "folds_teachers", lambda device, precision: True)
    monkeypatch.setattr(utils.engine, "fold_batchnorm", lambda m: folded.append(m) or real_fold(m))
    fast = train(tmp_path, "folded", tiny_data, old_ckpt, new_ckpt)
    assert len(folded) == 2  # both of MPT_KL's teachers, never the scored old model
    assert_agrees(fast, plain)


def test_channels_last_agrees(plain, tiny_data, old_ckpt, new_ckpt, tmp_path, monkeypatch):
    for module in (utils.runner, utils.engine, utils.cifar):
        monkeypatch.setattr(module, "prefers_channels_last", lambda device: True)
    fast = train(tmp_path, "channels_last", tiny_data, old_ckpt, new_ckpt)
    assert_agrees(fast, plain)


def test_batched_ensemble_agrees_with_the_member_loop(tiny_data, old_ckpt, new_ckpt, tmp_path, monkeypatch):
    members = tmp_path / "ensemble"
    members.mkdir()
    for i in range(2):
        shutil.copy(new_ckpt, members / f"ckpt_{i}.pth")
    flags = ("--ensemble-dir", members, "--ensemble-size", "2", "--elodi-warmup", "0")
    loop = train(tmp_path, "loop", tiny_data, old_ckpt, new_ckpt, *flags, method="ELODI")
    batched = []
    real = utils.engine.EnsembleMean
    monkeypatch.setattr(utils.runner, "folds_teachers", lambda device, precision: True)
    monkeypatch.setattr(utils.engine, "EnsembleMean",
                        lambda m, batched_=None, **kw: batched.append(kw) or real(m, **kw))
    fast = train(tmp_path, "batched", tiny_data, old_ckpt, new_ckpt, *flags, method="ELODI")
    assert batched == [{"batched": True}]
    assert_agrees(fast, loop)


def test_compile_trains_and_agrees(plain, tiny_data, old_ckpt, new_ckpt, tmp_path):
    fast = train(tmp_path, "compiled", tiny_data, old_ckpt, new_ckpt, "--compile")
    assert_agrees(fast, plain)
