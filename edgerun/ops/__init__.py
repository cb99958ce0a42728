"""Operator registry: each op family module registers a shape function and a numpy reference kernel.

    infer(node, inputs: list[TensorInfo | None], opset) -> list[TensorInfo]
    compute(node, inputs: list[np.ndarray | None], opset) -> list[np.ndarray]

`None` stands for an omitted optional input. The reference kernels are the oracle:
plain numpy, obviously right, allocating freely. Arena-aware kernels live in
edgerun.kernels.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from edgerun.errors import UnsupportedOperatorError

_FAMILIES = (
    "conv", "norm", "activation", "elementwise", "matmul", "pool",
    "shape_ops", "resize", "fused",
)


@dataclass(frozen=True)
class OpDef:
    op_type: str
    domain: str
    infer: Callable
    compute: Callable


_REGISTRY: dict[tuple[str, str], OpDef] = {}
_loaded = False


def register(op_type: str, infer: Callable, compute: Callable, domain: str = "") -> None:
    _REGISTRY[(domain, op_type)] = OpDef(op_type, domain, infer, compute)


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
