"""One ceiling on the bytes a model may make edgerun allocate.

Small files can ask for gigabytes: a 100-byte model whose Resize produces a 64 GiB activation, a ConstantOfShape
folded into 4 GB of constant, a 4 MB .pth zip declaring a 4 GiB storage. Every such request is checked against
one limit BEFORE anything is allocated, and refused with a ResourceLimitError naming the tensor and its size:

- the activation arena of a compiled model (edgerun.executor, bundles included),
- a constant produced by constant folding or shape inference (edgerun.passes.constfold, edgerun.shape_inference),
- the weights of an ONNX model, one initializer and all of them together (edgerun.loader),
- the decompressed storages of a .pth file, one and all together (edgerun.zoo.pth).

The limit is, in order: the value given to set_max_bytes(); the environment variable EDGERUN_MAX_BYTES (a size
such as "8GiB" or "500000000"); else the memory available right now (psutil), so that a request that could not
be satisfied anyway fails cleanly instead of exhausting the machine.
"""
from __future__ import annotations

import os

from edgerun.errors import InvalidOptionError, ResourceLimitError
from edgerun.units import format_bytes, parse_bytes

ENV_VAR = "EDGERUN_MAX_BYTES"
_FALLBACK_BYTES = 4 * 1024**3  # when psutil cannot tell the available memory

_override: int | None = None


def set_max_bytes(value) -> None:
    """Set the ceiling for this process (an int or a size string such as "2GiB"); None restores the default."""
    global _override
    _override = None if value is None else parse_bytes(value, option="max_bytes")


def max_bytes() -> int:
    """The ceiling in bytes now in force."""
    if _override is not None:
        return _override
    configured = os.environ.get(ENV_VAR)
    if configured:
        try:
            return parse_bytes(configured, option=ENV_VAR)
        except InvalidOptionError as exc:
            raise InvalidOptionError(f"environment variable {ENV_VAR}={configured!r}: {exc}") from None
    return _available_memory()


def _available_memory() -> int:
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unable to read /proc: fall back to a fixed, modest default
        return _FALLBACK_BYTES


def check_bytes(nbytes: int, what: str) -> None:
    """Refuse `nbytes` for `what` (e.g. "activation arena", "initializer 'w'") when above the ceiling."""
    limit = max_bytes()
    if nbytes > limit:
        raise ResourceLimitError(
            f"{what} needs {nbytes:,} bytes ({format_bytes(nbytes)}), above edgerun's memory ceiling of "
            f"{limit:,} bytes ({format_bytes(limit)}); if this is intended, raise the ceiling with "
            f"edgerun.limits.set_max_bytes(...) or the environment variable {ENV_VAR} (e.g. {ENV_VAR}=16GiB)",
            nbytes, limit)


def check_arena(arena_bytes: int, tensor_bytes: dict[str, int]) -> None:
    """The activation arena, named by its largest tensor (what the user can look for in the model)."""
    if arena_bytes <= max_bytes():
        return
    largest = max(tensor_bytes.items(), key=lambda item: item[1], default=None)
    detail = f" (largest tensor {largest[0]!r}: {largest[1]:,} bytes)" if largest else ""
    check_bytes(arena_bytes, f"the activation arena{detail}")


class Budget:
    """A running total checked against the ceiling: weights read one after another, storages of one file."""

    def __init__(self, what: str):
        self.what = what
        self.total = 0

    def add(self, nbytes: int, item: str) -> None:
        check_bytes(nbytes, item)
        self.total += nbytes
        check_bytes(self.total, f"{self.what} (reached while reading {item})")
