"""The method registry: a name maps to a loss class with its own hyperparameters.

A method's hyperparameters are its constructor's keyword arguments (all but ``num_old``),
each with its default; the class attribute ``options`` may add, next to them, a help text and
the valid values of each (``Option``). Nothing else declares them: main.py derives its flags
from them (utils/cli.py) and the tables their row labels (tools/results.py).
"""
from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass
from functools import reduce

METHODS: dict[str, type] = {}


@dataclass(frozen=True)
class Option:
    """What a hyperparameter means and which numbers it takes. ``type`` is the flag's type where
    the default does not give it (a default of None); without it such a flag takes a string."""
    help: str = ""
    min: float | None = None   # the value must be >= min
    positive: bool = False     # the value must be > 0
    finite: bool = True        # the value must not be nan or +-inf
    type: type | None = None

    def check(self, value) -> str | None:
        """What is wrong with ``value`` ("must be positive"), or None. Only numbers are checked."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if self.finite and not math.isfinite(value):
            return "must be finite"
        if self.positive and not value > 0:
            return "must be positive"
        if self.min is not None and not value >= self.min:
            return f"must be >= {self.min:g}"
        return None


class Method:
    """Base class of the methods: a training loss with its hyperparameters.

    A subclass overrides ``loss_terms`` (its named terms; the loss is their sum) or, if its loss
    has no terms worth naming, ``__call__``: one of the two. It sets ``references`` to the
    reference models it needs, a subset of {"old", "new", "ensemble"}, and may set:

    * ``options``: {keyword: Option(help, min=..., positive=..., finite=...)} for its
      hyperparameters (entries for keywords it does not take are ignored, so one dict can serve
      a family of methods; a keyword without an entry gets ``Option()``: finite numbers);
    * ``term_weights``: the keywords that weigh terms able to outgrow the cross-entropy (a run
      whose loss diverges is told to lower them);
    * ``same_classes_equivalent``: for a method that differs from another only on the new
      classes, that method's name: with no new class (--old-fraction 1.0) it is refused, naming it.

    ``num_old`` is C_old, the old model's head size; the first C_old columns of the updated
    model's logits are the old classes (the data set's own class order).
    """
    name = "?"
    references: frozenset = frozenset()
    options: dict = {}
    term_weights: tuple = ()
    same_classes_equivalent: str | None = None

    def __init__(self, num_old: int | None = None):
        self.num_old = num_old

    def references_at(self, epoch: int) -> frozenset:
        """The reference models the loss of ``epoch`` (0-based) reads; the others need not run."""
        return self.references

    def split(self, logits, old_logits=None):
        """C_old from the constructor, else from the old model's logits."""
        if self.num_old is not None:
            return self.num_old
        if old_logits is None:
            raise ValueError(f"{self.name} needs num_old or old_logits to know which classes are old")
        return old_logits.shape[1]

    def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0) -> dict:
        """{term name: scalar tensor}, the terms whose sum is the loss."""
        if type(self).__call__ is Method.__call__:
            raise NotImplementedError(f"{type(self).__name__} must override loss_terms or __call__")
        return {"loss": self(logits, targets, old_logits, new_logits, epoch)}

    def __call__(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        terms = self.loss_terms(logits, targets, old_logits, new_logits, epoch)
        return reduce(operator.add, terms.values())  # in the terms' order, as written by hand

    def __repr__(self):
        params = [k for k in _defaults(type(self)) if hasattr(self, k)]
        return f"{self.name}({', '.join(f'{k}={getattr(self, k)!r}' for k in params)})"


def _defaults(cls) -> dict:
    """The constructor's keyword arguments but num_old, with their defaults, in their order."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p.default for p in params if p.name != "num_old"}


def register(name: str):
    """Class decorator: ``@register("MPT_KL")`` makes the class method ``name``."""
    def wrap(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
                raise TypeError(f"method {name!r}: every constructor argument must be a keyword with a "
                                f"default (its hyperparameters), not {p}")
        if cls.loss_terms is Method.loss_terms and cls.__call__ is Method.__call__:
            raise TypeError(f"method {name!r} must override loss_terms or __call__")
        METHODS[name] = cls
        cls.name = name
        return cls
    return wrap


def method_names() -> list[str]:
    return list(METHODS)


def method_class(name: str) -> type:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def declared_defaults(name: str) -> dict:
    """Method ``name``'s hyperparameters with their defaults, in the constructor's order."""
    return _defaults(method_class(name))


def hyperparameters(name: str) -> set:
    """The hyperparameters (keyword arguments) of method ``name``: all of them change its loss."""
    return set(declared_defaults(name))


def option(name: str, param: str) -> Option:
    """The help text and valid values of ``param``, a hyperparameter of method ``name``."""
    return method_class(name).options.get(param, Option())


def get_method(name: str, **hparams) -> Method:
    """Build the loss of method ``name`` with the hyperparameters given (the others at their
    defaults); a keyword the method does not take, or a value out of its range, is an error."""
    accepted = declared_defaults(name)
    unknown = sorted(set(hparams) - set(accepted) - {"num_old"})
    if unknown:
        raise TypeError(f"{name} takes no hyperparameter {', '.join(unknown)}; it takes "
                        f"{', '.join(accepted) or 'none'} (and num_old)")
    for param, value in hparams.items():
        problem = option(name, param).check(value) if param != "num_old" else None
        if problem:
            raise ValueError(f"{name}: {param} {problem}, got {value}")
    return METHODS[name](**hparams)
