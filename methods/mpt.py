"""Margin Preserving Training (the paper's method) and its ablations.

MPT = CE_b (margin-calibrated cross-entropy, bias b on the new-class logits, training only)
    + focal distillation from the old model on the old-class logits
    + focal distillation from the new reference model on all logits.
"""
from methods.losses import cross_entropy_with_bias, focal_kl, focal_lm
from methods.registry import Method, register


class _MPT(Method):
    distance = None   # "kl", "lm" or None (no distillation)
    biased = True     # False: plain CE in place of CE_b (the *_nobias ablations)

    def __init__(self, b=4.0, alpha=1.0, beta=5.0, tau=5.0, lm_weight=0.4, num_old=None):
        super().__init__(num_old)
        self.b = b if self.biased else 0.0
        self.alpha, self.beta, self.tau, self.lm_weight = alpha, beta, tau, lm_weight

    def _distill(self, student, teacher, targets):
        if self.distance == "kl":
            return focal_kl(student, teacher, targets, self.alpha, self.beta, self.tau)
        return self.lm_weight * focal_lm(student, teacher, targets, self.alpha, self.beta)

    def __call__(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        c_old = self.split(logits, old_logits)
        loss = cross_entropy_with_bias(logits, targets, c_old, self.b)
        if self.distance is not None:
            loss = (loss + self._distill(logits[:, :c_old], old_logits, targets)
                    + self._distill(logits, new_logits, targets))
        return loss


def _variant(name, distance, biased):
    references = frozenset({"old", "new"}) if distance else frozenset()
    weights = ("--lm-weight",) if distance == "lm" else ()
    unused = {"kl": {"lm_weight"}, "lm": {"tau"}, None: {"alpha", "beta", "tau", "lm_weight"}}[distance]
    ignored = frozenset(unused if biased else unused | {"b"})
    cls = type(name.replace("_", ""), (_MPT,), {"distance": distance, "biased": biased, "references": references,
                                                "term_weight_flags": weights, "ignored": ignored})
    return register(name)(cls)


MPTKL = _variant("MPT_KL", "kl", True)
MPTLM = _variant("MPT_LM", "lm", True)
MPTNoDistillation = _variant("MPT_nodistillation", None, True)
MPTKLNoBias = _variant("MPT_KL_nobias", "kl", False)
MPTLMNoBias = _variant("MPT_LM_nobias", "lm", False)
