"""Attribute accessors, input checks and shape broadcasting shared by the op families.

Every check raises edgerun.errors.InvalidModelError naming the node (`node.describe()`).
"""
from __future__ import annotations

import numpy as np

from edgerun.errors import InvalidModelError


def invalid(node, message: str) -> InvalidModelError:
    return InvalidModelError(f"{node.describe()}: {message}")


_MISSING = object()


def attr_int(node, name: str, default=_MISSING) -> int:
    """Integer attribute `name` (required when no default is given), validated."""
    value = node.attrs.get(name, default)
    if value is _MISSING:
        raise invalid(node, f"attribute {name!r} is required")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise invalid(node, f"attribute {name!r}={value!r} must be an integer")
    return int(value)


def attr_flag(node, name: str, default: int) -> int:
    """A 0/1 attribute (keepdims, ceil_mode, ...): the ONNX spec gives no meaning to other values."""
    value = attr_int(node, name, default)
    if value not in (0, 1):
        raise invalid(node, f"attribute {name!r}={value!r} must be 0 or 1")
    return value


_INT32_MAX = 2**31 - 1


def check_int32_attr(node, name: str, values) -> None:
    """Geometry attributes (pads, strides, kernel_shape, dilations) reach the C kernels as 32-bit ints."""
    if any(abs(int(v)) > _INT32_MAX for v in values):
        raise invalid(node, f"attribute {name!r}={list(values)!r} has a value beyond 2**31-1")


def attr_float(node, name: str, default: float) -> float:
    value = node.attrs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise invalid(node, f"attribute {name!r}={value!r} must be a number")
    return float(value)


def attr_str(node, name: str, default: str, choices=None) -> str:
    value = node.attrs.get(name, default)
    if not isinstance(value, str) or (choices is not None and value not in choices):
        expected = f"one of {tuple(choices)}" if choices is not None else "a string"
        raise invalid(node, f"attribute {name!r}={value!r} must be {expected}")
    return value


def attr_ints(node, name: str, default=None) -> list[int] | None:
    """List-of-integers attribute, or `default` when absent."""
    value = node.attrs.get(name)
    if value is None:
        return default
    if isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise invalid(node, f"attribute {name!r}={value!r} must be a list of integers")
    return [int(v) for v in value]


def _broadcast_dim(node, a, b):
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int) and isinstance(b, int):
        raise invalid(node, f"cannot broadcast dimensions {a} and {b}")
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return None


def broadcast_shapes(node, shapes) -> tuple | None:
    """Multidirectional broadcast of shapes whose entries may be symbolic; None if any rank is unknown."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    result = [1] * rank
    for shape in shapes:
        padded = (1,) * (rank - len(shape)) + tuple(shape)
        result = [_broadcast_dim(node, r, d) for r, d in zip(result, padded)]
    return tuple(result)


def require_inputs(node, inputs, count: int, name_hint: str = "") -> None:
    present = [i for i in inputs[:count] if i is not None]
    if len(inputs) < count or len(present) < count:
        raise invalid(node, f"expects {count} input(s){name_hint}, got {len(present)}")


def normalized_axes(node, axes, rank: int, what: str = "axes") -> list[int]:
    """Axes in 0..rank-1 (negative ones counted from the end); out-of-range or repeated axes are an error."""
    normalised = []
    for axis in axes:
        if not -rank <= axis < rank:
            raise invalid(node, f"{what}: axis {axis} is out of range for rank {rank}")
        normalised.append(axis % rank)
    if len(set(normalised)) != len(normalised):
        raise invalid(node, f"{what} {list(axes)} repeat an axis")
    return normalised
