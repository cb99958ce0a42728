"""The graph IR every pass, the executor and the scheduler front-end share.

A Graph is plain data: no ONNX types survive the loader. Shapes are tuples whose
entries are ints, or strings / None for symbolic dimensions still unresolved.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ValueInfo:
    name: str
    shape: tuple | None
    dtype: np.dtype


@dataclass
class TensorInfo:
    """What shape inference knows of one tensor; `value` is set when it is a known constant."""

    shape: tuple | None
    dtype: np.dtype
    value: np.ndarray | None = None

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclass
class Node:
    op_type: str
    inputs: list[str]          # "" marks an omitted optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""           # "" is ai.onnx; "edgerun" for fused nodes

    def input(self, i: int) -> str:
        """Name of input i, or "" when it is absent."""
        return self.inputs[i] if i < len(self.inputs) else ""

    def describe(self) -> str:
        return f"node {self.name!r} ({self.op_type})"


@dataclass
class Graph:
    nodes: list[Node]
    inputs: list[ValueInfo]                 # graph inputs the caller feeds (initializers excluded)
    outputs: list[ValueInfo]
    initializers: dict[str, np.ndarray]     # read-only arrays
    opset: int
    name: str = "graph"
    value_info: dict[str, TensorInfo] = field(default_factory=dict)

    def copy(self) -> "Graph":
        """A shallow structural copy: new node list and dicts, shared (read-only) weight arrays."""
        return dataclasses.replace(
            self,
            nodes=[dataclasses.replace(n, inputs=list(n.inputs), outputs=list(n.outputs), attrs=dict(n.attrs))
                   for n in self.nodes],
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            initializers=dict(self.initializers),
            value_info=dict(self.value_info),
        )

    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for name in n.inputs:
                if name:
                    users.setdefault(name, []).append(n)
        return users

    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]


def readonly(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    array.flags.writeable = False
    return array
