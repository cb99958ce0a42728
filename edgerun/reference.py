"""Evaluate a graph node by node with the numpy reference kernels: the oracle path."""
from __future__ import annotations

import numpy as np

from edgerun import ops
from edgerun.errors import EdgerunError, InvalidModelError
from edgerun.ir import Graph
from edgerun.shape_inference import topological_order


def run_graph(graph: Graph, feeds: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
    """Outputs of `graph` for `feeds` (all values when keep_all)."""
    values: dict[str, np.ndarray] = dict(graph.initializers)
    values.update(feeds)
    for node in topological_order(graph):
        op = ops.lookup(node, graph.opset)
        args = [values[i] if i else None for i in node.inputs]
        try:
            results = op.compute(node, args, graph.opset)
        except EdgerunError:
            raise
        except Exception as exc:
            raise InvalidModelError(f"{node.describe()}: {exc}") from None
        for name, result in zip(node.outputs, results):
            if name:
                values[name] = np.asarray(result)
    if keep_all:
        return values
    return {name: values[name] for name in graph.output_names()}
