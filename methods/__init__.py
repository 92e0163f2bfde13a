"""Negative-flip mitigation methods, each a training loss selected by name.

    from methods import get_method
    loss_fn = get_method("MPT_KL", b=4.0)
    loss = loss_fn(logits, targets, old_logits=old, new_logits=new, epoch=epoch)

A method declares the reference models it needs (``loss_fn.references``, a subset of
{"old", "new", "ensemble"}) so that the training loop runs no teacher it does not use.
"""
from methods.registry import METHODS, Method, get_method, hyperparameters, method_names, register

# Importing the families registers their methods.
from methods import baseline, elodi, mpt, pct  # noqa: E402,F401

__all__ = ["METHODS", "Method", "get_method", "hyperparameters", "method_names", "register"]
