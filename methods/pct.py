"""Positive-congruent training (Yan et al., 2021): distillation from the old model only."""
import torch.nn.functional as F

from methods.losses import DISTILLATION_OPTIONS, focal_kl, focal_lm
from methods.registry import Method, Option, register


@register("PCT_Naive")
class PCTNaive(Method):
    """CE + mean_i [old model correct on i] * CE_i: extra weight on samples the old model got right."""
    references = frozenset({"old"})

    def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        per_sample = F.cross_entropy(logits, targets, reduction="none")
        old_correct = (old_logits.argmax(dim=1) == targets).to(per_sample.dtype)
        return {"ce": per_sample.mean(), "old_correct_ce": (old_correct * per_sample).mean()}


@register("PCT_KL")
class PCTKL(Method):
    """CE + FD-KL(z_old, old), as the MPT code has it; PCT's own code scales the KL term by tau^2
    (``tau_squared``) and mixes the two, (1 - M) * CE + M * distillation (``distill_mix`` M,
    its kd_alpha)."""
    references = frozenset({"old"})
    options = {**DISTILLATION_OPTIONS,
               "tau_squared": Option("PCT_KL: the KL term times tau^2, as PCT's code has it"),
               "distill_mix": Option("PCT_KL: loss = (1 - M) * CE + M * distillation, PCT's kd_alpha "
                                     "(off: their plain sum)", min=0, max=1, type=float)}

    def __init__(self, alpha=1.0, beta=5.0, tau=5.0, tau_squared=False, distill_mix=None, num_old=None):
        super().__init__(num_old)
        self.alpha, self.beta, self.tau = alpha, beta, tau
        self.tau_squared, self.distill_mix = tau_squared, distill_mix

    def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        c_old = self.c_old(old_logits)
        ce = F.cross_entropy(logits, targets)
        distill = focal_kl(logits[:, :c_old], old_logits, targets, self.alpha, self.beta, self.tau)
        if self.tau_squared:
            distill = self.tau ** 2 * distill
        if self.distill_mix is None:
            return {"ce": ce, "distill_old": distill}
        return {"ce": (1 - self.distill_mix) * ce, "distill_old": self.distill_mix * distill}


@register("PCT_LM")
class PCTLM(Method):
    """CE + lm_weight * FD-LM(z_old, old)."""
    references = frozenset({"old"})
    options = DISTILLATION_OPTIONS
    term_weights = ("lm_weight",)

    def __init__(self, alpha=1.0, beta=5.0, lm_weight=0.4, num_old=None):
        super().__init__(num_old)
        self.alpha, self.beta, self.lm_weight = alpha, beta, lm_weight

    def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        c_old = self.c_old(old_logits)
        fd = focal_lm(logits[:, :c_old], old_logits, targets, self.alpha, self.beta)
        return {"ce": F.cross_entropy(logits, targets), "distill_old": self.lm_weight * fd}
