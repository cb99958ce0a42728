"""Byte sizes as users write them: 1200000, "512KiB", "1.5MB", "2 MiB"."""
from __future__ import annotations

import re

from edgerun.errors import InvalidOptionError

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "k": 1024, "m": 1024**2, "g": 1024**3}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value, option: str = "memory_budget") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidOptionError(f"{option}: expected a size in bytes, got {value!r}")
    if isinstance(value, int):
        number, unit = value, ""
    else:
        match = _PATTERN.match(str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise InvalidOptionError(f"{option}: cannot read {value!r} as a size; write e.g. 1200000, "
                                     f"'512KiB', '1.5MB' or '2MiB'")
        number, unit = float(match.group(1)), match.group(2).lower()
    result = int(number * _UNITS[unit])
    if result <= 0:
        raise InvalidOptionError(f"{option}: the size must be positive, got {value!r}")
    return result


def format_bytes(n: int) -> str:
    if n >= 1024**2:
        return f"{n / 1024**2:.2f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} B"
