"""Margin Preserving Training (the paper's method) and its ablations.

MPT = CE_b (margin-calibrated cross-entropy, bias b on the new-class logits, training only)
    + focal distillation from the old model on the old-class logits
    + focal distillation from the new reference model on all logits.
"""
import torch.nn.functional as F

from methods.losses import DISTILLATION_OPTIONS, cross_entropy_with_bias, focal_kl, focal_lm
from methods.registry import Method, Option, register


class _MPT(Method):
    """The terms: ce_b (ce where b is None: the *_nobias ablations) and, for the variants with
    reference models, distill_old and distill_new (the subclass's ``distill``, weighted)."""
    references = frozenset({"old", "new"})
    options = {"b": Option("MPT margin bias added to the new-class logits (training only)"),
               **DISTILLATION_OPTIONS}
    b = None
    dataset_defaults = {"imagenet": {"b": 1.5}}   # the paper's ImageNet margin

    def distill(self, student, teacher, targets):
        raise NotImplementedError

    def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        c_old = self.c_old(old_logits)
        if self.b is None:
            terms = {"ce": F.cross_entropy(logits, targets)}
        else:
            terms = {"ce_b": cross_entropy_with_bias(logits, targets, c_old, self.b)}
        if self.references:  # what the reference models are read for
            terms["distill_old"] = self.distill(logits[:, :c_old], old_logits, targets)
            terms["distill_new"] = self.distill(logits, new_logits, targets)
        return terms


@register("MPT_KL")
class MPTKL(_MPT):
    """CE_b + FD-KL(z_old, old) + FD-KL(z, new)."""
    same_classes_equivalent = "MPT_KL_nobias"

    def __init__(self, b=4.0, alpha=1.0, beta=5.0, tau=5.0, num_old=None):
        super().__init__(num_old)
        self.b, self.alpha, self.beta, self.tau = b, alpha, beta, tau

    def distill(self, student, teacher, targets):
        return focal_kl(student, teacher, targets, self.alpha, self.beta, self.tau)


@register("MPT_LM")
class MPTLM(_MPT):
    """CE_b + lm_weight (FD-LM(z_old, old) + FD-LM(z, new))."""
    same_classes_equivalent = "MPT_LM_nobias"
    term_weights = ("lm_weight",)

    def __init__(self, b=4.0, alpha=1.0, beta=5.0, lm_weight=0.4, num_old=None):
        super().__init__(num_old)
        self.b, self.alpha, self.beta, self.lm_weight = b, alpha, beta, lm_weight

    def distill(self, student, teacher, targets):
        return self.lm_weight * focal_lm(student, teacher, targets, self.alpha, self.beta)


@register("MPT_nodistillation")
class MPTNoDistillation(_MPT):
    """CE_b alone."""
    references = frozenset()
    same_classes_equivalent = "No_Treatment"

    def __init__(self, b=4.0, num_old=None):
        super().__init__(num_old)
        self.b = b


@register("MPT_KL_nobias")
class MPTKLNoBias(MPTKL):
    """MPT_KL with plain CE in place of CE_b."""
    same_classes_equivalent = None

    def __init__(self, alpha=1.0, beta=5.0, tau=5.0, num_old=None):
        super().__init__(None, alpha, beta, tau, num_old)


@register("MPT_LM_nobias")
class MPTLMNoBias(MPTLM):
    """MPT_LM with plain CE in place of CE_b."""
    same_classes_equivalent = None

    def __init__(self, alpha=1.0, beta=5.0, lm_weight=0.4, num_old=None):
        super().__init__(None, alpha, beta, lm_weight, num_old)
