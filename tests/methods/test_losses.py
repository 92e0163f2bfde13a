"""Tests of the method losses against references computed independently with numpy.

Notation: z = updated-model logits (C columns), z_old = z[:, :C_old], old = old-model
logits, new = new reference logits (for ELODI, the ensemble-mean logits).
"""
import inspect
import math

import numpy as np
import pytest
import torch

from methods import get_method, hyperparameters, method_class, method_names

# The paper's methods, each checked against its formula below; every registered method (one file
# dropped into methods/ adds one) gets the generic checks.
PAPER_METHODS = [
    "No_Treatment",
    "PCT_Naive", "PCT_KL", "PCT_LM",
    "ELODI", "ELODI_topk",
    "MPT_KL", "MPT_LM", "MPT_nodistillation", "MPT_KL_nobias", "MPT_LM_nobias",
]
REGISTERED = method_names()

# ---------------------------------------------------------------------------------------
# A fixed example: 3 samples, 4 classes, C_old = 2 (no ties, so argmax and top-k are
# unambiguous). The old model is right on samples 0 and 2, the new one on samples 0 and 1;
# sample 1 belongs to a new class.
# ---------------------------------------------------------------------------------------
Z = np.array([[1.2, -0.4, 0.3, 2.1],
              [-0.7, 0.9, 1.5, -1.1],
              [0.4, 1.6, -0.8, 0.2]])
OLD = np.array([[0.8, -0.5],
                [0.3, 1.1],
                [-0.2, 0.6]])
NEW = np.array([[1.7, -0.9, 0.1, 1.2],
                [-0.3, 0.4, 2.0, -0.6],
                [0.9, 0.5, -1.2, 0.7]])
Y = np.array([0, 2, 1])
C_OLD = OLD.shape[1]

DEFAULTS = dict(b=4.0, alpha=1.0, beta=5.0, tau=5.0, lm_weight=0.4, topk=10, tau_squared=False, distill_mix=None)
OTHER = dict(b=1.5, alpha=0.5, beta=2.0, tau=2.0, lm_weight=0.3, topk=2, tau_squared=True, distill_mix=0.9)


def as_tensors(z=Z, old=OLD, new=NEW, y=Y):
    return (torch.tensor(z, dtype=torch.float64), torch.tensor(y),
            torch.tensor(old, dtype=torch.float64), torch.tensor(new, dtype=torch.float64))


def build(name, **hparams):
    """Method ``name`` with those of ``hparams`` it takes (get_method refuses the others)."""
    return get_method(name, **{k: v for k, v in hparams.items() if k in hyperparameters(name)})


def call(name, epoch=6, **hparams):
    z, y, old, new = as_tensors()
    loss = build(name, **hparams)(z, y, old_logits=old, new_logits=new, epoch=epoch)
    return loss.item()


# ---------------------------------------------------------------------------------------
# numpy reference, written out from the formulas
# ---------------------------------------------------------------------------------------
def log_softmax(x):
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def ce_per_sample(z, y):
    return -log_softmax(z)[np.arange(len(y)), y]


def ce(z, y):
    return ce_per_sample(z, y).mean()


def ce_b(z, y, c_old, b):
    biased = z.copy()
    biased[:, c_old:] += b
    return ce(biased, y)


def focal_weights(r, y, alpha, beta):
    return alpha + beta * (r.argmax(axis=1) == y)


def fd_kl(u, r, y, alpha, beta, tau):
    log_p, log_q = log_softmax(r / tau), log_softmax(u / tau)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
    return (focal_weights(r, y, alpha, beta) * kl).mean()


def fd_lm(u, r, y, alpha, beta):
    return (focal_weights(r, y, alpha, beta) * ((u - r) ** 2).mean(axis=1) / 2).mean()


def lm(u, r):
    return (((u - r) ** 2).mean(axis=1) / 2).mean()


def topk_mask(r, k):
    mask = np.zeros_like(r)
    for i, row in enumerate(r):
        mask[i, np.argsort(-row)[:k]] = 1.0
    return mask


def lm_topk(u, r, k):
    mask = topk_mask(r, k)
    return lm(u * mask, r * mask)


def reference(name, epoch, b, alpha, beta, tau, lm_weight, topk, tau_squared, distill_mix):
    z, y, old, new = Z, Y, OLD, NEW
    z_old = z[:, :C_OLD]
    if name == "No_Treatment":
        return ce(z, y)
    if name == "PCT_Naive":
        old_correct = old.argmax(axis=1) == y
        return ce(z, y) + (old_correct * ce_per_sample(z, y)).mean()
    if name == "PCT_KL":
        distill = (tau ** 2 if tau_squared else 1) * fd_kl(z_old, old, y, alpha, beta, tau)
        if distill_mix is None:
            return ce(z, y) + distill
        return (1 - distill_mix) * ce(z, y) + distill_mix * distill
    if name == "PCT_LM":
        return ce(z, y) + lm_weight * fd_lm(z_old, old, y, alpha, beta)
    if name in ("ELODI", "ELODI_topk"):
        if epoch <= 5:
            return ce(z, y)
        if name == "ELODI":
            return ce(z, y) + 0.6 * lm(z_old, old) + 0.4 * lm(z, new)
        return ce(z, y) + 0.6 * lm_topk(z_old, old, topk) + 0.4 * lm_topk(z, new, topk)
    base = ce(z, y) if name.endswith("_nobias") else ce_b(z, y, C_OLD, b)
    if name == "MPT_nodistillation":
        return base
    if name.startswith("MPT_KL"):
        return base + fd_kl(z_old, old, y, alpha, beta, tau) + fd_kl(z, new, y, alpha, beta, tau)
    if name.startswith("MPT_LM"):
        return (base + lm_weight * fd_lm(z_old, old, y, alpha, beta)
                + lm_weight * fd_lm(z, new, y, alpha, beta))
    raise ValueError(name)


def test_example_covers_both_focal_weights():
    assert set(OLD.argmax(axis=1) == Y) == {True, False}
    assert set(NEW.argmax(axis=1) == Y) == {True, False}


# ---------------------------------------------------------------------------------------
# Hand-worked values
# ---------------------------------------------------------------------------------------
def test_cross_entropy_hand_worked():
    # softmax([0, ln 3]) = [1/4, 3/4]: CE is ln(4/3) for class 1 and ln 4 for class 0.
    z = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]], dtype=torch.float64)
    loss = get_method("No_Treatment")(z, torch.tensor([1, 0]))
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 2, abs=1e-12)


@pytest.mark.parametrize("target, expected", [(0, math.log(10)), (1, math.log(10 / 3)), (3, math.log(10 / 3))])
def test_biased_cross_entropy_hand_worked(target, expected):
    # One old class and three new ones (asymmetric, so that a bias on the wrong side, or a split
    # off by one, gives other numbers): b = ln 3 on the new classes turns logits [0, 0, 0, 0]
    # into the softmax denominator 1 + 3 + 3 + 3 = 10: CE is ln 10 for the old class, ln(10/3)
    # for a new one.
    z = torch.zeros(1, 4, dtype=torch.float64)
    loss = get_method("MPT_nodistillation", b=math.log(3), num_old=1)(z, torch.tensor([target]))
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_focal_kl_hand_worked():
    # tau = 1, student [0, 0] -> [1/2, 1/2], teacher [0, ln 3] -> [1/4, 3/4], correct on
    # class 1 so w = 1 + 5. KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln 3 - ln 2; CE = ln 2.
    z = torch.zeros(1, 2, dtype=torch.float64)
    old = torch.tensor([[0.0, math.log(3)]], dtype=torch.float64)
    loss = get_method("PCT_KL", alpha=1, beta=5, tau=1)(z, torch.tensor([1]), old_logits=old)
    expected = math.log(2) + 6 * (0.75 * math.log(3) - math.log(2))
    assert loss.item() == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------
# Every method against the numpy reference
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("hparams", [DEFAULTS, OTHER], ids=["defaults", "other"])
@pytest.mark.parametrize("name", PAPER_METHODS)
def test_matches_reference(name, hparams):
    expected = reference(name, epoch=6, **hparams)
    assert call(name, epoch=6, **hparams) == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("distance", ["KL", "LM"])
def test_bias_only_affects_cross_entropy(distance):
    b = DEFAULTS["b"]
    biased = call(f"MPT_{distance}", **DEFAULTS)
    unbiased = call(f"MPT_{distance}_nobias", **DEFAULTS)
    assert biased - unbiased == pytest.approx(ce_b(Z, Y, C_OLD, b) - ce(Z, Y), abs=1e-10)
    # Zero bias makes MPT its no-bias ablation.
    assert call(f"MPT_{distance}", **{**DEFAULTS, "b": 0.0}) == pytest.approx(unbiased, abs=1e-12)


@pytest.mark.parametrize("name", ["ELODI", "ELODI_topk"])
def test_elodi_with_other_weights_and_warmup(name):
    """Non-default weights (the ensemble's larger than the old model's, unlike the defaults) and
    warm-up, against the formula: CE before epoch 2, then CE + w_old LM(z_old, old) + w_ens LM(z, ens)."""
    w_old, w_ens, k = 0.25, 1.5, 3
    method = build(name, elodi_old_weight=w_old, elodi_ensemble_weight=w_ens, elodi_warmup=2, topk=k)
    z, y, old, new = as_tensors()
    distance = lm if name == "ELODI" else (lambda u, r: lm_topk(u, r, k))
    expected = ce(Z, Y) + w_old * distance(Z[:, :C_OLD], OLD) + w_ens * distance(Z, NEW)
    assert method(z, y, old, new, epoch=2).item() == pytest.approx(expected, abs=1e-12)
    assert method(z, y, old, new, epoch=1).item() == pytest.approx(ce(Z, Y), abs=1e-12)


@pytest.mark.parametrize("name", ["ELODI", "ELODI_topk"])
def test_elodi_schedule(name):
    hparams = {**DEFAULTS, "topk": 2}
    assert call(name, epoch=5, **hparams) == pytest.approx(ce(Z, Y), abs=1e-12)
    after = call(name, epoch=6, **hparams)
    assert after > ce(Z, Y) + 1e-3
    assert after == pytest.approx(reference(name, epoch=6, **hparams), abs=1e-5)


@pytest.mark.parametrize("topk", [Z.shape[1], 10])
def test_elodi_topk_with_all_classes_is_elodi(topk):
    assert call("ELODI_topk", topk=topk) == pytest.approx(call("ELODI"), abs=1e-12)


def test_pct_at_its_published_setting_mixes_ce_and_tau_squared_distillation():
    """PCT's own code: (1 - M) * CE + M * tau^2 * FD-KL (T = 100, M = 0.9), against torch's kl_div."""
    z, y, old, _ = as_tensors()
    tau, mix = 100.0, 0.9
    loss = get_method("PCT_KL", tau=tau, tau_squared=True, distill_mix=mix)(z, y, old_logits=old)
    kl = torch.nn.functional.kl_div(torch.log_softmax(z[:, :C_OLD] / tau, 1), torch.log_softmax(old / tau, 1),
                                    log_target=True, reduction="none").sum(1)
    weights = 1.0 + 5.0 * (old.argmax(1) == y).double()
    expected = (1 - mix) * torch.nn.functional.cross_entropy(z, y) + mix * tau ** 2 * (weights * kl).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("name", [n for n in REGISTERED if method_class(n).references])
def test_a_missing_or_misshapen_reference_is_a_value_error_naming_the_method(name):
    z, y, old, new = as_tensors()
    method = build(name, **DEFAULTS)
    epoch = 100  # after any warm-up: every reference is read
    uses = method.references_at(epoch)
    missing = {"old_logits": None} if "old" in uses else {"new_logits": None}
    with pytest.raises(ValueError, match=name) as err:
        method(z, y, **{"old_logits": old, "new_logits": new, **missing}, epoch=epoch)
    assert "None" in str(err.value) and str(tuple(z.shape)) in str(err.value)
    if "old" in uses:
        with pytest.raises(ValueError, match="old"):   # wider than the logits
            method(z, y, old_logits=torch.cat([z, z], 1), new_logits=new, epoch=epoch)
        with pytest.raises(ValueError, match="num_old"):
            get_method(name, num_old=C_OLD + 1)(z, y, old_logits=old, new_logits=new, epoch=epoch)
    if uses & {"new", "ensemble"}:
        with pytest.raises(ValueError, match="new_logits"):
            method(z, y, old_logits=old, new_logits=new[:, :C_OLD], epoch=epoch)


@pytest.mark.parametrize("name", REGISTERED)
def test_inputs_unchanged(name):
    z, y, old, new = as_tensors()
    before = [t.clone() for t in (z, y, old, new)]
    build(name, **DEFAULTS)(z, y, old_logits=old, new_logits=new, epoch=6)
    for tensor, copy in zip((z, y, old, new), before):
        assert torch.equal(tensor, copy)


@pytest.mark.parametrize("name", REGISTERED)
def test_gradients_flow(name):
    z, y, old, new = as_tensors()
    z.requires_grad_(True)
    loss = build(name, **DEFAULTS)(z, y, old_logits=old, new_logits=new, epoch=6)
    assert loss.dim() == 0
    loss.backward()
    assert z.grad is not None
    assert torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("name", REGISTERED)
def test_the_declared_references_are_the_logits_that_change_the_loss(name):
    """A method declares a reference model exactly where that model's logits change its loss
    (after any warm-up): the training loop runs only the teachers a method declares."""
    z, y, old, new = as_tensors()
    method = build(name, **DEFAULTS)
    epoch = 100
    base = method(z, y, old_logits=old, new_logits=new, epoch=epoch).item()
    moved_old = method(z, y, old_logits=old.flip(0), new_logits=new, epoch=epoch).item()
    moved_new = method(z, y, old_logits=old, new_logits=new.flip(0), epoch=epoch).item()
    assert ("old" in method.references) == (moved_old != base)
    assert bool(method.references & {"new", "ensemble"}) == (moved_new != base)


def test_the_papers_methods_are_registered_once_each():
    assert set(PAPER_METHODS) <= set(REGISTERED) and len(set(REGISTERED)) == len(REGISTERED)


def test_unknown_method():
    with pytest.raises(KeyError) as excinfo:
        get_method("No_Such_Method")
    message = str(excinfo.value)
    assert "No_Such_Method" in message
    for name in REGISTERED:
        assert name in message


@pytest.mark.parametrize("name", PAPER_METHODS)
def test_hyperparameters_are_exactly_those_that_change_the_loss(name):
    """hyperparameters(name) lists what reaches the loss (the tables label rows with it): each
    argument of the constructor changes the loss on the example, so a method takes none that it
    ignores. ELODI's weights get other values than the defaults' so that its top-k changes the mask."""
    from methods import METHODS

    accepted = set(inspect.signature(METHODS[name].__init__).parameters) - {"self", "num_old"}
    assert accepted == hyperparameters(name)
    base = dict(DEFAULTS, elodi_old_weight=0.6, elodi_ensemble_weight=0.4, elodi_warmup=6)
    other = dict(OTHER, elodi_old_weight=0.9, elodi_ensemble_weight=0.1, elodi_warmup=0)
    base["topk"], other["topk"] = 4, 1
    reference = call(name, epoch=6, **base)
    changes = {p for p in accepted
               if not math.isclose(call(name, epoch=6, **dict(base, **{p: other[p]})), reference)}
    if "elodi_warmup" in accepted:  # the schedule starts at epoch 6 either way: try epoch 3
        changes |= {"elodi_warmup"} if call(name, epoch=3, **base) != call(
            name, epoch=3, **dict(base, elodi_warmup=0)) else set()
    assert changes == accepted
