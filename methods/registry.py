"""The method registry: a name maps to a loss class with its own hyperparameters.

A method's hyperparameters are its constructor's keyword arguments (all but ``num_old``),
each with its default; the class attribute ``options`` may add, next to them, a help text and
the valid values of each (``Option``). Nothing else declares them: main.py derives its flags
from them (utils/cli.py) and the tables their row labels (tools/results.py).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

METHODS: dict[str, type] = {}


@dataclass(frozen=True)
class Option:
    """What a hyperparameter means and which numbers it takes (every number must be finite)."""
    help: str = ""
    min: float | None = None   # the value must be >= min
    max: float | None = None   # the value must be <= max
    positive: bool = False     # the value must be > 0
    type: type | None = None   # the flag's type where the default is None (the term is off)

    def check(self, value) -> str | None:
        """What is wrong with ``value`` ("must be positive"), or None. Only numbers are checked."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        if not math.isfinite(value):
            return "must be finite"
        if self.positive and not value > 0:
            return "must be positive"
        if self.min is not None and not value >= self.min:
            return f"must be >= {self.min:g}"
        if self.max is not None and not value <= self.max:
            return f"must be <= {self.max:g}"
        return None


class HyperparameterError(ValueError):
    """A hyperparameter's value out of its Option's range (the one place ranges are checked)."""

    def __init__(self, method: str, param: str, problem: str, value):
        self.param, self.problem, self.value = param, problem, value
        super().__init__(f"{method}: {param} {problem}, got {value}")


class Method:
    """Base class of the methods: a training loss with its hyperparameters.

    A subclass defines ``loss_terms``, its named terms; the loss is their sum (calling the
    method). It sets ``references`` to the reference models it needs, a subset of
    {"old", "new", "ensemble"}, and may set:

    * ``options``: {keyword: Option(help, min=..., positive=...)} for its
      hyperparameters (entries for keywords it does not take are ignored, so one dict can serve
      a family of methods; a keyword without an entry gets ``Option()``: finite numbers);
    * ``term_weights``: the keywords that weigh terms able to outgrow the cross-entropy (a run
      whose loss diverges is told to lower them);
    * ``same_classes_equivalent``: for a method that differs from another only on the new
      classes, that method's name: with no new class (--old-fraction 1.0) it is refused, naming it;
    * ``dataset_defaults``: {data set: {keyword: default}} where a data set's recipe has its own
      default (MPT's b = 1.5 on ImageNet).

    ``num_old`` is C_old, the old model's head size; the first C_old columns of the updated
    model's logits are the old classes (the data set's own class order).
    """
    name = "?"
    references: frozenset = frozenset()
    options: dict = {}
    term_weights: tuple = ()
    same_classes_equivalent: str | None = None
    dataset_defaults: dict = {}

    def __init__(self, num_old: int | None = None):
        self.num_old = num_old

    def references_at(self, epoch: int) -> frozenset:
        """The reference models the loss of ``epoch`` (0-based) reads; the others need not run."""
        return self.references

    def c_old(self, old_logits=None) -> int:
        """C_old: ``num_old`` from the constructor, else the width of the old model's logits."""
        if self.num_old is not None:
            return self.num_old
        if old_logits is None:
            raise ValueError(f"{self.name} needs num_old or old_logits to know which classes are old")
        return old_logits.shape[1]

    def loss_terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0) -> dict:
        """{term name: scalar tensor}, the terms whose sum is the loss (inputs checked by ``terms``)."""
        raise NotImplementedError

    def terms(self, logits, targets, old_logits=None, new_logits=None, epoch=0) -> dict:
        """``loss_terms``, once the reference logits that the loss of ``epoch`` reads are checked:
        given, one row per sample, the old model's C_old columns the first of the C."""
        uses = self.references_at(epoch)
        shapes = (f"logits {tuple(logits.shape)}, old_logits {_shape(old_logits)}, "
                  f"new_logits {_shape(new_logits)}")
        if "old" in uses:
            if old_logits is None:
                raise ValueError(f"{self.name} reads the old model's logits (reference 'old'), but "
                                 f"old_logits is None ({shapes})")
            width = old_logits.shape[-1]
            if (old_logits.dim() != 2 or len(old_logits) != len(logits) or width > logits.shape[1]
                    or (self.num_old is not None and width != self.num_old)):
                expected = f"{self.num_old}" if self.num_old is not None else f"at most {logits.shape[1]}"
                raise ValueError(f"{self.name}: the old model's logits (reference 'old') must be (N, C_old) "
                                 f"with C_old = num_old = {expected}, the first columns of the logits; "
                                 f"got {shapes}")
        for ref in sorted(uses & {"new", "ensemble"}):
            if new_logits is None or new_logits.shape != logits.shape:
                raise ValueError(f"{self.name} reads the {ref} model's logits (reference {ref!r}) as new_logits "
                                 f"of the logits' shape; got {shapes}")
        return self.loss_terms(logits, targets, old_logits, new_logits, epoch)

    @staticmethod
    def total(terms: dict):
        """The loss of a method's terms: their sum, in their order (the one place it is summed)."""
        return sum(terms.values())

    def __call__(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        """The loss: the sum of the checked terms."""
        return self.total(self.terms(logits, targets, old_logits, new_logits, epoch))

    def __repr__(self):
        params = [k for k in _defaults(type(self)) if hasattr(self, k)]
        return f"{self.name}({', '.join(f'{k}={getattr(self, k)!r}' for k in params)})"


def _shape(t) -> str:
    return "None" if t is None else str(tuple(t.shape))


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
        if cls.loss_terms is Method.loss_terms or cls.__call__ is not Method.__call__:
            raise TypeError(f"method {name!r} must define loss_terms (and not __call__: the loss is "
                            "the sum of the terms)")
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


def method_defaults(name: str, dataset: str | None = None) -> dict:
    """Method ``name``'s hyperparameters as a run on ``dataset`` gets them when not given."""
    return {**declared_defaults(name), **method_class(name).dataset_defaults.get(dataset, {})}


def method_label(name: str, values: dict, defaults: dict) -> str:
    """The method as run labels and tables name it: b where the method takes it (always: a sweep
    over b reads it), its other hyperparameters where they differ from ``defaults``:
    MPT_KL-b4, PCT_LM-lm_weight0.04."""
    parts = [name] + [f"{k}{_value(v)}" for k, v in values.items() if k == "b" or v != defaults.get(k)]
    return "-".join(parts)


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def hyperparameters(name: str) -> set:
    """The hyperparameters (keyword arguments) of method ``name``: all of them change its loss."""
    return set(declared_defaults(name))


def all_hyperparameters() -> list:
    """The hyperparameters of every registered method, each once, in the order they appear."""
    return list(dict.fromkeys(p for name in METHODS for p in declared_defaults(name)))


def option(name: str, param: str) -> Option:
    """The help text and valid values of ``param``, a hyperparameter of method ``name``."""
    return method_class(name).options.get(param, Option())


def check_hyperparameters(name: str, hparams: dict):
    """The one check of a method's hyperparameters: a keyword method ``name`` does not take is a
    TypeError naming the accepted ones, a value out of its Option's range a HyperparameterError."""
    accepted = declared_defaults(name)
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise TypeError(f"{name} takes no hyperparameter {', '.join(unknown)}; it takes "
                        f"{', '.join(accepted) or 'none'} (and num_old)")
    for param, value in hparams.items():
        problem = option(name, param).check(value)
        if problem:
            raise HyperparameterError(name, param, problem, value)


def get_method(name: str, **hparams) -> Method:
    """Build the loss of method ``name`` with the hyperparameters given (the others at their
    defaults) and ``num_old``; see ``check_hyperparameters`` for what is refused."""
    check_hyperparameters(name, {k: v for k, v in hparams.items() if k != "num_old"})
    return METHODS[name](**hparams)
