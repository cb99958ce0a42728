"""Fold an inference BatchNormalization into the convolution feeding it.

    BN(conv(x, W) + b) = conv(x, W * f) + (b - mean) * f + beta,   f = scale / sqrt(var + eps)

New weight and bias initializers are created; the old arrays are never written.
"""
from __future__ import annotations

import numpy as np

from edgerun.ir import Graph, Node
from edgerun.passes.graph_edit import (add_initializer, constant_value, is_graph_output, is_op, producer,
                                       remove_nodes, rewrite_each, sole_consumer)


def run(graph: Graph) -> bool:
    return rewrite_each(graph, lambda node: is_op(node, "BatchNormalization"), _fold)


def _is_linear_conv(node: Node | None) -> bool:
    # a FusedConv with a fused residual input (passes/fuse_add.py) computes conv + S: no fold
    return is_op(node, "Conv") or (is_op(node, "FusedConv", "edgerun") and node.attrs.get("activation", "") == ""
                                   and len(node.inputs) <= 3)


def _only_first_output_used(graph: Graph, bn: Node) -> bool:
    used = graph.consumers()
    extra = [o for o in bn.outputs[1:] if o and (o in used or is_graph_output(graph, o))]
    return not extra and not bn.attrs.get("training_mode", 0)


def _fold(graph: Graph, bn: Node) -> bool:
    conv = producer(graph, bn.input(0))
    if not _is_linear_conv(conv) or conv.outputs[0] != bn.input(0) or sole_consumer(graph, bn.input(0)) is not bn:
        return False
    if not _only_first_output_used(graph, bn) or (graph.opset < 9 and bn.attrs.get("spatial", 1) == 0):
        return False
    weight = constant_value(graph, conv.input(1))
    if weight is None or not np.issubdtype(weight.dtype, np.floating):
        return False
    channels = weight.shape[0]
    params = [constant_value(graph, bn.input(i)) for i in range(1, 5)]
    if any(p is None or p.shape != (channels,) for p in params):
        return False
    bias = constant_value(graph, conv.input(2)) if conv.input(2) else np.zeros(channels, weight.dtype)
    if bias is None or bias.shape != (channels,):
        return False
    new_weight, new_bias = _folded(weight, bias, *params, epsilon=bn.attrs.get("epsilon", 1e-5))
    base = conv.name or conv.outputs[0]
    conv.inputs = [conv.inputs[0], add_initializer(graph, f"{base}_bnfold_W", new_weight),
                   add_initializer(graph, f"{base}_bnfold_B", new_bias)]
    conv.outputs = [bn.outputs[0]] + conv.outputs[1:]
    remove_nodes(graph, [bn])
    return True


def _folded(weight, bias, scale, beta, mean, var, *, epsilon):
    # float64 so the folded weights round once, to the conv's dtype, at the end.
    factor = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + epsilon)
    new_weight = weight.astype(np.float64) * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
    new_bias = (bias.astype(np.float64) - mean) * factor + beta
    return new_weight.astype(weight.dtype), new_bias.astype(weight.dtype)
