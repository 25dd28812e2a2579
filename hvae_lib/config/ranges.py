"""Valid values: one declaration per config key or command-line argument, one check, one sentence.

A config key declares its range where it is defined (see :mod:`hvae_lib.config`)::

    lr: float = key(2e-3, above=0)                        # finite and > 0
    ema_rate: float = key(0.0, at_least=0, below=1)       # in [0, 1)
    optimizer: str = key("adamax", one_of=("adamax", "adamw", "adam"))
    betas: tuple[float, float] = key((0.9, 0.999), at_least=0, below=1)  # each element

and a command-line argument passes the same range as its argparse type::

    p.add_argument("--n", type=Range(at_least=1).parser(int), default=64)

Floats must also be finite (NaN and infinity are outside every range). A value outside gives one
:class:`ConfigError` sentence naming the key, the range and the value.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable


class ConfigError(ValueError):
    """A configuration key or value the user gave does not fit the config."""


@dataclass(frozen=True)
class Range:
    """The values a key accepts: numeric bounds, a set of choices (or a pattern), or free text."""

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    one_of: tuple | Callable[[], tuple] = ()  # a callable is asked at check time (e.g. the dataset registry)
    pattern: str = ""  # a regular expression a value may match instead of one_of, described by pattern_text
    pattern_text: str = ""
    power_of_two: bool = False
    anything: str = ""  # free text (a path, a name): what it is; nothing is outside

    def choices(self) -> tuple:
        return tuple(self.one_of() if callable(self.one_of) else self.one_of)

    def describe(self) -> str:
        """'>= 1', 'in [0, 1)', 'one of a, b', 'a power of two >= 8', or the free text's description."""
        if self.anything:
            return self.anything
        if self.one_of or self.pattern:
            return "one of " + ", ".join([*map(str, self.choices()), *filter(None, [self.pattern_text])])
        low = (">=", self.at_least) if self.at_least is not None else (">", self.above)
        high = ("<=", self.at_most) if self.at_most is not None else ("<", self.below)
        if low[1] is not None and high[1] is not None:
            text = f"in {'[' if low[0] == '>=' else '('}{_num(low[1])}, {_num(high[1])}{']' if high[0] == '<=' else ')'}"
        else:
            op, bound = low if low[1] is not None else high
            text = f"{op} {_num(bound)}" if bound is not None else "any finite number"
        return f"a power of two {text}" if self.power_of_two else text

    def contains(self, value: Any) -> bool:
        if self.anything:
            return True
        if self.one_of or self.pattern:
            return value in self.choices() or bool(self.pattern and isinstance(value, str)
                                                   and re.fullmatch(self.pattern, value))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return ((self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most) and (self.below is None or value < self.below)
                and (not self.power_of_two or (value > 0 and int(value) == value and not int(value) & (int(value) - 1))))

    def check(self, value: Any, name: str) -> None:
        """Raise ``ConfigError('<name> must be <range>, got <value>.')`` when ``value`` is outside."""
        if isinstance(value, tuple):  # every element of a tuple key; a variable-length one may not be empty
            if value and all(self.contains(v) for v in value):
                return
            raise ConfigError(f"{name} must hold {'values' if value else 'at least one value'}, each "
                              f"{self.describe()}, got {value!r}.")
        if not self.contains(value):
            finite = "finite and " if isinstance(value, float) and not math.isfinite(value) else ""
            raise ConfigError(f"{name} must be {finite}{self.describe()}, got {value!r}.")

    def parser(self, kind: type) -> Callable[[str], Any]:
        """An argparse ``type``: parse the text as ``kind`` and check it is in the range."""

        def parse(text: str):
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expects {'an' if kind is int else 'a'} {kind.__name__}, "
                                                 f"got {text!r}") from None
            if not self.contains(value):
                finite = "finite and " if isinstance(value, float) and not math.isfinite(value) else ""
                raise argparse.ArgumentTypeError(f"must be {finite}{self.describe()}, got {text}")
            return value

        parse.range, parse.__name__ = self, kind.__name__  # read by tests and by argparse's messages
        return parse

    def outside(self, kind: type = float) -> list:
        """Values of type ``kind`` outside the range, for tests that walk every key (none for free text)."""
        if self.anything:
            return []
        if self.one_of or self.pattern:
            return ["not-a-valid-choice"]
        values = [float("nan"), float("inf")] if kind is float else []
        if self.at_least is not None:
            values.append(self.at_least - 1)
        if self.above is not None:
            values.append(self.above)
        if self.at_most is not None:
            values.append(self.at_most + 1)
        if self.below is not None:
            values.append(self.below)
        if self.power_of_two:
            values.append(3 * 2 ** max(2, math.ceil(math.log2(max(self.at_least or self.above or 4, 4)))))
        return [kind(v) if math.isfinite(v) else v for v in values]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def key(default: Any, **range_kwargs) -> Any:
    """A dataclass field with a default and a declared :class:`Range` (stored in its metadata)."""
    return field(default=default, metadata={"range": Range(**range_kwargs)})


def range_of(f) -> Range | None:
    """The Range a dataclass field declares, if any."""
    return f.metadata.get("range")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: argument --n: must be >= 1, got 0``) and status 2."""

    def error(self, message: str):
        print(f"error: {message}{'' if message.endswith('.') else '.'} See {self.prog} --help.", file=sys.stderr)
        sys.exit(2)


# The values the command lines' common arguments accept; a value outside is one error line.
COUNT, POSITIVE_COUNT = Range(at_least=0), Range(at_least=1)
SEED = Range(at_least=0, at_most=2**32 - 1)
DEVICE = Range(one_of=("cpu", "cuda"), pattern=r"cuda:\d+", pattern_text="cuda:<index>")
