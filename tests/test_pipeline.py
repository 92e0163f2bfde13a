"""End to end: old -> new -> every method for one epoch on the tiny data set (ELODI with a
2-member ensemble), checking each run's files against each other and the metric definitions."""
import json

import numpy as np
import pytest
import torch

from conftest import GENTLE, NUM_OLD, common_args, error_of, run_inline, write_cifar_pickles
from methods import method_names
from utils.data import load_dataset

pytestmark = pytest.mark.slow  # every test trains end to end


@pytest.mark.parametrize("method", method_names())
def test_every_method_runs_and_its_files_agree(method, tiny_data, gentle_refs, tmp_path):
    old_ckpt, new_ckpt, ensemble_dir = gentle_refs
    out = tmp_path / "run"
    run_inline("main.py", *common_args(tiny_data), "--method", method, "--b", 2.0,
               "--old-ckpt", old_ckpt, "--new-ckpt", new_ckpt, "--ensemble-dir", ensemble_dir,
               "--ensemble-size", 2, "--elodi-warmup", 0, *GENTLE, "--output-dir", out)

    results = json.loads((out / "results.json").read_text())
    assert results["config"]["method"] == method
    assert results["environment"]["torch"] == torch.__version__
    pred = np.load(out / "predictions.npz")
    y, old_pred, new_pred = pred["targets"], pred["old_pred"], pred["pred"]
    assert y.dtype.kind == old_pred.dtype.kind == new_pred.dtype.kind == "i"
    assert len(y) == len(old_pred) == len(new_pred) == 40

    # The metrics, recomputed from the predictions by their definitions.
    old = y < NUM_OLD
    nfr = 100 * np.mean((old_pred[old] == y[old]) & (new_pred[old] != y[old]))
    er_old = 100 * np.mean(new_pred[old] != y[old])
    er_old_model = 100 * np.mean(old_pred[old] != y[old])
    assert results["nfr"] == pytest.approx(nfr)
    assert results["er_old"] == pytest.approx(er_old)
    assert results["er_all"] == pytest.approx(100 * np.mean(new_pred != y))
    denominator = (1 - er_old_model / 100) * er_old / 100
    if denominator > 0:
        assert results["rel_nfr"] == pytest.approx(100 * nfr / 100 / denominator)
    else:
        assert np.isnan(results["rel_nfr"])

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0]
    assert np.isfinite(log[0]["loss"])
    assert (out / "checkpoint.pth").is_file()


def test_distinct_runs_get_distinct_default_folders(tiny_data, old_ckpt, new_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for b in (1.0, 2.0):
        run_inline("main.py", *common_args(tiny_data), "--method", "MPT_nodistillation", "--b", b,
                   "--old-ckpt", old_ckpt, "--new-ckpt", new_ckpt)
    folders = sorted(p.parent.name for p in tmp_path.glob("runs/update/*/results.json"))
    assert len(folders) == 2 and "b1-" in folders[0] and "b2-" in folders[1]


def test_scripts_read_torchvision_pickles_offline(tmp_path):
    """A --data-root with torchvision's cifar-10-batches-py files (here generated, so no checksum
    matches) trains without a download attempt."""
    write_cifar_pickles(tmp_path / "data", "cifar10", train_batches=2, per_batch=40, test=20)
    metrics = run_inline("train_old_model.py", *common_args(tmp_path / "data"), "--output-dir", tmp_path / "old",
                         "--save", tmp_path / "old.pth")
    results = json.loads((tmp_path / "old" / "results.json").read_text())
    test = load_dataset("cifar10", tmp_path / "data").test.classes_below(NUM_OLD)  # the same pickles, read again
    expected = error_of(tmp_path / "old.pth", "old", NUM_OLD, test.images, test.targets)
    assert results["er_old"] == metrics["er_old"] == pytest.approx(expected)


# --- what a mitigation trains with, and what is scored -----------------------------------------

EVAL_BATCH = 8   # the tiny test set (40 images) is scored in 5 batches


def watched_run(tiny_data, refs, out, method, *flags):
    """main.py for ``method`` in this process, recording for each training step the teacher
    logits the run computed (``Teachers.__call__``'s keys: "old", "new") and counting the forward
    passes of each reference model by role ("old", "new", "ensemble"), scoring included.
    Returns (steps, forwards)."""
    import collections

    import utils.engine
    import utils.runner

    old_ckpt, new_ckpt, ensemble_dir = refs
    steps, forwards = [], collections.Counter()
    real_call, real_load = utils.engine.Teachers.__call__, utils.runner.load_model

    def call(self, x, *args, **kwargs):
        out = real_call(self, x, *args, **kwargs)
        steps.append(frozenset(k.removesuffix("_logits") for k in out))
        return out

    def load(path, role, *args, **kwargs):
        model, ckpt = real_load(path, role, *args, **kwargs)
        model.register_forward_hook(lambda *_: forwards.update([role]))
        return model, ckpt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(utils.engine.Teachers, "__call__", call)
        patch.setattr(utils.runner, "load_model", load)
        run_inline("main.py", *common_args(tiny_data), *GENTLE, "--method", method, "--old-ckpt", old_ckpt,
                   "--new-ckpt", new_ckpt, "--ensemble-dir", ensemble_dir, "--ensemble-size", 2,
                   "--eval-batch-size", EVAL_BATCH, "--output-dir", out, *flags)
    return steps, forwards


@pytest.fixture(scope="module")
def watched(tiny_data, gentle_refs, tmp_path_factory):
    """No_Treatment, PCT_KL and MPT_KL (with a huge margin bias, b = 50) for one epoch, same
    seed, watched by ``watched_run``: {method: (run folder, steps, forwards)}."""
    runs = {}
    for method in ("No_Treatment", "PCT_KL", "MPT_KL"):
        out = tmp_path_factory.mktemp(method) / "run"
        runs[method] = (out, *watched_run(tiny_data, gentle_refs, out, method, "--b", 50))
    return runs


@pytest.mark.parametrize("method, teachers", [
    ("No_Treatment", set()), ("PCT_KL", {"old"}), ("MPT_KL", {"old", "new"})])
def test_only_the_declared_teachers_run(watched, method, teachers):
    """The teachers a method does not declare are neither computed nor run: the old model runs
    for the training steps only where declared (else only to be scored, once per test batch), and
    the new reference model only where declared."""
    _, steps, forwards = watched[method]
    n = len(steps)  # Teachers is called once per training step, wanted or not
    assert n == 3 and all(s == teachers for s in steps)  # 80 training images, batches of 32 (GENTLE)
    scoring = 40 // EVAL_BATCH
    assert forwards["old"] == scoring + (n if "old" in teachers else 0)
    assert forwards["new"] == (n if "new" in teachers else 0)


def test_elodi_runs_no_teacher_during_its_warm_up(tiny_data, gentle_refs, tmp_path):
    """--elodi-warmup 1 over 2 epochs: epoch 0 computes no teacher logits, epoch 1 the old model's
    and the ensemble mean (each member once per step)."""
    steps, forwards = watched_run(tiny_data, gentle_refs, tmp_path / "run", "ELODI", "--epochs", 2,
                                  "--elodi-warmup", 1)
    n = len(steps) // 2
    assert len(steps) == 2 * n and n > 0
    assert steps[:n] == [frozenset()] * n
    assert steps[n:] == [frozenset({"old", "new"})] * n
    assert forwards["ensemble"] == 2 * n  # two members, epoch 1 only
    assert forwards["old"] == 40 // EVAL_BATCH + n
    assert forwards["new"] == 0  # ELODI's reference is the ensemble, not --new-ckpt


def test_mitigation_changes_the_trained_weights(watched):
    """The method's loss reaches the optimizer: MPT_KL and No_Treatment, same seed and data
    order, end with different weights (and the same architecture)."""
    from utils.checkpoint import read_checkpoint

    a = read_checkpoint(watched["No_Treatment"][0] / "checkpoint.pth")["model"]
    b = read_checkpoint(watched["MPT_KL"][0] / "checkpoint.pth")["model"]
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert "fc.weight" in differ and len(differ) > len(a) // 2


def tiny_test_set(root):
    """The tiny data set's test images, read with PIL in the data set's order (sorted class
    folders, sorted files), normalised by hand with CIFAR's statistics; (images, targets)."""
    from PIL import Image

    from utils.inputs import CIFAR_MEAN, CIFAR_STD

    images, targets = [], []
    for c, folder in enumerate(sorted(p for p in (root / "test").iterdir() if p.is_dir())):
        for f in sorted(folder.glob("*.png")):
            images.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0)
            targets.append(c)
    x = (np.stack(images) - np.array(CIFAR_MEAN, dtype=np.float32)) / np.array(CIFAR_STD, dtype=np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), np.array(targets)


def predict_from_checkpoint(path, role, num_classes, x):
    from utils.checkpoint import load_model

    model, _ = load_model(path, role, num_classes=num_classes, dataset="cifar10")
    with torch.no_grad():
        return model.eval()(x).numpy()


def test_final_metrics_recomputed_from_the_checkpoints(watched, tiny_data, gentle_refs):
    """results.json's test metrics, recomputed from the saved old and updated checkpoints alone:
    the test images read and normalised by hand, the flips counted with numpy."""
    out = watched["MPT_KL"][0]
    x, y = tiny_test_set(tiny_data)
    old_pred = predict_from_checkpoint(gentle_refs[0], "old", NUM_OLD, x).argmax(1)
    pred = predict_from_checkpoint(out / "checkpoint.pth", "update", 10, x).argmax(1)
    saved = np.load(out / "predictions.npz")
    np.testing.assert_array_equal(saved["targets"], y)
    np.testing.assert_array_equal(saved["old_pred"], old_pred)
    np.testing.assert_array_equal(saved["pred"], pred)

    results = json.loads((out / "results.json").read_text())
    old = y < NUM_OLD
    old_right, new_right = old_pred[old] == y[old], pred[old] == y[old]
    expected = {"nfr": 100 * np.mean(old_right & ~new_right), "pfr": 100 * np.mean(~old_right & new_right),
                "er_old": 100 * np.mean(~new_right), "er_all": 100 * np.mean(pred != y),
                "er_old_model": 100 * np.mean(~old_right)}
    share = (1 - expected["er_old_model"] / 100) * expected["er_old"] / 100
    expected["rel_nfr"] = 100 * (expected["nfr"] / 100) / share if share > 0 else float("nan")
    for name, value in expected.items():
        assert results[name] == pytest.approx(value, nan_ok=True), name
    assert (results["num_old"], results["num_classes"]) == (NUM_OLD, 10)


def test_margin_bias_never_reaches_evaluation(watched, tiny_data):
    """MPT_KL trained with b = 50: the stored test logits are the model's own (their argmax is
    "pred"), and the checkpoint's logits, recomputed without any bias, give "pred" too."""
    out = watched["MPT_KL"][0]
    assert json.loads((out / "results.json").read_text())["config"]["b"] == 50
    saved = np.load(out / "predictions.npz")
    logits, pred = saved["logits"].astype(np.float32), saved["pred"]
    assert saved["logits"].dtype == np.float16 and logits.shape == (40, 10)
    assert (logits[np.arange(40), pred] == logits.max(1)).all()  # pred is an argmax (float16 ties allowed)
    x, _ = tiny_test_set(tiny_data)
    recomputed = predict_from_checkpoint(out / "checkpoint.pth", "update", 10, x)
    np.testing.assert_array_equal(recomputed.argmax(1), pred)
    np.testing.assert_allclose(logits, recomputed, rtol=2e-3, atol=2e-2)  # no +b on the new classes


def test_log_records_the_terms_of_mpt(watched):
    """log.jsonl: each epoch's record has MPT_KL's terms (finite means) that add up to its loss."""
    records = [json.loads(line) for line in (watched["MPT_KL"][0] / "log.jsonl").read_text().splitlines()]
    assert len(records) == 1
    for record in records:
        terms = record["terms"]
        assert set(terms) == {"ce_b", "distill_old", "distill_new"}
        assert all(isinstance(v, float) and np.isfinite(v) for v in terms.values())
        assert sum(terms.values()) == pytest.approx(record["loss"], rel=1e-5)
