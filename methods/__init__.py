"""Negative-flip mitigation methods, each a training loss selected by name.

    from methods import get_method
    loss_fn = get_method("MPT_KL", b=4.0)
    loss = loss_fn(logits, targets, old_logits=old, new_logits=new, epoch=epoch)
    terms = loss_fn.terms(logits, targets, old_logits=old, new_logits=new, epoch=epoch)   # each term

A method is one module of this package: every module whose name does not start with "_" is
imported here, and its ``@register("Name")`` classes become methods (registry.py and losses.py
are helpers that register nothing). Its hyperparameters are its constructor's keyword
arguments; main.py makes a flag of each (see methods/registry.py).

A method declares the reference models it needs (``loss_fn.references``, a subset of
{"old", "new", "ensemble"}; ``loss_fn.references_at(epoch)`` those of one epoch) so that the
training loop runs no teacher it does not use.
"""
import importlib
import pkgutil

from methods.registry import (
    METHODS,
    HyperparameterError,
    Method,
    Option,
    all_hyperparameters,
    check_hyperparameters,
    declared_defaults,
    get_method,
    hyperparameters,
    method_class,
    method_defaults,
    method_label,
    method_names,
    option,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "HyperparameterError", "Method", "Option", "all_hyperparameters", "check_hyperparameters",
           "declared_defaults", "get_method", "hyperparameters", "method_class", "method_defaults", "method_label",
           "method_names", "option", "register"]
