"""The method registry: a name maps to a loss class with its own hyperparameters."""
from __future__ import annotations

import inspect

METHODS: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = cls
        cls.name = name
        return cls
    return wrap


def method_names() -> list[str]:
    return list(METHODS)


class Method:
    """Base class. Subclasses set ``references`` and implement ``__call__``.

    ``num_old`` is C_old, the old model's head size; the first C_old columns of the
    updated model's logits are the old classes (the data set's own class order).
    """
    name = "?"
    references: frozenset = frozenset()
    # Flags that scale terms able to outgrow the cross-entropy; the message of a diverged run
    # names them next to --lr.
    term_weight_flags: tuple = ()
    # Constructor arguments this method takes but does not use (variants that share a class).
    ignored: frozenset = frozenset()

    def __init__(self, num_old: int | None = None):
        self.num_old = num_old

    def split(self, logits, old_logits=None):
        """C_old from the constructor, else from the old model's logits."""
        if self.num_old is not None:
            return self.num_old
        if old_logits is None:
            raise ValueError(f"{self.name} needs num_old or old_logits to know which classes are old")
        return old_logits.shape[1]

    def __call__(self, logits, targets, old_logits=None, new_logits=None, epoch=0):
        raise NotImplementedError

    def __repr__(self):
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in params.items())})"


def hyperparameters(name: str) -> set:
    """The hyperparameters (keyword arguments) that change method ``name``'s loss."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    cls = METHODS[name]
    return set(inspect.signature(cls.__init__).parameters) - {"self", "num_old"} - cls.ignored


def get_method(name: str, **hparams) -> Method:
    """Build the loss of method ``name``; keyword arguments it does not take are ignored,
    so that one set of command-line hyperparameters can build any method."""
    accepted = hyperparameters(name) | METHODS[name].ignored | {"num_old"}
    return METHODS[name](**{k: v for k, v in hparams.items() if k in accepted})
