"""Give every value in a graph a concrete shape and dtype, once the input shapes are known.

Nodes whose inputs are all known constants are evaluated here (small ones), so that
Shape -> Gather -> Concat -> Reshape chains resolve on dynamic-shape exports.
"""
from __future__ import annotations

import numpy as np

from edgerun import ops
from edgerun.errors import EdgerunError, InvalidModelError
from edgerun.ir import Graph, Node, TensorInfo

_MAX_FOLD_ELEMENTS = 1 << 22


def topological_order(graph: Graph) -> list[Node]:
    """Nodes in an order where every input is produced before use; InvalidModelError on cycles."""
    available = set(graph.initializers) | {v.name for v in graph.inputs} | {""}
    pending = list(graph.nodes)
    ordered: list[Node] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.inputs)]
        if not ready:
            stuck = pending[0]
            missing = [i for i in stuck.inputs if i not in available]
            raise InvalidModelError(f"{stuck.describe()}: input(s) {missing} are never produced "
                                    f"(missing producer or a cycle in the graph)")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        ordered.extend(ready)
        available.update(o for n in ready for o in n.outputs)
    return ordered


def infer_shapes(graph: Graph, input_shapes: dict[str, tuple], input_values: dict | None = None) -> Graph:
    """Return a copy of `graph` with sorted nodes and value_info for every value.

    `input_values` gives the content of inputs known for this plan (small integer inputs)."""
    input_values = input_values or {}
    graph = graph.copy()
    graph.nodes = topological_order(graph)
    infos: dict[str, TensorInfo] = {}
    for value in graph.inputs:
        infos[value.name] = TensorInfo(tuple(input_shapes[value.name]), value.dtype, input_values.get(value.name))
    for name, array in graph.initializers.items():
        infos[name] = TensorInfo(array.shape, array.dtype, array)
    for node in graph.nodes:
        outputs = _infer_node(node, [infos.get(i) if i else None for i in node.inputs], graph.opset)
        for name, info in zip(node.outputs, outputs):
            if name:
                infos[name] = info
    graph.value_info = infos
    _check_outputs_known(graph)
    _check_shapes_known(graph)
    return graph


def _infer_node(node: Node, inputs: list[TensorInfo | None], opset: int) -> list[TensorInfo]:
    op = ops.lookup(node, opset)
    try:
        if _all_constant_and_small(inputs):
            values = op.compute(node, [i.value if i is not None else None for i in inputs], opset)
            return [TensorInfo(v.shape, v.dtype, v) for v in map(np.asarray, values)]
        return op.infer(node, inputs, opset)
    except EdgerunError:
        raise
    except Exception as exc:
        raise InvalidModelError(f"{node.describe()}: shape inference failed: {exc}") from None


def _all_constant_and_small(inputs) -> bool:
    present = [i for i in inputs if i is not None]
    return (bool(present) and all(i.value is not None for i in present)
            and sum(i.value.size for i in present) <= _MAX_FOLD_ELEMENTS)


def _check_outputs_known(graph: Graph) -> None:
    for out in graph.outputs:
        if out.name not in graph.value_info:
            raise InvalidModelError(f"graph output {out.name!r} is not produced by any node")


def _check_shapes_known(graph: Graph) -> None:
    for node in graph.nodes:
        for name in node.outputs:
            info = graph.value_info.get(name)
            if name and (info is None or not info.is_static):
                raise InvalidModelError(f"{node.describe()}: the shape of output {name!r} depends on data edgerun "
                                        f"cannot know before the run; edgerun plans memory for static shapes only")
