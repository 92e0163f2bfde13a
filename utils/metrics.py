"""The one place that computes the paper's metrics (all returned as percentages).

Following the official code, flips are counted on the old-class test samples only (target <
C_old): the old model predicts with its C_old-way head, the updated model with its full head.
    NFR     = #(old correct and updated wrong) / #old-class samples
    PFR     = #(old wrong and updated correct) / #old-class samples
    Rel-NFR = NFR / ((1 - ER of the old model) * ER of the updated model), both ERs on the
              old-class samples; NaN when the denominator is zero.
    ER(Y_old), ER(Y_all): error of the updated model on the old-class / all test samples.
"""
from __future__ import annotations

import math

import numpy as np


def error_rate(pred, targets) -> float:
    pred, targets = np.asarray(pred), np.asarray(targets)
    return 100.0 * float(np.mean(pred != targets)) if len(targets) else math.nan


def flip_metrics(targets, old_pred, pred, num_old: int) -> dict:
    """Metrics of an update from ``old_pred`` to ``pred`` over the whole test set.

    ``old_pred`` only matters on the old-class samples (it is ignored elsewhere)."""
    targets, old_pred, pred = (np.asarray(a).astype(np.int64) for a in (targets, old_pred, pred))
    old = targets < num_old
    y, p_old, p = targets[old], old_pred[old], pred[old]
    old_correct, new_correct = p_old == y, p == y
    # Without old-class samples there are no flips to count: NaN, like the error rates.
    n = len(y)
    nfr = 100.0 * np.sum(old_correct & ~new_correct) / n if n else math.nan
    pfr = 100.0 * np.sum(~old_correct & new_correct) / n if n else math.nan
    er_old_model = error_rate(p_old, y)
    er_old = error_rate(p, y)
    expected = (1 - er_old_model / 100) * (er_old / 100)
    rel_nfr = 100.0 * (nfr / 100) / expected if expected > 0 else math.nan
    return {
        "er_old": er_old,
        "er_all": error_rate(pred, targets),
        "nfr": float(nfr),
        "rel_nfr": float(rel_nfr),
        "pfr": float(pfr),
        "er_old_model": er_old_model,
    }
