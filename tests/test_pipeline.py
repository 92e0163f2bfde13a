"""End to end: old -> new -> every method for one epoch on the tiny data set (ELODI with a
2-member ensemble), checking each run's files against each other and the metric definitions."""
import json

import numpy as np
import pytest

from conftest import NUM_OLD, common_args, run_inline, write_cifar_pickles
from methods import method_names


# The shared reference fixtures train at lr 0.1 for a few steps, which leaves their BatchNorm
# statistics unsettled and their logits huge: fine for cross-entropy and KL, but the logit-matching
# terms of ELODI and *_LM would diverge. These references train gently.
GENTLE = ("--lr", 0.01, "--batch-size", 32)


@pytest.fixture(scope="module")
def refs(tiny_data, tmp_path_factory):
    """(old checkpoint, new checkpoint, folder of a 2-member ensemble)."""
    folder = tmp_path_factory.mktemp("refs")
    run_inline("train_old_model.py", *common_args(tiny_data), *GENTLE, "--save", folder / "old.pth",
               "--output-dir", folder / "old")
    for i in range(2):
        run_inline("train_new_model.py", *common_args(tiny_data), *GENTLE, "--seed", i,
                   "--save", folder / "ensemble" / f"ckpt_{i}.pth", "--output-dir", folder / f"new{i}")
    return folder / "old.pth", folder / "ensemble" / "ckpt_0.pth", folder / "ensemble"


@pytest.mark.parametrize("method", method_names())
def test_every_method_runs_and_its_files_agree(method, tiny_data, refs, tmp_path):
    old_ckpt, new_ckpt, ensemble_dir = refs
    out = tmp_path / "run"
    run_inline("main.py", *common_args(tiny_data), "--method", method, "--b", 2.0,
               "--old-ckpt", old_ckpt, "--new-ckpt", new_ckpt, "--ensemble-dir", ensemble_dir,
               "--ensemble-size", 2, "--elodi-warmup", 0, *GENTLE, "--output-dir", out)

    results = json.loads((out / "results.json").read_text())
    assert results["config"]["method"] == method
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
    assert results["er_old"] == metrics["er_old"] and 0 <= metrics["er_old"] <= 100
