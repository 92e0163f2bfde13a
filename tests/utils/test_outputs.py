"""utils.outputs.write_predictions: the stored margins agree with the stored predictions."""
import numpy as np
import torch

from utils.evaluation import Scores
from utils.outputs import write_predictions


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
