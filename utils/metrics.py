"""The one place that computes the paper's metrics (all returned as percentages).

Following the official code, flips are counted on the old-class test samples only (target <
C_old): the old model predicts with its C_old-way head, the updated model with its full head.
    NFR     = #(old correct and updated wrong) / #old-class samples
    PFR     = #(old wrong and updated correct) / #old-class samples
    Rel-NFR = NFR / ((1 - ER of the old model) * ER of the updated model), both ERs on the
              old-class samples; NaN when the denominator is zero.
    ER(Y_old), ER(Y_all): error of the updated model on the old-class / all test samples.

Uncertainty: ``flip_indicators`` gives the per-sample flips behind these rates, ``bootstrap``
resamples test samples (a statistic of resampled arrays; several arrays share the indices, which
makes a paired bootstrap), ``bootstrap_rates`` the rates of many indicators over the same
resamples at once, and ``percentile_interval`` turns the resampled values into an interval.

Margins: ``margins`` gives gamma = z_y - max_{j != y} z_j per sample (positive when the sample is
classified right, the larger the safer from flipping).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


def error_rate(pred, targets) -> float:
    pred, targets = np.asarray(pred), np.asarray(targets)
    return 100.0 * float(np.mean(pred != targets)) if len(targets) else math.nan


class Flips(NamedTuple):
    """Per-sample indicators over the old-class samples (target < C_old), in test-set order."""
    targets: np.ndarray       # their classes
    old_correct: np.ndarray   # the old model was right
    new_correct: np.ndarray   # the updated model is right
    negative: np.ndarray      # old right, updated wrong
    positive: np.ndarray      # old wrong, updated right


def flip_indicators(targets, old_pred, pred, num_old: int) -> Flips:
    """The flips of an update sample by sample: what the rates below count, and what a bootstrap
    or a paired test over the samples needs."""
    targets, old_pred, pred = (np.asarray(a).astype(np.int64) for a in (targets, old_pred, pred))
    old = targets < num_old
    y = targets[old]
    old_correct, new_correct = old_pred[old] == y, pred[old] == y
    return Flips(y, old_correct, new_correct, old_correct & ~new_correct, ~old_correct & new_correct)


def relative_nfr(nfr, er_old_model, er_old):
    """Rel-NFR (percent) from NFR and the two error rates on the old classes (percent), elementwise
    on arrays too; NaN where the expected share of negative flips is zero."""
    expected = (1 - np.asarray(er_old_model, dtype=float) / 100) * (np.asarray(er_old, dtype=float) / 100)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(expected > 0, 100.0 * (np.asarray(nfr, dtype=float) / 100) / expected, math.nan)
    return float(rel) if rel.ndim == 0 else rel


def flip_metrics(targets, old_pred, pred, num_old: int) -> dict:
    """Metrics of an update from ``old_pred`` to ``pred`` over the whole test set.

    ``old_pred`` only matters on the old-class samples (it is ignored elsewhere)."""
    flips = flip_indicators(targets, old_pred, pred, num_old)
    # Without old-class samples there are no flips to count: NaN, like the error rates.
    n = len(flips.targets)
    nfr = 100.0 * np.sum(flips.negative) / n if n else math.nan
    pfr = 100.0 * np.sum(flips.positive) / n if n else math.nan
    er_old_model = 100.0 * float(np.mean(~flips.old_correct)) if n else math.nan
    er_old = 100.0 * float(np.mean(~flips.new_correct)) if n else math.nan
    return {
        "er_old": er_old,
        "er_all": error_rate(pred, targets),
        "nfr": float(nfr),
        "rel_nfr": relative_nfr(nfr, er_old_model, er_old),
        "pfr": float(pfr),
        "er_old_model": er_old_model,
    }


# Index entries drawn at a time: 2**22 int64 indices are 32 MiB, whatever the resamples and samples.
BOOTSTRAP_CHUNK = 1 << 22


def bootstrap(statistic, *arrays, resamples: int = 10000, seed: int = 0) -> np.ndarray:
    """``statistic`` of ``resamples`` resamples (with replacement) of the samples of ``arrays``.

    ``statistic(*resampled)`` gets each array indexed by a (k, n) index matrix, row i being
    resample i, and returns k values (or a (k, m) matrix, for m statistics of the same resamples).
    Every array gets the same indices: a paired bootstrap when they describe the same samples.
    The index matrix is drawn in chunks of rows so that memory stays bounded; the same seed gives
    the same resamples for any arrays of the same length."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap: the arrays must describe the same samples (equal lengths)")
    if n == 0 or resamples <= 0:
        return np.full(max(resamples, 0), math.nan)
    rng = np.random.default_rng(seed)
    rows = max(1, BOOTSTRAP_CHUNK // n)
    values = []
    for start in range(0, resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, resamples - start), n))
        values.append(np.asarray(statistic(*(a[idx] for a in arrays)), dtype=float))
    return np.concatenate(values)


def resample_counts(n: int, resamples: int, seed: int = 0):
    """The resamples of ``bootstrap`` (same seed, same draws) as counts: yields float32 (k, n)
    matrices, row i counting how often each of the n samples is drawn in resample i, k rows at a
    time. A rate over the resamples is then one matrix product for any number of indicators
    (see ``bootstrap_rates``); the integer sums are exact in float32 below 2**24 samples."""
    rng = np.random.default_rng(seed)
    rows = max(1, BOOTSTRAP_CHUNK // n)
    for start in range(0, resamples, rows):
        k = min(rows, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        idx += np.arange(k)[:, None] * n  # row i's draws counted in its own n bins
        yield np.bincount(idx.ravel(), minlength=k * n).reshape(k, n).astype(np.float32)


def bootstrap_rates(indicators, resamples: int = 10000, seed: int = 0) -> np.ndarray:
    """The rate (percent) of each column of the (n, m) boolean ``indicators`` in each of
    ``resamples`` resamples of the n samples, as a (resamples, m) matrix: column j equals
    ``bootstrap(rate, indicators[:, j], resamples=resamples, seed=seed)``, and every column comes
    from the same resamples (paired), for the cost of one pass over them."""
    indicators = np.asarray(indicators, dtype=np.float32)
    n, m = indicators.shape
    if n == 0:
        return np.full((max(resamples, 0), m), math.nan)
    sums = np.concatenate([counts @ indicators for counts in resample_counts(n, resamples, seed)])
    return 100.0 * (sums.astype(np.float64) / n)


def percentile_interval(values, confidence: float = 0.95):
    """The percentile interval [low, high] holding the central ``confidence`` share of
    ``values`` (NaNs, resamples where the statistic is undefined, left out; NaN if all are);
    for an (k, m) matrix, one [low, high] per column, as an (m, 2) array."""
    values = np.asarray(values, dtype=float)
    tail = 100 * (1 - confidence) / 2
    finite = ~np.isnan(values)
    if values.ndim == 1:
        if not finite.any():
            return (math.nan, math.nan)
        low, high = np.percentile(values[finite], [tail, 100 - tail])
        return (float(low), float(high))
    return np.array([percentile_interval(values[:, j], confidence) for j in range(values.shape[1])])


def bootstrap_interval(statistic, *arrays, resamples: int = 10000, confidence: float = 0.95,
                       seed: int = 0):
    """Percentile bootstrap interval of ``statistic`` (see ``bootstrap``) over the samples."""
    return percentile_interval(bootstrap(statistic, *arrays, resamples=resamples, seed=seed), confidence)


def rate(indicators) -> np.ndarray:
    """Percent of true values in each row: a rate statistic for ``bootstrap``."""
    return 100.0 * np.mean(indicators, axis=-1)


def nfr_and_rel_nfr(negative, old_correct, new_correct) -> np.ndarray:
    """NFR and Rel-NFR (percent) from resampled rates (percent) of the ``Flips`` indicators, as a
    (k, 2) matrix (``bootstrap_rates`` gives the rates)."""
    return np.stack([negative, relative_nfr(negative, 100 - old_correct, 100 - new_correct)], axis=-1)


def flip_intervals(flips: Flips, resamples: int = 10000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Bootstrap intervals of NFR and Rel-NFR over the old-class samples, from the same resamples:
    {"nfr": (low, high), "rel_nfr": (low, high)}."""
    if len(flips.targets) == 0:  # no old-class samples: nothing to resample
        return {"nfr": (math.nan, math.nan), "rel_nfr": (math.nan, math.nan)}
    rates = bootstrap_rates(np.stack([flips.negative, flips.old_correct, flips.new_correct], axis=1),
                            resamples, seed)
    (nfr_low, nfr_high), (rel_low, rel_high) = percentile_interval(nfr_and_rel_nfr(*rates.T), confidence)
    return {"nfr": (float(nfr_low), float(nfr_high)), "rel_nfr": (float(rel_low), float(rel_high))}


# Rows of logits turned into margins at a time: a float32 copy of 4096 rows x 1000 classes is 16 MB.
MARGIN_CHUNK = 4096


def margins(logits, targets) -> np.ndarray:
    """gamma = z_y - max_{j != y} z_j per sample (float32), a tie giving 0. The rows are converted
    in chunks, so that float16 logits of many classes are never copied whole."""
    targets = np.asarray(targets, dtype=np.int64)
    out = np.empty(len(targets), dtype=np.float32)
    for start in range(0, len(targets), MARGIN_CHUNK):
        z = np.array(logits[start:start + MARGIN_CHUNK], dtype=np.float32)
        rows, y = np.arange(len(z)), targets[start:start + MARGIN_CHUNK]
        own = z[rows, y].copy()
        z[rows, y] = -np.inf
        out[start:start + len(z)] = own - z.max(axis=1)
    return out


def margins_agreeing_with(pred, targets, margin) -> np.ndarray:
    """``margin`` made to agree in sign with the predictions: at most 0 where ``pred`` is wrong, at
    least 0 where it is right; a margin that contradicts its prediction is taken as a tie, 0.
    Rounding the logits that gave the predictions (float16) keeps their order, so it can only
    turn a margin into 0; a contradiction means predictions not made from these logits (other
    code, another precision), and the stored prediction is what the flips count."""
    right = np.asarray(pred) == np.asarray(targets)
    return np.where(right, np.maximum(margin, 0), np.minimum(margin, 0)).astype(np.float32)
