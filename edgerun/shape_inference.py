"""Give every value in a graph a concrete shape and dtype, once the input shapes are known.

Nodes whose inputs are all known constants are evaluated here (small ones), so that
Shape -> Gather -> Concat -> Reshape chains resolve on dynamic-shape exports.
"""
from __future__ import annotations

import math

import numpy as np

from edgerun import limits, ops
from edgerun.errors import EdgerunError, InvalidModelError
from edgerun.ir import Graph, Node, TensorInfo

_MAX_FOLD_ELEMENTS = 1 << 22
_MAX_DIM = 2**31 - 1


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
        outputs = op.infer(node, inputs, opset)
        if _all_constant_and_small(inputs) and _small_or_unknown(outputs):
            values = op.compute(node, [i.value if i is not None else None for i in inputs], opset)
            outputs = [TensorInfo(v.shape, v.dtype, v) for v in map(np.asarray, values)]
    except EdgerunError:
        raise
    except Exception as exc:
        raise InvalidModelError(f"{node.describe()}: shape inference failed: {exc}") from None
    for name, info in zip(node.outputs, outputs):
        _check_tensor_size(node, name, info)
    return outputs


def _all_constant_and_small(inputs) -> bool:
    present = [i for i in inputs if i is not None]
    return (bool(present) and all(i.value is not None for i in present)
            and sum(i.value.size for i in present) <= _MAX_FOLD_ELEMENTS)


def _small_or_unknown(outputs: list[TensorInfo]) -> bool:
    """Evaluate a constant node only when its outputs are small: a few input bytes (ConstantOfShape, Expand,
    Tile, Range) can describe gigabytes. An output whose shape the shape function cannot tell is evaluated."""
    return all(not info.is_static or math.prod(info.shape) <= _MAX_FOLD_ELEMENTS for info in outputs)


def _check_tensor_size(node: Node, name: str, info: TensorInfo) -> None:
    """Every tensor of a plan must fit the C kernels' 32-bit dimensions and edgerun's memory ceiling."""
    if not name or info is None:
        return
    if np.dtype(info.dtype).hasobject:
        raise InvalidModelError(f"{node.describe()}: output {name!r} would hold {np.dtype(info.dtype)} elements "
                                f"(strings or objects); edgerun runs numeric tensors only")
    if not info.is_static:
        return
    if any(d < 0 or d > _MAX_DIM for d in info.shape):
        raise InvalidModelError(f"{node.describe()}: output {name!r} would have shape {list(info.shape)}; "
                                f"dimensions must lie in 0..{_MAX_DIM}")
    limits.check_bytes(math.prod(info.shape) * np.dtype(info.dtype).itemsize,
                       f"{node.describe()}: output {name!r} of shape {list(info.shape)}")


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
