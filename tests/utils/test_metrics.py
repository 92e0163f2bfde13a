"""utils.metrics on hand-made predictions whose metrics are counted by hand, and the class split."""
import math

import numpy as np
import pytest

from utils.data import num_old_classes
from utils.errors import UserError
from utils.metrics import error_rate, flip_metrics

# Ten test samples, 4 classes, C_old = 2 (classes 0 and 1 are old).
#   sample      0  1  2  3  4  5  6  7  8  9
TARGETS = [0, 0, 1, 1, 1, 0, 2, 3, 2, 1]
OLD_PRED = [0, 0, 1, 0, 0, 0, 1, 0, 1, 1]
PRED = [0, 1, 3, 1, 0, 0, 2, 2, 2, 1]
NUM_OLD = 2
# Old-class samples: 0 1 2 3 4 5 9 (seven).
#   old model right on 0 1 2 5 9 (5 of 7)   -> ER of the old model 2/7
#   updated model right on 0 3 5 9 (4 of 7) -> ER(Y_old) 3/7
#   negative flips: 1 (0 -> 1) and 2 (1 -> 3, a new class)  -> NFR 2/7
#   positive flip: 3                                        -> PFR 1/7
#   sample 4: both wrong, no flip
# All samples: updated model wrong on 1 2 4 7               -> ER(Y_all) 4/10
# Rel-NFR = (2/7) / ((1 - 2/7) * 3/7) = (2/7) / (15/49) = 14/15
EXPECTED = {
    "nfr": 100 * 2 / 7,
    "pfr": 100 * 1 / 7,
    "er_old": 100 * 3 / 7,
    "er_all": 100 * 4 / 10,
    "er_old_model": 100 * 2 / 7,
    "rel_nfr": 100 * 14 / 15,
}


def test_flip_metrics_hand_counted():
    metrics = flip_metrics(TARGETS, OLD_PRED, PRED, NUM_OLD)
    assert set(metrics) == set(EXPECTED)
    for name, value in EXPECTED.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name
    assert all(isinstance(v, float) for v in metrics.values())


def test_flips_are_counted_on_old_class_samples_only():
    # Whatever the old model says about new-class samples (6, 7, 8), and whether the updated
    # model is right there, only ER(Y_all) may change.
    old_pred = np.array(OLD_PRED)
    old_pred[[6, 7, 8]] = [2, 3, 2]   # "right" on the new classes it cannot even predict
    pred = np.array(PRED)
    pred[[6, 7, 8]] = [0, 0, 0]       # now wrong on all three
    metrics = flip_metrics(TARGETS, old_pred, pred, NUM_OLD)
    for name in ("nfr", "pfr", "er_old", "er_old_model", "rel_nfr"):
        assert metrics[name] == pytest.approx(EXPECTED[name]), name
    assert metrics["er_all"] == pytest.approx(100 * 6 / 10)


def test_no_update_no_flips():
    metrics = flip_metrics(TARGETS, OLD_PRED, OLD_PRED, NUM_OLD)
    assert metrics["nfr"] == metrics["pfr"] == 0.0
    assert metrics["er_old"] == metrics["er_old_model"] == pytest.approx(100 * 2 / 7)
    assert metrics["rel_nfr"] == 0.0


@pytest.mark.parametrize("old_pred, pred", [
    # the updated model is right on every old-class sample: ER(Y_old) = 0
    ([0, 1, 1, 1], [0, 0, 1, 1]),
    # the old model is wrong on every old-class sample: 1 - ER(old) = 0
    ([1, 1, 0, 0], [0, 1, 1, 1]),
])
def test_rel_nfr_with_zero_denominator_is_nan(old_pred, pred):
    metrics = flip_metrics([0, 0, 1, 1], old_pred, pred, NUM_OLD)
    assert math.isnan(metrics["rel_nfr"])
    assert metrics["nfr"] == 0.0


def test_no_old_class_samples_gives_nan_not_a_crash():
    metrics = flip_metrics([2, 3, 3], [0, 1, 0], [2, 3, 0], NUM_OLD)
    for name in ("nfr", "pfr", "er_old", "er_old_model", "rel_nfr"):
        assert math.isnan(metrics[name]), name
    assert metrics["er_all"] == pytest.approx(100 / 3)


def test_error_rate():
    assert error_rate([1, 2, 3, 4], [1, 2, 0, 0]) == 50.0
    assert math.isnan(error_rate([], []))


@pytest.mark.parametrize("num_classes, fraction, expected", [
    (10, 0.5, 5), (100, 0.5, 50), (1000, 0.5, 500), (10, 0.3, 3), (100, 0.1, 10), (10, 0.9, 9),
    (10, 1.0, 10),  # a same-class update: every class is old
])
def test_num_old_classes(num_classes, fraction, expected):
    assert num_old_classes(num_classes, fraction) == expected


@pytest.mark.parametrize("num_classes, fraction", [
    (10, 0.0), (10, -0.5), (10, 1.5),   # out of range (the CLI says so first)
    (10, 0.04),   # no old class left
    (10, 0.96),   # no new class left
])
def test_num_old_classes_rejects_splits_without_old_and_new_classes(num_classes, fraction):
    with pytest.raises(UserError, match="old-fraction"):
        num_old_classes(num_classes, fraction)
