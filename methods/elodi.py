"""ELODI (Zhao et al., 2022): logit matching to the old model and to an ensemble of new models.

``new_logits`` is the mean logits of the ensemble members."""
import torch.nn.functional as F

from methods.losses import logit_matching, topk_mask
from methods.registry import Method, Option, register


@register("ELODI")
class ELODI(Method):
    """CE + [epoch >= elodi_warmup] (elodi_old_weight LM(z_old, old) + elodi_ensemble_weight LM(z, ensemble))."""
    references = frozenset({"old", "ensemble"})
    options = {
        "elodi_old_weight": Option("ELODI: weight of the logit matching to the old model", min=0),
        "elodi_ensemble_weight": Option("ELODI: weight of the logit matching to the ensemble", min=0),
        "elodi_warmup": Option("ELODI terms start at this 0-based epoch", min=0),
        "topk": Option("ELODI_topk: logits kept per reference", positive=True),
    }
    term_weights = ("elodi_old_weight", "elodi_ensemble_weight")

    def __init__(self, elodi_old_weight=0.6, elodi_ensemble_weight=0.4, elodi_warmup=6, num_old=None):
        super().__init__(num_old)
        self.elodi_old_weight, self.elodi_ensemble_weight = elodi_old_weight, elodi_ensemble_weight
        self.elodi_warmup = elodi_warmup

    def references_at(self, epoch):
        # The official schedule: no inhibition during the first epochs (0-based epoch > 5), so
        # plain cross-entropy that needs no reference model.
        return self.references if epoch >= self.elodi_warmup else frozenset()

    def _lm(self, student, teacher):
        return logit_matching(student, teacher)

    def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        terms = {"ce": F.cross_entropy(logits, targets)}
        if epoch >= self.elodi_warmup:
            c_old = self.c_old(old_logits)
            terms["lm_old"] = self.elodi_old_weight * self._lm(logits[:, :c_old], old_logits)
            terms["lm_ensemble"] = self.elodi_ensemble_weight * self._lm(logits, new_logits)
        return terms


@register("ELODI_topk")
class ELODITopK(ELODI):
    """ELODI with each LM term restricted to the top-k logits of its reference."""

    def __init__(self, elodi_old_weight=0.6, elodi_ensemble_weight=0.4, elodi_warmup=6, topk=10, num_old=None):
        super().__init__(elodi_old_weight, elodi_ensemble_weight, elodi_warmup, num_old)
        self.topk = topk

    def _lm(self, student, teacher):
        mask = topk_mask(teacher, self.topk)
        return logit_matching(student * mask, teacher * mask)
