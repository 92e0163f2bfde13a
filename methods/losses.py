"""The loss terms the methods are made of (see the README for the formulas)."""
import torch
import torch.nn.functional as F

from methods.registry import Option

# The hyperparameters of the focal distillation terms, shared by MPT and PCT.
DISTILLATION_OPTIONS = {
    "alpha": Option("focal distillation: weight of every sample", min=0),
    "beta": Option("focal distillation: extra weight where the reference is right", min=0),
    "tau": Option("KL distillation temperature", positive=True),
    "lm_weight": Option("weight of each logit-matching distillation term", min=0),
}


def cross_entropy_with_bias(logits, targets, num_old: int, b: float):
    """CE_b: cross-entropy after adding the margin bias b to the new-class logits.

    Out of place, so the caller's logits (seen by the distillation terms) stay unbiased."""
    if b == 0:
        return F.cross_entropy(logits, targets)
    bias = torch.zeros(logits.shape[1], dtype=logits.dtype, device=logits.device)
    bias[num_old:] = b
    return F.cross_entropy(logits + bias, targets)


def focal_weights(ref_logits, targets, alpha: float, beta: float):
    """w_i = alpha + beta * [the reference model classifies sample i correctly]."""
    correct = ref_logits.argmax(dim=1) == targets
    return alpha + beta * correct.to(ref_logits.dtype)


def kl_distance(student, teacher, tau: float):
    """Per-sample KL(softmax(teacher/tau) || softmax(student/tau)), no tau^2 factor."""
    log_p_teacher = F.log_softmax(teacher / tau, dim=1)
    log_p_student = F.log_softmax(student / tau, dim=1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)


def lm_distance(student, teacher):
    """Per-sample logit matching: squared difference averaged over classes, halved."""
    return 0.5 * (student - teacher).pow(2).mean(dim=1)


def focal_kl(student, teacher, targets, alpha: float, beta: float, tau: float):
    """FD-KL: mean_i w_i * KL_i."""
    return (focal_weights(teacher, targets, alpha, beta) * kl_distance(student, teacher, tau)).mean()


def focal_lm(student, teacher, targets, alpha: float, beta: float):
    """FD-LM: mean_i w_i * LM_i."""
    return (focal_weights(teacher, targets, alpha, beta) * lm_distance(student, teacher)).mean()


def logit_matching(student, teacher):
    """LM: FD-LM with unit weights."""
    return lm_distance(student, teacher).mean()


def topk_mask(ref_logits, k: int):
    """0/1 mask of each row's top-k reference logits."""
    k = min(k, ref_logits.shape[1])
    mask = torch.zeros_like(ref_logits)
    return mask.scatter_(1, ref_logits.topk(k, dim=1).indices, 1.0)
