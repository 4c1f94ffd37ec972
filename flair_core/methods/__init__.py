"""Methods by name: the registry every caller reads. Each method module pairs its settings, its model (shared
towers + its head) and its loss, and ends with its `METHOD` entry (method.py says what an entry holds).

The loss object also says what the method needs from the data (`views`) and which batch entries its model
takes (`inputs`); its forward turns the model's output dict into named terms that the loop sums.
"""

from __future__ import annotations

from torch import nn

from flair_core.methods import clip, dreamlip, filip, flair
from flair_core.methods.method import Method

METHODS: dict[str, Method] = {m.name: m for m in (flair.METHOD, clip.METHOD, filip.METHOD, dreamlip.METHOD)}


def register(method: Method) -> Method:
    """Add a method defined outside this package (e.g. a plug-in or a test's toy method)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHODS)})") from None


def method_of(model: nn.Module) -> Method:
    """The method a model was built for (`create_model` records it on the model)."""
    name = getattr(model, "method_name", None)
    if name is None:
        raise ValueError(f"{type(model).__name__} records no method: build it with flair_core.create_model")
    return get_method(name)


__all__ = ["METHODS", "Method", "get_method", "method_of", "register"]


def own_modes_text() -> str:
    """`flair flair, clip global, …`: each registered method and its own retrieval mode, in registry order."""
    return ", ".join(f"{m.name} {m.primary_mode}" for m in METHODS.values())
