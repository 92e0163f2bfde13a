"""utils.outputs.write_predictions: the stored margins agree with the stored predictions;
save_predictions: the same file from predictions made anywhere."""
import numpy as np
import pytest
import torch

from utils.evaluation import Scores
from utils.outputs import save_predictions, write_predictions


def test_stored_margins_agree_in_sign_with_the_predictions(tmp_path):
    torch.manual_seed(0)
    num_old, n = 3, 400
    targets = torch.randint(0, 6, (n,))
    # logits close together, so that float16 would round many of them into ties, and exact ties
    logits = 1 + torch.randn(n, 6) * 1e-3
    old_logits = 1 + torch.randn(n, num_old) * 1e-3
    logits[0] = torch.tensor([1.0, 1.0, 0.5, 0, 0, 0])   # tie: argmax 0
    targets[0] = 1                                                # so sample 0 is wrong, margin 0
    write_predictions(tmp_path / "p.npz", targets, Scores({}, logits, old_logits), num_old, save_logits=True)
    saved = np.load(tmp_path / "p.npz")
    right = saved["pred"] == saved["targets"]
    margin = saved["margin"]
    assert margin[0] == 0 and not right[0]
    assert (margin[right] >= 0).all() and (margin[~right] <= 0).all()
    assert (margin[~right] < 0).sum() > 100  # not all ties: the margins are real
    old = saved["targets"] < num_old
    old_right = saved["old_pred"][old] == saved["targets"][old]
    assert (saved["old_margin"][old][old_right] >= 0).all() and (saved["old_margin"][old][~old_right] <= 0).all()
    assert np.isnan(saved["old_margin"][~old]).all()  # the old model has no margin on a new class
    # from the float16 logits, many of these margins would be ties (0), right or wrong: why the
    # margins are stored in float32
    from utils.metrics import margins
    rounded = margins(saved["logits"], saved["targets"])
    assert ((rounded == 0) & (margin < 0)).sum() > 10


def test_save_predictions_writes_what_write_predictions_writes(tmp_path):
    """Predictions made anywhere (numpy, tensors, lists) give main.py's predictions.npz."""
    torch.manual_seed(1)
    num_old, n = 3, 50
    targets = torch.randint(0, 6, (n,))
    logits, old_logits = torch.randn(n, 6), torch.randn(n, num_old)
    write_predictions(tmp_path / "a.npz", targets, Scores({}, logits, old_logits), num_old)
    save_predictions(tmp_path / "b.npz", targets.tolist(), old_logits.argmax(1).numpy(), logits.argmax(1),
                     num_old, logits=logits.numpy(), old_logits=old_logits)
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert set(a.files) == set(b.files) == {"targets", "old_pred", "pred", "num_old", "margin", "old_margin",
                                            "logits", "old_logits"}
    for key in a.files:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key], equal_nan=True), key
    save_predictions(tmp_path / "c.npz", targets, old_logits.argmax(1), logits.argmax(1), num_old)
    c = np.load(tmp_path / "c.npz")
    assert set(c.files) == {"targets", "old_pred", "pred", "num_old"} and int(c["num_old"]) == num_old
    assert c["pred"].dtype == np.int64 and np.array_equal(c["pred"], a["pred"])


def test_save_predictions_makes_margins_agree_with_the_predictions_given(tmp_path):
    """Predictions made at another precision than the logits: a margin that contradicts its
    prediction is taken as a tie (0)."""
    targets = np.array([0, 1])
    logits = np.array([[2.0, 1.0], [2.0, 1.0]])
    save_predictions(tmp_path / "p.npz", targets, [0, 0], [1, 1], 1, logits=logits)  # pred 1 on row 0: wrong
    saved = np.load(tmp_path / "p.npz")
    assert saved["margin"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("change, match", [
    (dict(pred=[0, 1]), "one entry per test sample"),
    (dict(old_pred=[0, 3, 0]), "old model knows only classes 0 .. 1"),
    (dict(num_old=0), "num_old must be a positive integer"),
    (dict(targets=[0, -1, 2]), "negative"),
    (dict(pred=[[0], [1], [2]]), r"shape \(N,\)"),
    (dict(pred=[0.5, 1, 2]), "integers"),
    (dict(logits=np.zeros((3, 2))), "logits have 2 columns"),
    (dict(old_logits=np.zeros((3, 3))), "old_logits have 3 columns but num_old is 2"),
    (dict(old_logits=np.zeros((2, 2))), r"shape \(N, classes\)"),
])
def test_save_predictions_refuses_arrays_that_do_not_fit(tmp_path, change, match):
    arrays = dict(targets=[0, 1, 2], old_pred=[0, 1, 0], pred=[0, 1, 2], num_old=2, logits=None, old_logits=None)
    arrays.update(change)
    with pytest.raises(ValueError, match=match):
        save_predictions(tmp_path / "p.npz", **arrays)
    assert not (tmp_path / "p.npz").exists()
