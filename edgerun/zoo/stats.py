"""Parameter and multiply-add counts of a model, by walking its ONNX graph (as the papers count:
learned weights and biases of Conv/Gemm and BN scale/shift; multiply-adds of Conv and Gemm)."""
from __future__ import annotations

import math

import onnx

from edgerun.errors import InvalidModelError

# op type -> positions of inputs that are learned parameters
_LEARNED_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "BatchNormalization": (1, 2)}


def count_parameters(model: onnx.ModelProto) -> int:
    """Learned parameters: Conv/Gemm weights and biases, BatchNormalization scale and shift
    (running statistics are buffers, not parameters)."""
    sizes = {init.name: math.prod(init.dims) for init in model.graph.initializer}
    counted = set()
    for node in model.graph.node:
        for position in _LEARNED_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] in sizes:
                counted.add(node.input[position])
    return sum(sizes[name] for name in counted)


def _inferred_with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of `model` with its symbolic batch dimension set to `batch`, shapes inferred (strict)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            dims[0].dim_value = batch
    return onnx.shape_inference.infer_shapes(fixed, strict_mode=True)


def _static_shapes(model: onnx.ModelProto, batch: int) -> dict[str, list[int]]:
    inferred = _inferred_with_batch(model, batch)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _conv_macs(node, shapes, weights):
    out = shapes.get(node.output[0])
    if node.input[1] not in weights or not out or None in out:
        raise InvalidModelError(f"node {node.name!r}: cannot count MACs without a constant weight "
                                f"and a static output shape")
    cout, cin_per_group, *kernel = weights[node.input[1]]
    return math.prod(out) * cin_per_group * math.prod(kernel)


def _gemm_macs(node, shapes, weights):
    out = shapes.get(node.output[0])
    a = shapes.get(node.input[0])
    if not out or not a or None in out or None in a:
        raise InvalidModelError(f"node {node.name!r}: cannot count MACs without static shapes")
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    inner = a[0] if trans_a else a[1]
    return math.prod(out) * inner


def count_macs(model: onnx.ModelProto, batch: int = 1) -> int:
    """Multiply-adds of all Conv and Gemm nodes for a batch of `batch` images."""
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    shapes = _static_shapes(model, batch)
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            total += _conv_macs(node, shapes, weights)
        elif node.op_type == "Gemm":
            total += _gemm_macs(node, shapes, weights)
    return total



def _tensor_bytes(value) -> tuple[str, int | None]:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if None in dims or not tensor.HasField("shape"):
        return value.name, None
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    return value.name, math.prod(dims) * itemsize


# Per-element ops a runtime computes in place when their input dies with them (every runtime fuses
# BatchNormalization and activations into the convolution before them).
IN_PLACE_OPS = {"BatchNormalization", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu",
                "Elu", "Tanh", "Dropout", "Identity"}


def op_by_op_peak(model: onnx.ModelProto, batch: int = 1) -> tuple[int, str]:
    """(bytes, node) of an op-by-op runtime's activation peak: the graph's nodes run one by one in
    file order, every node output is alive from its producer to its last consumer (a graph output
    to the end), and the peak is the largest sum of alive tensors while one node runs (its inputs
    and outputs together). Per-element ops (IN_PLACE_OPS) whose input has no later use overwrite it.
    The caller's input and the initializers are not counted."""
    inferred = _inferred_with_batch(model, batch)
    sizes = dict(_tensor_bytes(v) for v in list(inferred.graph.value_info) + list(inferred.graph.output))
    nodes = list(inferred.graph.node)
    last_use = {o.name: len(nodes) for o in inferred.graph.output}
    for index, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = max(last_use.get(name, index), index)
    alive: dict[str, int] = {}
    peak, where = 0, ""
    for index, node in enumerate(nodes):
        source = node.input[0] if node.input else ""
        if node.op_type in IN_PLACE_OPS and source in alive and last_use[source] == index:
            alive.pop(source)
        for name in filter(None, node.output):
            if sizes.get(name) is None:
                raise InvalidModelError(f"node {node.name!r}: output {name!r} has no static shape")
            alive[name] = sizes[name]
        if sum(alive.values()) > peak:
            peak, where = sum(alive.values()), node.name
        for name in [n for n in alive if last_use.get(n, index) <= index]:
            del alive[name]
    return peak, where
