"""Replace nodes whose outputs are known before the run by initializers.

A node folds when shape inference already knows the value of each output (Shape of a static
tensor and the Gather/Cast/Concat/Unsqueeze chains behind it), or when all its inputs are
constants, in which case its reference kernel computes the value here.
"""
from __future__ import annotations

import math

import numpy as np

from edgerun import limits
from edgerun.ir import Graph, Node, TensorInfo, readonly
from edgerun.reference import evaluate_node
from edgerun.passes.graph_edit import constant_value, is_graph_output, remove_nodes

MAX_FOLDED_ELEMENTS = 16 * 1024 * 1024
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli"}


def run(graph: Graph) -> bool:
    changed = False
    for node in list(graph.nodes):
        if not _may_fold(graph, node):
            continue
        values = _known_outputs(graph, node)
        if values is None:
            continue
        _replace_by_constants(graph, node, values)
        changed = True
    return changed


def _may_fold(graph: Graph, node: Node) -> bool:
    # A graph output stays produced by a node: callers and executors expect outputs to be computed.
    return (node.op_type not in _NEVER_FOLD and bool(node.outputs)
            and not any(is_graph_output(graph, o) for o in node.outputs))


def _known_outputs(graph: Graph, node: Node) -> list[np.ndarray] | None:
    inferred = [constant_value(graph, o) if o else None for o in node.outputs]
    if all(v is not None for v, o in zip(inferred, node.outputs) if o):
        return [np.asarray(v) if v is not None else None for v in inferred]
    inputs = [constant_value(graph, i) if i else None for i in node.inputs]
    if any(v is None for v, i in zip(inputs, node.inputs) if i):
        return None
    if sum(v.size for v in inputs if v is not None) > MAX_FOLDED_ELEMENTS or _outputs_too_large(graph, node):
        return None
    return _evaluate(graph, node, inputs)


def _outputs_too_large(graph: Graph, node: Node) -> bool:
    """Whether the outputs must stay computed at run time: when their shapes are unknown. A constant output is a
    weight however large (kept out of the activation arena), but a few constant bytes can describe gigabytes
    (ConstantOfShape, Expand, Tile): its size is checked against edgerun's ceiling before it is evaluated."""
    for name in node.outputs:
        info = graph.value_info.get(name) if name else None
        if name and (info is None or not info.is_static):
            return True
        if name:
            limits.check_bytes(math.prod(info.shape) * np.dtype(info.dtype).itemsize,
                               f"{node.describe()}: folded constant {name!r} of shape {list(info.shape)}")
    return False


def _evaluate(graph: Graph, node: Node, inputs: list) -> list[np.ndarray]:
    return evaluate_node(node, inputs, graph.opset, doing="constant folding")


def _replace_by_constants(graph: Graph, node: Node, values: list) -> None:
    for name, value in zip(node.outputs, values):
        if not name or value is None:
            continue
        array = readonly(np.array(value))
        graph.initializers[name] = array
        graph.value_info[name] = TensorInfo(array.shape, array.dtype, array)
    remove_nodes(graph, [node])
