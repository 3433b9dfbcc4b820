"""Names a package offers but loads only on first use (PEP 562, as Scientific Python's SPEC 1
does): ``import dtlib`` and ``dtlib.study`` stay light, so the torch-free modules (the claims,
the figures) load without the training stack. The one place dtlib imports a module by a call."""
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
