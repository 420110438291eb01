"""Flags as data: one definition per flag, from which the CLI adds its argparse arguments and a config's
``args:`` list is parsed, so that a flag means the same (type, default, choices) in both places."""

from __future__ import annotations

import argparse
import builtins
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from clir.errors import ClirError


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be >= 1")
    return v


@dataclass(frozen=True)
class Flag:
    """One command-line flag, with what ``argparse.ArgumentParser.add_argument`` takes (None: not given)."""

    name: str
    help: str | None = None
    type: Callable[[str], Any] | None = None
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] | None = None
    action: str | builtins.type[argparse.Action] | None = None
    metavar: str | None = None
    dest: str | None = None

    def add_to(self, p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        kwargs: dict[str, Any] = {
            key: value
            for key in ("help", "type", "default", "choices", "action", "metavar", "dest")
            if (value := getattr(self, key)) is not None
        }
        if self.required:
            kwargs["required"] = True
        if isinstance(self.default, list):  # argparse appends to a default list: give each parser its own
            kwargs["default"] = list(self.default)
        p.add_argument(self.name, **kwargs)


def add_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, flags: Iterable[Flag]) -> None:
    for flag in flags:
        flag.add_to(p)


class FlagParser(argparse.ArgumentParser):
    """A parser whose errors are ClirErrors naming the flag (argparse's default prints usage and exits)."""

    def error(self, message: str) -> NoReturn:
        raise ClirError(f"`clir {self.prog}`: {message}")


def parse_flags(verb: str, flags: Iterable[Flag], argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed with ``flags`` as ``clir VERB`` would parse it; a bad flag is a ClirError naming it."""
    p = FlagParser(prog=verb, add_help=False)
    add_flags(p, flags)
    return p.parse_args([str(a) for a in argv])
