"""Settings written as text (the command line's ``key=value``, papermill's ``-p``) turned into
the kinds of the settings records (Config, Study, the benchmark's Bench). No torch here."""
from __future__ import annotations

from dataclasses import fields
from fractions import Fraction
from typing import Any

SCALARS = {"int": int, "float": float, "str": str, "bool": bool}
KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
LIST_NAMES = {int: "integers", float: "numbers", str: "names"}
# The kind of a setting: a scalar type, or (tuple, item type) for a list such as tuple[int, ...].
Kind = Any


def field_kinds(cls: type) -> dict[str, Kind]:
    """The kind of each scalar or list field of a settings dataclass (Config, Study, Bench), by
    its annotation; fields of other types (a nested Config) are left out."""
    out: dict[str, Kind] = {}
    for f in fields(cls):
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        item = t.removeprefix("tuple[").removesuffix(", ...]")
        if t.startswith("tuple[") and item in SCALARS:
            out[f.name] = (tuple, SCALARS[item])
        elif t in SCALARS:
            out[f.name] = SCALARS[t]
    return out


def kind_name(kind: Kind) -> str:
    return f"a comma-separated list of {LIST_NAMES[kind[1]]}" if isinstance(kind, tuple) else KIND_NAMES[kind]


def parse_text(text: str, kind: Kind) -> Any:
    """A command-line value as ``kind`` (bool words, ints, floats with fractions such as 10/255,
    comma-separated items for a list; a string as it is); ValueError when it is not one."""
    if isinstance(kind, tuple):
        return tuple(parse_text(v, kind[1]) for v in text.split(",") if v.strip())
    if kind is str:
        return text
    text = text.strip()
    if kind is bool:
        words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
        if text.lower() not in words:
            raise ValueError(text)
        return words[text.lower()]
    if kind is int:
        return int(text)
    try:  # floats accept fractions, so eps=10/255 works on the command line
        return float(Fraction(text)) if "/" in text else float(text)
    except ZeroDivisionError:
        raise ValueError(text) from None


def parse_setting(name: str, value: Any, kind: Kind, what: str = "Config field") -> Any:
    """One setting of Config, Study or the benchmark as ``kind``: text (the command line's
    ``key=value``, papermill's ``-p``) is parsed; a list becomes a tuple; an int for a float field
    becomes a float; any other value is kept for the record's own checks to judge."""
    if isinstance(value, str) and kind is not str:
        try:
            return parse_text(value, kind)
        except ValueError:
            raise ValueError(f"{what} {name}={value!r} is not {kind_name(kind)}.") from None
    if isinstance(kind, tuple) and isinstance(value, list):
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value



def key_values(args: list[str]) -> dict[str, str]:
    """``["method=dt", "heads=5"]`` -> ``{"method": "dt", "heads": "5"}`` (values still strings)."""
    pairs = {}
    for arg in args:
        if "=" not in arg:
            raise ValueError(f"Argument {arg!r} is not of the form key=value.")
        key, value = arg.split("=", 1)
        pairs[key.strip()] = value
    return pairs
