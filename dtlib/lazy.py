"""Names a package offers but loads only on first use (PEP 562, as Scientific Python's SPEC 1
does): ``import dtlib`` and ``dtlib.study`` stay light, so the torch-free modules (the claims,
the figures) load without the training stack. And a user's model factory named on the command
line (``python -m dtlib attack package.module:factory``). The one place dtlib imports by a call."""
from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` for ``exports`` (a name -> the module of
    ``package`` that defines it)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted([*exports, "EXPORTS"])

    return __getattr__, __dir__


def factory_from(spec: str) -> Callable[[], Any]:
    """The callable ``package.module:name`` names (imported from the working directory and the path)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"Model {spec!r} is not of the form package.module:factory.")
    try:
        factory = getattr(import_module(module), name)
    except ImportError as e:
        raise ValueError(f"Model {spec!r}: module {module!r} cannot be imported ({e}).") from None
    except AttributeError:
        raise ValueError(f"Model {spec!r}: module {module!r} has no {name!r}.") from None
    if not callable(factory):
        raise ValueError(f"Model {spec!r} is not callable.")
    return factory
