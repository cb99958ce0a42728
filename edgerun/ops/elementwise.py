"""Element-wise arithmetic with ONNX (numpy-style multidirectional) broadcasting."""
from __future__ import annotations

import numpy as np

from edgerun.errors import InvalidModelError
from edgerun.ir import TensorInfo
from edgerun.ops import register


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


def _truncating_int_divide(node, a, b):
    if np.any(b == 0):
        raise invalid(node, "integer division by zero")
    quotient = np.floor_divide(a, b)
    remainder_nonzero = np.remainder(a, b) != 0
    signs_differ = (a < 0) != (b < 0)
    return quotient + (remainder_nonzero & signs_differ).astype(quotient.dtype)


def _divide(node, a, b):
    if np.issubdtype(a.dtype, np.integer):
        return _truncating_int_divide(node, a, b)
    return np.divide(a, b)


def _power(node, a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        if np.issubdtype(a.dtype, np.integer):
            return np.power(a.astype(np.float64), b).astype(a.dtype)
        return np.power(a, b).astype(a.dtype)


_BINARY = {
    "Add": lambda node, a, b: np.add(a, b),
    "Sub": lambda node, a, b: np.subtract(a, b),
    "Mul": lambda node, a, b: np.multiply(a, b),
    "Div": _divide,
    "Pow": _power,
}


def _check_same_dtype(node, infos):
    dtypes = {np.dtype(i.dtype) for i in infos}
    if len(dtypes) > 1:
        raise invalid(node, f"inputs have different dtypes {sorted(str(d) for d in dtypes)}")


def _binary_infer(node, inputs, opset):
    require_inputs(node, inputs, 2)
    a, b = inputs[0], inputs[1]
    if node.op_type != "Pow":
        _check_same_dtype(node, [a, b])
    return [TensorInfo(broadcast_shapes(node, [a.shape, b.shape]), np.dtype(a.dtype))]


def _binary_compute(node, inputs, opset):
    require_inputs(node, inputs, 2)
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    broadcast_shapes(node, [a.shape, b.shape])
    result = _BINARY[node.op_type](node, a, b)
    return [np.asarray(result, dtype=a.dtype)]


def _sqrt_infer(node, inputs, opset):
    require_inputs(node, inputs, 1)
    return [TensorInfo(inputs[0].shape, np.dtype(inputs[0].dtype))]


def _sqrt_compute(node, inputs, opset):
    require_inputs(node, inputs, 1)
    with np.errstate(invalid="ignore"):
        return [np.sqrt(inputs[0])]


def _sum_infer(node, inputs, opset):
    if not inputs or any(i is None for i in inputs):
        raise invalid(node, "expects one or more inputs, none omitted")
    _check_same_dtype(node, inputs)
    return [TensorInfo(broadcast_shapes(node, [i.shape for i in inputs]), np.dtype(inputs[0].dtype))]


def _sum_compute(node, inputs, opset):
    if not inputs or any(i is None for i in inputs):
        raise invalid(node, "expects one or more inputs, none omitted")
    broadcast_shapes(node, [np.shape(i) for i in inputs])
    total = np.array(inputs[0], copy=True)
    for term in inputs[1:]:
        total = total + term
    return [np.asarray(total, dtype=np.asarray(inputs[0]).dtype)]


for _op in _BINARY:
    register(_op, _binary_infer, _binary_compute)
register("Sqrt", _sqrt_infer, _sqrt_compute)
register("Sum", _sum_infer, _sum_compute)
