"""Float16 models run in float32 inside: weights upcast once, Casts at the boundary.

A model with float16 weights and activations (or one that Casts its float32 input to float16 and back) would
otherwise run every op on the reference kernels in float16. This pass makes every float16 tensor inside the
graph float32: float16 initializers and known constants are converted once, a Cast to float16 inside the
graph becomes an Identity (declutter removes it), a ConstantOfShape of a float16 value makes float32. The
caller still feeds and receives float16: each float16 graph input gets a Cast to float32 after it, each
float16 graph output a Cast to float16 before it. Activation storage is a separate choice: with
activation_dtype="float16" the arena holds float16 again (edgerun.kernels.f16), with float32 arithmetic.
"""
from __future__ import annotations

import numpy as np

from edgerun.ir import Graph, Node, TensorInfo, readonly
from edgerun.passes.graph_edit import rename_value, replace_input_everywhere, unique_name, unique_node_name

FLOAT16 = np.dtype(np.float16)
FLOAT32 = np.dtype(np.float32)
ONNX_FLOAT, ONNX_FLOAT16 = 1, 10


def run(graph: Graph) -> bool:
    if not _has_float16(graph):
        return False
    boundary = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    _upcast_constants(graph)
    _upcast_inner_values(graph, boundary)
    _retarget_inner_casts(graph, boundary)
    for value in list(graph.inputs):
        if np.dtype(value.dtype) == FLOAT16:
            _cast_input_to_float32(graph, value.name)
    for value in list(graph.outputs):
        if np.dtype(value.dtype) == FLOAT16 and value.name not in {v.name for v in graph.inputs}:
            _cast_output_from_float32(graph, value.name)
    return True


def _has_float16(graph: Graph) -> bool:
    """Float16 left to convert: a float16 constant or inner value, or a float16 graph boundary not yet Cast."""
    if any(np.dtype(a.dtype) == FLOAT16 for a in graph.initializers.values()):
        return True
    boundary = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    if any(np.dtype(info.dtype) == FLOAT16 for name, info in graph.value_info.items() if name not in boundary):
        return True
    if any(_is_cast_to_float16(node) and node.outputs[0] not in boundary for node in graph.nodes):
        return True
    return any(np.dtype(v.dtype) == FLOAT16 and not _read_only_by_its_cast(graph, v.name) for v in graph.inputs)


def _read_only_by_its_cast(graph: Graph, name: str) -> bool:
    users = [n for n in graph.nodes if name in n.inputs]
    return len(users) == 1 and users[0].op_type == "Cast" and users[0].attrs.get("to") == ONNX_FLOAT


def _is_cast_to_float16(node: Node) -> bool:
    return node.op_type == "Cast" and node.domain == "" and node.attrs.get("to") == ONNX_FLOAT16


def _upcast_constants(graph: Graph) -> None:
    for name, array in list(graph.initializers.items()):
        if np.dtype(array.dtype) == FLOAT16:
            graph.initializers[name] = readonly(np.asarray(array, dtype=np.float32))
    for node in graph.nodes:
        value = node.attrs.get("value")
        if node.op_type in ("ConstantOfShape", "Constant") and isinstance(value, np.ndarray) \
                and value.dtype == FLOAT16:
            node.attrs["value"] = value.astype(np.float32)


def _upcast_inner_values(graph: Graph, boundary: set[str]) -> None:
    for name, info in list(graph.value_info.items()):
        if name in boundary or np.dtype(info.dtype) != FLOAT16:
            continue
        value = None if info.value is None else readonly(np.asarray(info.value, dtype=np.float32))
        graph.value_info[name] = TensorInfo(info.shape, FLOAT32, value)


def _retarget_inner_casts(graph: Graph, boundary: set[str]) -> None:
    """A Cast to float16 whose result stays inside the graph now casts to float32 (from float32: Identity)."""
    for index, node in enumerate(graph.nodes):
        if not _is_cast_to_float16(node) or node.outputs[0] in boundary:
            continue
        source = graph.value_info.get(node.inputs[0])
        if source is not None and np.dtype(source.dtype) == FLOAT32:
            graph.nodes[index] = Node("Identity", list(node.inputs), list(node.outputs), {}, node.name)
        else:
            node.attrs["to"] = ONNX_FLOAT


def _cast_input_to_float32(graph: Graph, name: str) -> None:
    if _read_only_by_its_cast(graph, name):
        return
    inner = unique_name(graph, f"{name}/float32")
    replace_input_everywhere(graph, name, inner)
    info = graph.value_info.get(name)
    graph.value_info[inner] = TensorInfo(None if info is None else info.shape, FLOAT32)
    cast = Node("Cast", [name], [inner], {"to": ONNX_FLOAT}, unique_node_name(graph, f"{name}/CastToFloat32"))
    graph.nodes.insert(0, cast)


def _cast_output_from_float32(graph: Graph, name: str) -> None:
    producer = next((n for n in graph.nodes if name in n.outputs), None)
    if producer is None or (_is_cast_to_float16(producer)
                            and np.dtype(graph.value_info[producer.inputs[0]].dtype) != FLOAT16):
        return      # a Cast to float16 of a float32 value: already the boundary
    inner = unique_name(graph, f"{name}/float32")
    info = graph.value_info.get(name)
    rename_value(graph, name, inner)
    graph.value_info[inner] = TensorInfo(None if info is None else info.shape, FLOAT32)
    if info is not None:
        graph.value_info[name] = TensorInfo(info.shape, FLOAT16)
    graph.nodes.append(Node("Cast", [inner], [name], {"to": ONNX_FLOAT16},
                            unique_node_name(graph, f"{name}/CastToFloat16")))
