"""ELODI (Zhao et al., 2022): logit matching to the old model and to an ensemble of new models.

``new_logits`` is the mean logits of the ensemble members."""
import torch.nn.functional as F

from methods.losses import logit_matching, topk_mask
from methods.registry import Method, register


@register("ELODI")
class ELODI(Method):
    """CE + [epoch >= warmup_epochs] (old_weight LM(z_old, old) + ens_weight LM(z, ensemble))."""
    references = frozenset({"old", "ensemble"})
    term_weight_flags = ("--elodi-old-weight", "--elodi-ensemble-weight")
    use_topk = False
    ignored = frozenset({"topk"})

    def __init__(self, old_weight=0.6, ensemble_weight=0.4, warmup_epochs=6, topk=10, num_old=None):
        super().__init__(num_old)
        self.old_weight, self.ensemble_weight = old_weight, ensemble_weight
        self.warmup_epochs, self.topk = warmup_epochs, topk

    def _lm(self, student, teacher):
        if self.use_topk:
            mask = topk_mask(teacher, self.topk)
            return logit_matching(student * mask, teacher * mask)
        return logit_matching(student, teacher)

    def __call__(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        ce = F.cross_entropy(logits, targets)
        # The official schedule: no inhibition during the first epochs (0-based epoch > 5).
        if epoch < self.warmup_epochs:
            return ce
        c_old = self.split(logits, old_logits)
        return (ce + self.old_weight * self._lm(logits[:, :c_old], old_logits)
                + self.ensemble_weight * self._lm(logits, new_logits))


@register("ELODI_topk")
class ELODITopK(ELODI):
    """ELODI with each LM term restricted to the top-k logits of its reference."""
    use_topk = True
    ignored = frozenset()
