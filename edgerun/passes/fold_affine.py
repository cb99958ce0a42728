"""Per-channel scales and shifts become convolutions' weights and biases (DenseNet's BN -> Mul -> Add -> Relu):

- a Mul or Add by a per-channel constant (shape (C, 1, 1), (1, C, 1, 1) or one value) after a Conv or a
  FusedConv without activation is folded into the conv's weight and bias (conv output read by nothing else):
      (W x + b) * s = (W * s) x + b * s,    (W x + b) + t = W x + (b + t);
- a BatchNormalization (inference, constant parameters, 4-D input) whose input no conv produces (after a
  Concat or a pool: DenseNet's pre-activations; after a conv it is bnfold's) becomes a 1x1 depthwise FusedConv with weight f = scale / sqrt(var + eps) and bias beta - mean * f, so a
  following Mul / Add folds into it, fuse_activation gives it the Relu, and it runs on the native depthwise
  kernel (threads) in one pass over memory.
New initializers are made in float64 and rounded once; the old arrays are never written. Switched off by
EDGERUN_NO_FOLD_AFFINE=1 (or the pass name fold_affine in EDGERUN_DISABLE_PASSES)."""
from __future__ import annotations

import numpy as np

from edgerun.ir import Graph, Node
from edgerun.passes.graph_edit import (add_initializer, constant_value, is_graph_output, is_op, producer,
                                       remove_nodes, rewrite_each, sole_consumer, static_shape)

DOMAIN = "edgerun"


def run(graph: Graph) -> bool:
    converted = rewrite_each(graph, lambda node: is_op(node, "BatchNormalization"), _bn_to_depthwise)
    return rewrite_each(graph, lambda node: is_op(node, "Mul") or is_op(node, "Add"), _fold_into_conv) or converted


def _per_channel(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """The constant as one float64 value per channel, when it broadcasts over (1, C, 1, 1) that way."""
    if value is None or not np.issubdtype(value.dtype, np.floating) or value.ndim > 4:
        return None
    shape = (1,) * (4 - value.ndim) + tuple(value.shape)
    if shape == (1, 1, 1, 1):
        return np.full(channels, float(value.reshape(())), np.float64)
    if shape != (1, channels, 1, 1):
        return None
    return value.reshape(channels).astype(np.float64)


def _linear_conv(node: Node | None) -> bool:
    """A conv with nothing after it yet: ONNX Conv (fuse_activation has not turned it into a FusedConv in
    this round) or a FusedConv without activation."""
    return is_op(node, "Conv") or (is_op(node, "FusedConv", DOMAIN) and node.attrs.get("activation", "") == "")


def _fold_into_conv(graph: Graph, node: Node) -> bool:
    if len(node.inputs) != 2:
        return False
    for data_index in (0, 1):
        conv = producer(graph, node.inputs[data_index])
        if _linear_conv(conv) and conv.outputs[0] == node.inputs[data_index]:
            break
    else:
        return False
    weight = constant_value(graph, conv.input(1))
    y_shape = static_shape(graph, conv.outputs[0])
    if (weight is None or not np.issubdtype(weight.dtype, np.floating) or y_shape is None or len(y_shape) != 4
            or sole_consumer(graph, conv.outputs[0]) is not node or static_shape(graph, node.outputs[0]) != y_shape):
        return False
    channels = weight.shape[0]
    factor = _per_channel(constant_value(graph, node.inputs[1 - data_index]), channels)
    bias = constant_value(graph, conv.input(2)) if conv.input(2) else np.zeros(channels, weight.dtype)
    if factor is None or bias is None or bias.shape != (channels,):
        return False
    new_weight, new_bias = weight.astype(np.float64), bias.astype(np.float64)
    if node.op_type == "Mul":
        new_weight = new_weight * factor.reshape(-1, 1, 1, 1)
        new_bias = new_bias * factor
    else:
        new_bias = new_bias + factor
    base = conv.name or conv.outputs[0]
    conv.inputs = [conv.inputs[0], add_initializer(graph, f"{base}_affine_W", new_weight.astype(weight.dtype)),
                   add_initializer(graph, f"{base}_affine_B", new_bias.astype(weight.dtype))]
    conv.outputs = [node.outputs[0]]
    remove_nodes(graph, [node])
    return True


def _bn_to_depthwise(graph: Graph, bn: Node) -> bool:
    if is_op(producer(graph, bn.input(0)), "Conv") or is_op(producer(graph, bn.input(0)), "FusedConv", DOMAIN):
        return False   # bnfold's to fold, or kept (a conv output read elsewhere too)
    x_shape = static_shape(graph, bn.input(0))
    if x_shape is None or len(x_shape) != 4 or bn.attrs.get("training_mode", 0):
        return False
    if any(o and (o in graph.consumers() or is_graph_output(graph, o)) for o in bn.outputs[1:]):
        return False
    if graph.opset < 9 and bn.attrs.get("spatial", 1) == 0:
        return False
    channels = x_shape[1]
    params = [constant_value(graph, bn.input(i)) for i in range(1, 5)]
    if any(p is None or p.shape != (channels,) or not np.issubdtype(p.dtype, np.floating) for p in params):
        return False
    scale, beta, mean, var = (p.astype(np.float64) for p in params)
    factor = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    dtype = params[0].dtype
    base = bn.name or bn.outputs[0]
    bn.inputs = [bn.input(0), add_initializer(graph, f"{base}_dw_W", factor.reshape(channels, 1, 1, 1).astype(dtype)),
                 add_initializer(graph, f"{base}_dw_B", (beta - mean * factor).astype(dtype))]
    bn.outputs = [bn.outputs[0]]
    bn.op_type, bn.domain = "FusedConv", DOMAIN
    bn.attrs = {"kernel_shape": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1],
                "group": channels, "activation": "", "activation_params": []}
    return True
