"""Evaluate a graph node by node with the numpy reference kernels: the oracle path."""
from __future__ import annotations

import numpy as np

from edgerun import ops
from edgerun.errors import EdgerunError, InvalidModelError
from edgerun.ir import Graph, Node
from edgerun.shape_inference import topological_order


def run_graph(graph: Graph, feeds: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
    """Outputs of `graph` for `feeds` (all values when keep_all)."""
    values: dict[str, np.ndarray] = dict(graph.initializers)
    values.update(feeds)
    for node in topological_order(graph):
        results = evaluate_node(node, [values[i] if i else None for i in node.inputs], graph.opset)
        for name, result in zip(node.outputs, results):
            if name:
                values[name] = result
    if keep_all:
        return values
    return {name: values[name] for name in graph.output_names()}


def evaluate_node(node: Node, inputs: list, opset: int, doing: str = "evaluation") -> list[np.ndarray]:
    """The node's reference kernel on `inputs`; any failure is an InvalidModelError naming the node."""
    op = ops.lookup(node, opset)
    try:
        results = op.compute(node, inputs, opset)
    except EdgerunError:
        raise
    except Exception as exc:
        raise InvalidModelError(f"{node.describe()}: {doing} failed: {exc}") from None
    return [np.asarray(r) for r in results]
