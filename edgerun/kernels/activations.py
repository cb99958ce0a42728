"""The activation table: every pointwise activation a convolution or block can carry, defined once.

Everything else is derived from `TABLE`:
- the kinds (`ACTIVATION_KINDS`, fused-attribute names such as "hardsigmoid") and parameter counts;
- the native code of each kind: its index here, which is the C enum `er_activation` in
  `native/kernels.h` (the block between the GENERATED markers is written by `write_header()`, see
  REGENERATE; tests/test_activation_table.py checks it and the C switch);
- the ONNX op a kind stands for, its attributes and their defaults (the op registration in
  edgerun/ops/activation.py and the fusion in edgerun/passes/fuse_activation.py read them);
- the numpy application: `reference` (allocating, the oracle), `inplace` (flat, with a scratch
  that may be shorter than the values) and `into` (x -> y without any temporary, None when the
  kind needs one).

NaN and +-Inf: every kind maps them as onnxruntime does (NaN stays NaN; see tests/test_nan_inf.py).
This module imports nothing of edgerun but its errors, so ops, passes and kernels can all use it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgerun.errors import EdgerunError


@dataclass(frozen=True)
class ActivationKind:
    name: str                                  # fused attribute value ("" = none)
    op_type: str | None                        # the ONNX op it stands for (None: a pattern a pass recognises)
    params: tuple[tuple[str, float], ...]      # (ONNX attribute, default), in the native (a, b) order
    reference: Callable                        # reference(x, *params) -> new array of x's dtype
    inplace: Callable | None                   # inplace(values, tmp, *params); tmp None unless needs_tmp
    into: Callable | None                      # into(x, y, *params): y = act(x), no temporary
    needs_tmp: bool = False                    # inplace needs a scratch (any length >= 1) beside values
    params_from_inputs: bool = False           # Clip: bounds are inputs 1, 2 from opset 11

    @property
    def code(self) -> int:
        return KIND_INDEX[self.name]

    @property
    def c_name(self) -> str:
        return "ER_ACT_" + (self.name.upper() or "NONE")

    def params_from_attrs(self, attrs: dict) -> list[float]:
        return [float(attrs.get(name, default)) for name, default in self.params]


# ---------------------------------------------------------------- numpy implementations
def _relu_reference(x):
    return np.maximum(x, np.zeros((), x.dtype))


def _relu_into(x, y):
    np.maximum(x, 0, out=y)


def _relu_inplace(values, tmp):
    np.maximum(values, 0.0, out=values)


def _clip_reference(x, low, high):
    result = x
    if low is not None and not np.isneginf(low):
        result = np.maximum(result, low)
    if high is not None and not np.isposinf(high):
        result = np.minimum(result, high)
    return np.array(result).astype(x.dtype, copy=result is x)


def _clip_into(x, y, low, high):
    if low is None and high is None:
        np.copyto(y, x)
    else:
        np.clip(x, low, high, out=y)


def _clip_inplace(values, tmp, low, high):
    np.maximum(values, np.float32(low), out=values)
    np.minimum(values, np.float32(high), out=values)


def _hardsigmoid_reference(x, alpha, beta):
    return np.clip(alpha * x + beta, 0, 1).astype(x.dtype, copy=False)


def _hardsigmoid_into(x, y, alpha, beta):
    np.multiply(x, np.float32(alpha), out=y)
    np.add(y, np.float32(beta), out=y)
    np.clip(y, 0, 1, out=y)


def _hardsigmoid_inplace(values, tmp, alpha, beta):
    _hardsigmoid_into(values, values, alpha, beta)


def _hardswish_reference(x):
    return (x * _hardsigmoid_reference(x, 1 / 6, 0.5)).astype(x.dtype, copy=False)


def _hardswish_into(x, y):
    _hardsigmoid_into(x, y, 1.0 / 6.0, 0.5)
    np.multiply(y, x, out=y)


def _hardswish_inplace(part, tmp):
    _hardsigmoid_into(part, tmp, 1.0 / 6.0, 0.5)
    np.multiply(part, tmp, out=part)


def _leakyrelu_reference(x, alpha):
    return np.where(x >= 0, x, x * np.asarray(alpha, dtype=x.dtype)).astype(x.dtype, copy=False)


def _leakyrelu_into(x, y, alpha):
    np.multiply(x, np.float32(alpha), out=y)
    (np.maximum if alpha <= 1 else np.minimum)(x, y, out=y)


def _leakyrelu_inplace(part, tmp, alpha):
    # as _leakyrelu_into (x + (alpha - 1) * min(x, 0) would turn -inf into NaN)
    np.multiply(part, np.float32(alpha), out=tmp)
    (np.maximum if alpha <= 1 else np.minimum)(part, tmp, out=part)


def _sigmoid_reference(x):
    # exp of a non-positive number only: no overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _sigmoid_into(x, y):
    with np.errstate(over="ignore"):
        np.negative(x, out=y)
        np.exp(y, out=y)
    np.add(y, 1, out=y)
    np.reciprocal(y, out=y)


def _sigmoid_inplace(values, tmp):
    _sigmoid_into(values, values)


def _silu_reference(x):
    # Sigmoid*x (SiLU, Swish-1): recognised as Mul(x, Sigmoid(x)) by passes/fuse_silu.py, no ONNX op of its own
    with np.errstate(invalid="ignore"):     # -inf * 0 is NaN, as in onnxruntime's Mul
        return (x * _sigmoid_reference(x)).astype(x.dtype, copy=False)


def _silu_into(x, y):
    _sigmoid_into(x, y)
    with np.errstate(invalid="ignore"):
        np.multiply(y, x, out=y)


def _silu_inplace(part, tmp):
    _sigmoid_into(part, tmp)
    with np.errstate(invalid="ignore"):
        np.multiply(part, tmp, out=part)


def _elu_reference(x, alpha):
    negative = np.asarray(alpha, dtype=x.dtype) * np.expm1(np.minimum(x, np.zeros((), x.dtype)))
    return np.where(x > 0, x, negative).astype(x.dtype, copy=False)


def _elu_inplace(part, tmp, alpha):
    # max(x, 0) + alpha * expm1(min(x, 0)): a NaN stays NaN, -inf gives -alpha
    np.minimum(part, 0.0, out=tmp)
    np.expm1(tmp, out=tmp)
    np.multiply(tmp, np.float32(alpha), out=tmp)
    np.maximum(part, 0.0, out=part)
    np.add(part, tmp, out=part)


def _none_reference(x):
    return x


TABLE: tuple[ActivationKind, ...] = (
    ActivationKind("", None, (), _none_reference, None, None),
    ActivationKind("relu", "Relu", (), _relu_reference, _relu_inplace, _relu_into),
    ActivationKind("clip", "Clip", (("min", -np.inf), ("max", np.inf)), _clip_reference, _clip_inplace, _clip_into,
                   params_from_inputs=True),
    ActivationKind("hardswish", "HardSwish", (), _hardswish_reference, _hardswish_inplace, _hardswish_into,
                   needs_tmp=True),
    ActivationKind("hardsigmoid", "HardSigmoid", (("alpha", 0.2), ("beta", 0.5)), _hardsigmoid_reference,
                   _hardsigmoid_inplace, _hardsigmoid_into),
    ActivationKind("leakyrelu", "LeakyRelu", (("alpha", 0.01),), _leakyrelu_reference, _leakyrelu_inplace,
                   _leakyrelu_into, needs_tmp=True),
    ActivationKind("sigmoid", "Sigmoid", (), _sigmoid_reference, _sigmoid_inplace, _sigmoid_into),
    ActivationKind("elu", "Elu", (("alpha", 1.0),), _elu_reference, _elu_inplace, None, needs_tmp=True),
    ActivationKind("silu", None, (), _silu_reference, _silu_inplace, _silu_into, needs_tmp=True),
)

KINDS: dict[str, ActivationKind] = {kind.name: kind for kind in TABLE}
KIND_INDEX: dict[str, int] = {kind.name: index for index, kind in enumerate(TABLE)}
BY_OP_TYPE: dict[str, ActivationKind] = {kind.op_type: kind for kind in TABLE if kind.op_type}
ACTIVATION_KINDS: tuple[str, ...] = tuple(kind.name for kind in TABLE)
_PARAM_COUNTS: dict[str, int] = {kind.name: len(kind.params) for kind in TABLE}
NATIVE_PARAMS = 2   # er_act holds two floats (a, b)
assert all(len(kind.params) <= NATIVE_PARAMS for kind in TABLE)


@dataclass(frozen=True)
class Activation:
    """A pointwise activation: kind and its parameters (docs/architecture.md)."""

    kind: str = ""
    params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EdgerunError(f"unknown activation {self.kind!r}; known: {ACTIVATION_KINDS}")
        params = tuple(float(p) for p in (self.params or ()))
        if len(params) != _PARAM_COUNTS[self.kind]:
            raise EdgerunError(f"activation {self.kind!r} takes {_PARAM_COUNTS[self.kind]} params, "
                               f"got {list(params)}")
        object.__setattr__(self, "params", params)

    @property
    def code(self) -> int:
        """Index of the kind in TABLE, as the native kernel numbers them."""
        return KIND_INDEX[self.kind]

    def native_params(self) -> tuple[float, float]:
        """The two floats the native kernel reads (unused ones are 0)."""
        padded = self.params + (0.0, 0.0)
        return padded[0], padded[1]


def apply_inplace(values: np.ndarray, activation: Activation, tmp: np.ndarray | None) -> None:
    """Apply the activation to a flat contiguous array in place; `tmp` is flat scratch (needed by kinds
    with needs_tmp) that may be shorter than `values`: the work is then cut into slices of its size."""
    kind = KINDS[activation.kind]
    if kind.inplace is None:
        return
    if not kind.needs_tmp:
        kind.inplace(values, None, *activation.params)
        return
    step = tmp.shape[0]
    for start in range(0, values.shape[0], step):
        part = values[start:start + step]
        kind.inplace(part, tmp[: part.shape[0]], *activation.params)


# ---------------------------------------------------------------- the C enum
HEADER = Path(__file__).with_name("native") / "kernels.h"
REGENERATE = 'python -c "from edgerun.kernels import activations; activations.write_header()"'
BEGIN = "/* BEGIN GENERATED from the table in edgerun/kernels/activations.py by activations.write_header() */"
END = "/* END GENERATED */"


def c_enum() -> str:
    """The C declaration of the activation codes and er_act, as kernels.h must hold it."""
    width = max(len(kind.c_name) for kind in TABLE) + 1
    lines = [BEGIN, "enum er_activation {"]
    for index, kind in enumerate(TABLE):
        params = ", ".join(name for name, _ in kind.params) or "-"
        lines.append(f"    {(kind.c_name + ',').ljust(width)} /* {index}: {kind.name or 'none'} ({params}) */")
    lines += ["    ER_ACT_COUNT", "};", "", "typedef struct {",
              "    int kind;      /* enum er_activation */",
              "    float a, b;    /* the parameters in the order listed above; unused ones are 0 */",
              "} er_act;", END]
    return "\n".join(lines)


def generated_block(header_text: str) -> str | None:
    match = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), header_text, re.S)
    return None if match is None else match.group(0)


def write_header(path: Path = HEADER) -> bool:
    """Rewrite the generated block of kernels.h; True when it changed."""
    text = path.read_text()
    block = generated_block(text)
    if block is None:
        raise EdgerunError(f"{path}: no generated activation block ({BEGIN!r} ... {END!r})")
    new = text.replace(block, c_enum())
    if new != text:
        path.write_text(new)
    return new != text

