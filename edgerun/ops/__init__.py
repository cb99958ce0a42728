"""Operator registry: one definition per op, registered by its family module (edgerun/ops/<family>.py).

    register(op_type, infer, compute, domain="", *, macs=None, step=None, native=None, any_dtype=False)

    infer(node, inputs: list[TensorInfo | None], opset) -> list[TensorInfo]
    compute(node, inputs: list[np.ndarray | None], opset) -> list[np.ndarray]
    macs(node, in_shapes, out_shapes) -> int          (default: one per output element)
    step: the arena kernel (an edgerun.kernels.numpy_steps.StepKernel instance) or None
    native: a class (or factory) `native(step, threads) -> StepKernel`: the C variant, or None
    any_dtype: the arena kernel moves bytes and takes any dtype (else float32 only)

`None` stands for an omitted optional input. The reference kernels are the oracle: plain numpy,
obviously right, allocating freely; an op without an arena kernel runs its reference kernel and the
result is copied into the arena. Imports go downward: op definitions import kernel classes from
edgerun.kernels, which never import edgerun.ops (the two executor shims excepted, see arena_kernel).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgerun.errors import UnsupportedOperatorError

_FAMILIES = (
    "conv", "norm", "activation", "elementwise", "matmul", "pool",
    "shape_ops", "resize", "fused", "quant", "squeeze_excite", "channel_shuffle",
)


def output_elements(node, in_shapes, out_shapes) -> int:
    """The default multiply-add count: one per element of the first output."""
    return int(np.prod(out_shapes[0], dtype=np.int64))


@dataclass(frozen=True)
class OpDef:
    op_type: str
    domain: str
    infer: Callable
    compute: Callable
    macs: Callable = output_elements
    step: object = None
    native: Callable | None = None
    any_dtype: bool = False


_REGISTRY: dict[tuple[str, str], OpDef] = {}
_loaded = False


def register(op_type: str, infer: Callable, compute: Callable, domain: str = "", *, macs: Callable | None = None,
             step=None, native: Callable | None = None, any_dtype: bool = False) -> None:
    """Define an op: everything edgerun knows of it, in one call (see the module docstring)."""
    if native is not None and step is None:
        raise ValueError(f"{op_type}: a native variant needs a numpy arena kernel to fall back on")
    _REGISTRY[(domain, op_type)] = OpDef(op_type, domain, infer, compute, macs or output_elements, step, native,
                                         any_dtype)


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for family in _FAMILIES:
            importlib.import_module(f"edgerun.ops.{family}")


def _normal_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def lookup(node, opset: int) -> OpDef:
    _load_families()
    op = _REGISTRY.get((_normal_domain(node.domain), node.op_type))
    if op is None:
        raise UnsupportedOperatorError(node.name, node.op_type, node.domain, opset, supported_ops())
    return op


def is_supported(op_type: str, domain: str = "") -> bool:
    _load_families()
    return (_normal_domain(domain), op_type) in _REGISTRY


def supported_ops() -> list[str]:
    _load_families()
    return sorted(op for domain, op in _REGISTRY if domain == "")


def definition(op_type: str, domain: str = "") -> OpDef | None:
    """The registered definition of an op, or None."""
    _load_families()
    return _REGISTRY.get((_normal_domain(domain), op_type))


def _by_op_type(op_type: str) -> OpDef | None:
    _load_families()
    found = [op for (domain, name), op in _REGISTRY.items() if name == op_type]
    return found[0] if len(found) == 1 else None


def arena_kernel(node, in_dtypes, out_dtypes, backend: str = "numpy", threads: int = 1):
    """The arena kernel that runs `node`, or None when its reference op must run: the op's `step`
    (float32 only unless any_dtype), turned down when `step.supports(node)` is False, replaced on the
    native backend by a new instance of its native variant."""
    op = definition(node.op_type, node.domain)
    kernel = None if op is None else op.step
    if kernel is None or not kernel.supports(node):
        return None
    if not op.any_dtype and any(d != np.float32 for d in list(in_dtypes) + list(out_dtypes) if d is not None):
        return None
    if backend == "native":
        return native_kernel(node.op_type, kernel, threads, node.domain)
    return kernel


def native_kernel(op_type: str, numpy_kernel, threads: int = 1, domain: str | None = None):
    """A new instance of the op's native variant (it keeps per-node weight layouts and the thread count),
    or `numpy_kernel` when the op has none. `domain` None: the one op of that name in any domain."""
    op = _by_op_type(op_type) if domain is None else definition(op_type, domain)
    if op is None or op.native is None:
        return numpy_kernel
    return op.native(numpy_kernel, threads)
