"""Byte sizes as users write them, one rule for the command line and for Python.

- A plain whole number is bytes: 1200000, "1200000", 1e6 or "1e6" (a float must be whole).
- KB, MB, GB are powers of 1000 ("1.2MB" = 1,200,000); KiB, MiB, GiB powers of 1024 ("2MiB" = 2,097,152);
  B is bytes. Units are case-insensitive ("1.2mb" = "1.2MB") and may follow a space ("2 MiB").
- Refused: bare K, M or G (is "2M" 2,000,000 or 2,097,152?), fractions of a byte ("1.5", "1.0000001KB"),
  zero, negative numbers, booleans and anything else.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

from edgerun.errors import InvalidOptionError

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_AMBIGUOUS = {"k": ("KB", "KiB"), "m": ("MB", "MiB"), "g": ("GB", "GiB")}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_EXAMPLES = "write e.g. 1200000, '1.2MB' (1,200,000 bytes) or '2MiB' (2,097,152 bytes)"


def parse_bytes(value, option: str = "memory_budget") -> int | None:
    """The number of bytes `value` means under the module's rule, or None for None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidOptionError(f"{option}: expected a size in bytes, got {value!r}")
    if isinstance(value, int):
        return _positive(value, value, option)
    if isinstance(value, float):
        return _positive(_whole_bytes(Fraction(value) if math.isfinite(value) else None, value, option), value,
                         option)
    if isinstance(value, str):
        number, unit = _split(value, option)
        return _positive(_whole_bytes(number * _UNITS[unit], value, option), value, option)
    raise InvalidOptionError(f"{option}: expected a size in bytes (an int or a string such as '1.2MB'), "
                             f"got {type(value).__name__} {value!r}")


def _split(text: str, option: str) -> tuple[Fraction, str]:
    match = _PATTERN.match(text)
    unit = match.group(2).lower() if match else ""
    if match and unit in _AMBIGUOUS:
        decimal, binary = _AMBIGUOUS[unit]
        raise InvalidOptionError(f"{option}: {text!r} is ambiguous: write {match.group(1)}{decimal} "
                                 f"(powers of 1000) or {match.group(1)}{binary} (powers of 1024)")
    if not match or unit not in _UNITS:
        raise InvalidOptionError(f"{option}: cannot read {text!r} as a size; {_EXAMPLES}")
    return Fraction(match.group(1)), unit


def _whole_bytes(number: Fraction | None, value, option: str) -> int:
    if number is None or number.denominator != 1:
        raise InvalidOptionError(f"{option}: {value!r} is not a whole number of bytes; {_EXAMPLES}")
    return int(number)


def _positive(result: int, value, option: str) -> int:
    if result <= 0:
        raise InvalidOptionError(f"{option}: the size must be positive, got {value!r}")
    return result


def format_bytes(n: int) -> str:
    if n >= 1024**2:
        return f"{n / 1024**2:.2f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} B"
