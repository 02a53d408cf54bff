"""Name look-ups with a did-you-mean hint, shared by configs and every registry (strategies,
ASR backends, metrics, presets): a registry is a plain dict, and this is its one look-up."""
from __future__ import annotations

import difflib
from typing import Iterable, Mapping, TypeVar

from s2s.errors import UnknownNameError

T = TypeVar("T")


def closest(name: str, options: Iterable[str], cutoff: float = 0.5) -> str | None:
    """The option most like `name`, or None when nothing is close enough."""
    found = difflib.get_close_matches(name, list(options), n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """" Did you mean 'x'?" or ""."""
    close = closest(name, options)
    return f" Did you mean '{close}'?" if close else ""


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """`table[name]`, or an UnknownNameError naming `what` was looked up, the closest name and
    every available one."""
    if name in table:
        return table[name]
    raise UnknownNameError(f"unknown {what} '{name}'.{did_you_mean(name, table)} Available: {', '.join(table)}")
