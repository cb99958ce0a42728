"""QDQ -> integer steps: the pattern DequantizeLinear(s) -> op -> QuantizeLinear becomes one integer node
whose inputs and output are the int8 / uint8 tensors, so the float tensor between never exists in the arena.

    DQ(x), DQ(w), DQ(b) -> Conv [-> Relu | Clip] -> Q     edgerun QLinearConv (the activation as an output clamp)
    DQ(a), DQ(b const) -> MatMul -> Q                      QLinearMatMul
    DQ(a), DQ(b const), DQ(c) -> Gemm [-> Q]               com.microsoft QGemm (float output without the Q)
    DQ(a), DQ(b) -> Add | Mul -> Q                         com.microsoft QLinearAdd | QLinearMul
    DQ(x_i) ... -> Concat -> Q                             com.microsoft QLinearConcat
    DQ(x) -> GlobalAveragePool -> Q                        com.microsoft QLinearGlobalAveragePool
    DQ(x) -> AveragePool -> Q                              com.microsoft QLinearAveragePool (float inside, as
                                                           onnxruntime computes it)
    DQ(x) -> MaxPool | Reshape | Transpose | Flatten | Squeeze | Unsqueeze | Identity -> Q
                                                           the op on the int8 tensor (+ a QLookup requantisation
                                                           when the scales differ)
    DQ(x) -> Relu | Clip | Sigmoid | HardSigmoid | HardSwish | LeakyRelu | Tanh -> Q
                                                           edgerun QLookup: the 256-entry table of the function

Requantisation of a monotonic function commutes with it (quantize(clip(v)) = clip(quantize(v))), which is why
a Relu or Clip folds into the conv's output clamp exactly. Activations must be quantised per tensor; a pattern
that does not match (per-axis activation scales, a linear Resize, ...) stays in float: DQ, the float
op and Q run as they are, and the pass says which nodes with one warning line.
"""
from __future__ import annotations

import warnings

import numpy as np

from edgerun import ops
from edgerun.ir import Graph, Node, TensorInfo
from edgerun.kernels.steps_quant import requant_table
from edgerun.passes.graph_edit import (
    add_initializer, constant_value, is_graph_output, is_op, unique_name, unique_node_name,
)

QUANT_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8))
MOVERS = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
TABLE_OPS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh"}
INTEGER_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
               "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLookup", "QMaxPool", "QLinearSigmoid",
               "QLinearLeakyRelu", "ConvInteger", "MatMulInteger"}
FLOAT_NOTE = "edgerun: these QDQ nodes have no integer form and run in float: "


def run(graph: Graph) -> bool:
    changed = False
    for node in list(graph.nodes):
        if node in graph.nodes and _rewrite(graph, node):
            changed = True
    if changed:
        _drop_dead_dequantize(graph)
    for node in list(graph.nodes):
        if any(n is node for n in graph.nodes) and _fuse_block(graph, node):
            changed = True
    return changed


def float_islands(graph: Graph) -> list[str]:
    """Nodes between DequantizeLinear inputs and a QuantizeLinear output that still run in float."""
    producers = graph.producers()
    consumers = graph.consumers()
    names = []
    for node in graph.nodes:
        if node.op_type in INTEGER_OPS:
            continue
        fed = any(is_op(producers.get(i), "DequantizeLinear") and constant_value(graph, i) is None
                  for i in node.inputs if i)
        quantised = any(is_op(c, "QuantizeLinear") for o in node.outputs for c in consumers.get(o, []))
        if fed and quantised:
            names.append(node.name)
    return names


def warn_float_islands(graph: Graph) -> None:
    names = float_islands(graph)
    if names:
        warnings.warn(FLOAT_NOTE + ", ".join(names), RuntimeWarning, stacklevel=3)


# ---- matching

class _Q:
    """One quantised operand: the int8 tensor's name, its scale and zero point names (per tensor or not)."""

    def __init__(self, tensor, scale, zero):
        self.tensor, self.scale, self.zero = tensor, scale, zero


def _dequantized(graph: Graph, name: str, producers) -> _Q | None:
    dq = producers.get(name)
    if not is_op(dq, "DequantizeLinear"):
        return None
    info = graph.value_info.get(dq.inputs[0])
    if info is None or np.dtype(info.dtype) not in QUANT_DTYPES + (np.dtype(np.int32),):
        return None
    if dq.attrs.get("block_size", 0):
        return None
    zero = dq.input(2) or add_initializer(graph, dq.inputs[0] + "_zero_point", np.zeros((), info.dtype))
    return _Q(dq.inputs[0], dq.inputs[1], zero)


def _per_tensor(graph: Graph, q: _Q) -> bool:
    scale, zero = constant_value(graph, q.scale), constant_value(graph, q.zero)
    return scale is not None and zero is not None and scale.size == 1 and zero.size == 1


def _activation(graph: Graph, name: str, producers) -> _Q | None:
    q = _dequantized(graph, name, producers)
    if q is None or not _per_tensor(graph, q) or np.dtype(graph.value_info[q.tensor].dtype) not in QUANT_DTYPES:
        return None
    return q


def _constant(graph: Graph, name: str, producers) -> _Q | None:
    q = _dequantized(graph, name, producers)
    if q is None or constant_value(graph, q.tensor) is None or constant_value(graph, q.scale) is None:
        return None
    return q


def _sole_quantize(graph: Graph, name: str, consumers) -> Node | None:
    users = consumers.get(name, [])
    if len(users) != 1 or is_graph_output(graph, name) or not is_op(users[0], "QuantizeLinear"):
        return None
    q = users[0]
    if len(q.inputs) < 3 or not q.input(2) or not _per_tensor(graph, _Q(q.outputs[0], q.inputs[1], q.inputs[2])):
        return None
    return q


def _sole_user(graph: Graph, name: str, consumers) -> Node | None:
    users = consumers.get(name, [])
    return users[0] if len(users) == 1 and not is_graph_output(graph, name) else None


# ---- rewriting

def _rewrite(graph: Graph, node: Node) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    rewrite = _REWRITES.get(node.op_type)
    if rewrite is None and node.op_type in MOVERS:
        rewrite = _rewrite_mover
    elif rewrite is None and node.op_type in TABLE_OPS:
        rewrite = _rewrite_table
    return bool(rewrite and rewrite(graph, node, graph.producers(), graph.consumers()))


def _replace(graph: Graph, old: list[Node], new: list[Node]) -> None:
    ids = {id(n) for n in old}
    last = max(i for i, n in enumerate(graph.nodes) if id(n) in ids)
    graph.nodes[last:last + 1] = new
    graph.nodes = [n for n in graph.nodes if id(n) not in ids]


def _new_node(graph: Graph, op_type: str, domain: str, inputs, output: str, attrs: dict, base: str) -> Node:
    return Node(op_type, list(inputs), [output], attrs, unique_node_name(graph, base + "_int8"), domain)


def _clamp_after(graph: Graph, out: str, consumers):
    """(activation node, out_min, out_max as real values) when a Relu or constant-bounded Clip follows."""
    user = _sole_user(graph, out, consumers)
    if is_op(user, "Relu"):
        return user, 0.0, None
    if is_op(user, "Clip"):
        low = user.attrs.get("min") if len(user.inputs) < 2 or not user.input(1) else constant_value(graph, user.input(1))
        high = user.attrs.get("max") if len(user.inputs) < 3 or not user.input(2) else constant_value(graph, user.input(2))
        if (user.input(1) and low is None) or (user.input(2) and high is None):
            return None
        return user, None if low is None else float(np.asarray(low)), None if high is None else float(np.asarray(high))
    return None


def _quantized_bound(graph: Graph, q_node: Node, value) -> int | None:
    if value is None:
        return None
    scale = np.float32(constant_value(graph, q_node.inputs[1]).reshape(()))
    zero = constant_value(graph, q_node.inputs[2])
    info = np.iinfo(zero.dtype)
    return int(np.clip(np.rint(np.float32(value) / scale) + np.float32(zero.reshape(())), info.min, info.max))


def _rewrite_conv(graph, node, producers, consumers) -> bool:
    x = _activation(graph, node.input(0), producers)
    w = _constant(graph, node.input(1), producers)
    if x is None or w is None or np.dtype(graph.value_info[w.tensor].dtype) not in QUANT_DTYPES:
        return False
    bias = None
    if node.input(2):
        b = _constant(graph, node.input(2), producers)
        if b is None or constant_value(graph, b.tensor).dtype != np.int32 or np.any(constant_value(graph, b.zero)):
            return False
        if not _bias_scale_matches(graph, b, x, w):
            return False
        bias = b.tensor
    clamp = _clamp_after(graph, node.outputs[0], consumers)
    tail = clamp[0].outputs[0] if clamp else node.outputs[0]
    q = _sole_quantize(graph, tail, consumers)
    if q is None:
        return False
    attrs = {k: v for k, v in node.attrs.items() if k in ("kernel_shape", "strides", "pads", "dilations", "group",
                                                           "auto_pad")}
    if clamp:
        low, high = _quantized_bound(graph, q, clamp[1]), _quantized_bound(graph, q, clamp[2])
        if low is not None:
            attrs["out_min"] = low
        if high is not None:
            attrs["out_max"] = high
    inputs = [x.tensor, x.scale, x.zero, w.tensor, w.scale, w.zero, q.inputs[1], q.inputs[2]] + ([bias] if bias else [])
    new = _new_node(graph, "QLinearConv", "edgerun", inputs, q.outputs[0], attrs, node.name)
    _replace(graph, [node, q] + ([clamp[0]] if clamp else []), [new])
    return True


def _bias_scale_matches(graph, bias: _Q, x: _Q, w: _Q) -> bool:
    """An int32 bias joins the accumulator only when its scale is x_scale * w_scale (as quantizers write it)."""
    expected = np.float32(constant_value(graph, x.scale).reshape(())) * \
        np.asarray(constant_value(graph, w.scale), dtype=np.float32).reshape(-1)
    actual = np.asarray(constant_value(graph, bias.scale), dtype=np.float32).reshape(-1)
    return actual.size in (1, expected.size) and bool(np.allclose(actual, expected, rtol=1e-6, atol=0.0))


def _rewrite_matmul(graph, node, producers, consumers) -> bool:
    a = _activation(graph, node.input(0), producers)
    b = _constant(graph, node.input(1), producers)
    q = _sole_quantize(graph, node.outputs[0], consumers)
    if a is None or b is None or q is None or constant_value(graph, b.tensor).ndim != 2:
        return False
    if np.dtype(graph.value_info[b.tensor].dtype) not in QUANT_DTYPES:
        return False
    new = _new_node(graph, "QLinearMatMul", "", [a.tensor, a.scale, a.zero, b.tensor, b.scale, b.zero,
                                                  q.inputs[1], q.inputs[2]], q.outputs[0], {}, node.name)
    _replace(graph, [node, q], [new])
    return True


def _rewrite_gemm(graph, node, producers, consumers) -> bool:
    a = _activation(graph, node.input(0), producers)
    b = _constant(graph, node.input(1), producers)
    if a is None or b is None or node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0:
        return False
    if np.dtype(graph.value_info[b.tensor].dtype) not in QUANT_DTYPES or constant_value(graph, b.tensor).ndim != 2:
        return False
    bias = ""
    if node.input(2):
        c = _constant(graph, node.input(2), producers)
        if c is None or node.attrs.get("beta", 1.0) != 1.0 or constant_value(graph, c.tensor).dtype != np.int32 \
                or np.any(constant_value(graph, c.zero)) or constant_value(graph, c.tensor).ndim != 1 \
                or not _bias_scale_matches(graph, c, a, b):
            return False
        bias = c.tensor
    q = _sole_quantize(graph, node.outputs[0], consumers)
    tail = [q.inputs[1], q.inputs[2]] if q else []
    output = q.outputs[0] if q else node.outputs[0]
    new = _new_node(graph, "QGemm", "com.microsoft", [a.tensor, a.scale, a.zero, b.tensor, b.scale, b.zero, bias]
                    + tail, output, {"transB": int(node.attrs.get("transB", 0))}, node.name)
    _replace(graph, [node] + ([q] if q else []), [new])
    return True


def _rewrite_binary(graph, node, producers, consumers) -> bool:
    a = _activation(graph, node.input(0), producers) or _constant_per_tensor(graph, node.input(0), producers)
    b = _activation(graph, node.input(1), producers) or _constant_per_tensor(graph, node.input(1), producers)
    q = _sole_quantize(graph, node.outputs[0], consumers)
    if a is None or b is None or q is None:
        return False
    new = _new_node(graph, "QLinear" + node.op_type, "com.microsoft",
                    [a.tensor, a.scale, a.zero, b.tensor, b.scale, b.zero, q.inputs[1], q.inputs[2]],
                    q.outputs[0], {}, node.name)
    _replace(graph, [node, q], [new])
    return True


def _constant_per_tensor(graph, name, producers):
    q = _constant(graph, name, producers)
    if q is None or not _per_tensor(graph, q) or np.dtype(graph.value_info[q.tensor].dtype) not in QUANT_DTYPES:
        return None
    return q


def _rewrite_concat(graph, node, producers, consumers) -> bool:
    parts = [_activation(graph, i, producers) or _constant_per_tensor(graph, i, producers) for i in node.inputs]
    q = _sole_quantize(graph, node.outputs[0], consumers)
    if q is None or any(p is None for p in parts):
        return False
    inputs = [q.inputs[1], q.inputs[2]] + [name for p in parts for name in (p.tensor, p.scale, p.zero)]
    new = _new_node(graph, "QLinearConcat", "com.microsoft", inputs, q.outputs[0], {"axis": node.attrs["axis"]},
                    node.name)
    _replace(graph, [node, q], [new])
    return True


def _rewrite_global_pool(graph, node, producers, consumers) -> bool:
    x = _activation(graph, node.input(0), producers)
    q = _sole_quantize(graph, node.outputs[0], consumers)
    if x is None or q is None:
        return False
    new = _new_node(graph, "QLinearGlobalAveragePool", "com.microsoft",
                    [x.tensor, x.scale, x.zero, q.inputs[1], q.inputs[2]], q.outputs[0], {}, node.name)
    _replace(graph, [node, q], [new])
    return True


def _same_quantisation(graph, x: _Q, q: Node) -> bool:
    xs, xz = constant_value(graph, x.scale), constant_value(graph, x.zero)
    ys, yz = constant_value(graph, q.inputs[1]), constant_value(graph, q.inputs[2])
    return np.float32(xs.reshape(())) == np.float32(ys.reshape(())) and xz.dtype == yz.dtype \
        and int(xz.reshape(())) == int(yz.reshape(()))


def _table(graph, x: _Q, q: Node, function=None) -> np.ndarray:
    zero = constant_value(graph, q.inputs[2])
    return requant_table(graph.value_info[x.tensor].dtype, constant_value(graph, x.scale),
                         constant_value(graph, x.zero), constant_value(graph, q.inputs[1]), zero, zero.dtype, function)


def _rewrite_mover(graph, node, producers, consumers) -> bool:
    x = _activation(graph, node.input(0), producers)
    q = _sole_quantize(graph, node.outputs[0], consumers)
    if x is None or q is None or any(i and constant_value(graph, i) is None for i in node.inputs[1:]):
        return False
    if node.op_type == "MaxPool" and len([o for o in node.outputs if o]) != 1:
        return False
    moved_name = q.outputs[0]
    same = _same_quantisation(graph, x, q)
    if not same:
        moved_name = unique_name(graph, node.outputs[0] + "_int8")
    op_type, domain = ("QMaxPool", "edgerun") if node.op_type == "MaxPool" else (node.op_type, node.domain)
    moved = Node(op_type, [x.tensor] + node.inputs[1:], [moved_name], dict(node.attrs),
                 unique_node_name(graph, node.name + "_int8"), domain)
    new = [moved]
    out_info = graph.value_info[q.outputs[0]]
    if not same:
        graph.value_info[moved_name] = TensorInfo(out_info.shape, graph.value_info[x.tensor].dtype)
        table = add_initializer(graph, node.name + "_requant_table", _table(graph, x, q))
        new.append(_new_node(graph, "QLookup", "edgerun", [moved_name, table], q.outputs[0], {}, node.name + "_rq"))
    _replace(graph, [node, q], new)
    return True


def _rewrite_table(graph, node, producers, consumers) -> bool:
    x = _activation(graph, node.input(0), producers)
    q = _sole_quantize(graph, node.outputs[0], consumers)
    if x is None or q is None or any(i and constant_value(graph, i) is None for i in node.inputs[1:]):
        return False
    reference = ops.lookup(node, graph.opset)
    extra = [constant_value(graph, i) if i else None for i in node.inputs[1:]]

    def function(values):
        return reference.compute(node, [values] + extra, graph.opset)[0]

    table = add_initializer(graph, node.name + "_table", _table(graph, x, q, function))
    new = _new_node(graph, "QLookup", "edgerun", [x.tensor, table], q.outputs[0], {}, node.name)
    _replace(graph, [node, q], [new])
    return True


def _rewrite_average_pool(graph, node, producers, consumers) -> bool:
    x = _activation(graph, node.input(0), producers)
    q = _sole_quantize(graph, node.outputs[0], consumers)
    if x is None or q is None:
        return False
    new = _new_node(graph, "QLinearAveragePool", "com.microsoft", [x.tensor, x.scale, x.zero, q.inputs[1], q.inputs[2]],
                    q.outputs[0], dict(node.attrs), node.name)
    _replace(graph, [node, q], [new])
    return True


_REWRITES = {
    "Conv": _rewrite_conv, "MatMul": _rewrite_matmul, "Gemm": _rewrite_gemm, "Add": _rewrite_binary,
    "Mul": _rewrite_binary, "Concat": _rewrite_concat, "GlobalAveragePool": _rewrite_global_pool,
    "AveragePool": _rewrite_average_pool,
}


def _drop_dead_dequantize(graph: Graph) -> None:
    """DequantizeLinear / QuantizeLinear nodes whose outputs nothing reads any more (repeated: chains)."""
    while True:
        used = {i for n in graph.nodes for i in n.inputs} | set(graph.output_names())
        dead = [n for n in graph.nodes if n.op_type in ("DequantizeLinear",) and n.outputs[0] not in used]
        if not dead:
            return
        graph.nodes = [n for n in graph.nodes if n not in dead]


# ---- int8 inverted-residual blocks: [expand conv] -> depthwise conv -> 1x1 projection [-> QLinearAdd(x, .)]

def _qconv(node) -> bool:
    return (is_op(node, "QLinearConv", "edgerun") or is_op(node, "QLinearConv")) and \
        node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "")


def _square(node, graph) -> tuple | None:
    """(kernel, stride, pads) of a square, dilation-1 conv whose pads are smaller than its kernel."""
    w = constant_value(graph, node.inputs[3])
    if w is None or w.ndim != 4 or w.shape[2] != w.shape[3]:
        return None
    k = int(w.shape[2])
    strides = node.attrs.get("strides", [1, 1])
    pads = node.attrs.get("pads", [0, 0, 0, 0])
    if list(node.attrs.get("dilations", [1, 1])) != [1, 1] or strides[0] != strides[1] or any(p >= k for p in pads):
        return None
    return k, int(strides[0]), [int(p) for p in pads]


def _is_depthwise(graph, node) -> bool:
    w = constant_value(graph, node.inputs[3])
    return w is not None and w.shape[1] == 1 and node.attrs.get("group", 1) == w.shape[0] == \
        graph.value_info[node.inputs[0]].shape[1]


def _is_projection(graph, node) -> bool:
    info = np.iinfo(graph.value_info[node.outputs[0]].dtype)
    geometry = _square(node, graph)
    return geometry is not None and geometry[:2] == (1, 1) and not any(geometry[2]) \
        and node.attrs.get("group", 1) == 1 and node.attrs.get("out_min", info.min) == info.min \
        and node.attrs.get("out_max", info.max) == info.max


def _stage_inputs(node) -> list:
    return list(node.inputs[3:8]) + [node.input(8)]


def _bounds(node, prefix) -> dict:
    return {prefix + k[3:]: node.attrs[k] for k in ("out_min", "out_max") if k in node.attrs}


def _same_value(graph, a: str, b: str) -> bool:
    va, vb = constant_value(graph, a), constant_value(graph, b)
    return va is not None and vb is not None and va.dtype == vb.dtype and np.array_equal(va, vb)


def _fuse_block(graph: Graph, project: Node) -> bool:
    if not _qconv(project) or not _is_projection(graph, project):
        return False
    producers, consumers = graph.producers(), graph.consumers()
    dw = producers.get(project.inputs[0])
    if not _qconv(dw) or not _is_depthwise(graph, dw) or _sole_user(graph, dw.outputs[0], consumers) is not project:
        return False
    dw_geometry = _square(dw, graph)
    expand = producers.get(dw.inputs[0])
    expand_geometry = None
    if _qconv(expand) and expand.attrs.get("group", 1) == 1 and \
            _sole_user(graph, expand.outputs[0], consumers) is dw:
        expand_geometry = _square(expand, graph)
    if dw_geometry is None:
        return False
    if expand_geometry is None:
        expand = None
    first = expand if expand is not None else dw
    x, xs, xz = first.inputs[:3]
    if graph.value_info.get(x) is None or len(graph.value_info[x].shape) != 4:
        return False
    inputs = [x, xs, xz] + (_stage_inputs(expand) if expand else [""] * 6) + _stage_inputs(dw) + \
        _stage_inputs(project)
    attrs = {"dw_kernel": dw_geometry[0], "dw_stride": dw_geometry[1], "dw_pads": dw_geometry[2], "residual": 0}
    attrs.update(_bounds(dw, "dw_"))
    if expand is not None:
        attrs.update({"expand_kernel": expand_geometry[0], "expand_stride": expand_geometry[1],
                      "expand_pads": expand_geometry[2]})
        attrs.update(_bounds(expand, "expand_"))
    doomed = [n for n in (expand, dw, project) if n is not None]
    output = project.outputs[0]
    add = _sole_user(graph, output, consumers)
    if is_op(add, "QLinearAdd", "com.microsoft") and graph.value_info[add.outputs[0]].shape == \
            graph.value_info[x].shape:
        sides = {add.inputs[0]: add.inputs[1:3], add.inputs[3]: add.inputs[4:6]}
        if set(sides) == {x, output} and all(_same_value(graph, a, b) for a, b in zip(sides[x], (xs, xz))) and \
                all(_same_value(graph, a, b) for a, b in zip(sides[output], project.inputs[6:8])) and \
                len(add.inputs) > 7 and add.input(7):
            inputs += [add.inputs[6], add.inputs[7]]
            attrs["residual"] = 1
            doomed.append(add)
            output = add.outputs[0]
    quantize = producers.get(x)
    if expand is not None and not attrs["residual"] and _quantizes_a_graph_input(graph, quantize, consumers):
        # the block quantises the rows of the (float) model input it reads: the int8 copy never exists whole
        inputs[:3] = quantize.inputs[:3]
        attrs["quantize_input"] = 1
        doomed.append(quantize)
    block = Node("QInvertedResidual", inputs, [output], attrs, unique_node_name(graph, dw.name + "/QInvertedResidual"),
                 "edgerun")
    _replace(graph, doomed, [block])
    return True


def _quantizes_a_graph_input(graph: Graph, node: Node | None, consumers) -> bool:
    if not is_op(node, "QuantizeLinear") or len(node.inputs) < 3 or not node.input(2):
        return False
    if node.inputs[0] not in {v.name for v in graph.inputs} or len(consumers.get(node.outputs[0], [])) != 1:
        return False
    if is_graph_output(graph, node.outputs[0]) or graph.value_info[node.inputs[0]].dtype != np.float32:
        return False
    return _per_tensor(graph, _Q(node.outputs[0], node.inputs[1], node.inputs[2]))
