"""Squeeze-excitation becomes one SqueezeExcite step (edgerun/ops/squeeze_excite.py):

    GlobalAveragePool(x) -> FusedConv 1x1 (act) -> FusedConv 1x1 (gate) -> Mul(x, gate) or Mul(gate, x)
    =>  SqueezeExcite(x, W1, B1, W2, B2) {activation, gate}

The two convs must be 1x1, group 1, stride 1, unpadded, with constant weights and biases (an absent bias
becomes a zero one); every intermediate value must feed only the next node of the chain and not be a graph
output; the Mul's result must have x's shape. Anything else is left as it was. Runs after fuse_activation
(and fuse_silu), which give the convs their activations. Switched off by EDGERUN_NO_FUSE_SE=1 (or the pass
name fuse_se in EDGERUN_DISABLE_PASSES)."""
from __future__ import annotations

import numpy as np

from edgerun.ir import Graph, Node
from edgerun.passes.graph_edit import (add_initializer, constant_value, is_op, producer, replace_nodes,
                                       rewrite_each, sole_consumer, static_shape, unique_node_name)

DOMAIN = "edgerun"


def run(graph: Graph) -> bool:
    return rewrite_each(graph, lambda node: is_op(node, "Mul"), _fuse_at_mul)


def _plain_pointwise(graph: Graph, conv: Node | None) -> bool:
    if not is_op(conv, "FusedConv", DOMAIN):
        return False
    a = conv.attrs
    weight = constant_value(graph, conv.input(1))
    return (weight is not None and weight.ndim >= 3 and all(k == 1 for k in a["kernel_shape"])
            and all(s == 1 for s in a["strides"]) and not any(a["pads"]) and a["group"] == 1
            and (not conv.input(2) or constant_value(graph, conv.input(2)) is not None))


def _chain(graph: Graph, mul: Node, gate_name: str) -> tuple[Node, Node, Node] | None:
    """(pool, conv1, conv2) of an SE chain ending in `gate_name`, whose pool reads the Mul's other input."""
    other = mul.inputs[1] if mul.inputs[0] == gate_name else mul.inputs[0]
    conv2 = producer(graph, gate_name)
    if not _plain_pointwise(graph, conv2) or sole_consumer(graph, gate_name) is not mul:
        return None
    conv1 = producer(graph, conv2.input(0))
    if not _plain_pointwise(graph, conv1) or sole_consumer(graph, conv2.input(0)) is not conv2:
        return None
    pool = producer(graph, conv1.input(0))
    if (not is_op(pool, "GlobalAveragePool") or sole_consumer(graph, conv1.input(0)) is not conv1
            or pool.input(0) != other):
        return None
    return pool, conv1, conv2


def _bias(graph: Graph, conv: Node, channels: int) -> str:
    if conv.input(2):
        return conv.input(2)
    return add_initializer(graph, f"{conv.name}_zero_bias", np.zeros(channels, np.float32))


def _fuse_at_mul(graph: Graph, mul: Node) -> bool:
    if len(mul.inputs) != 2 or mul.inputs[0] == mul.inputs[1]:
        return False
    for gate_name in mul.inputs:
        chain = _chain(graph, mul, gate_name)
        if chain is not None:
            break
    else:
        return False
    pool, conv1, conv2 = chain
    x_shape, out_shape = static_shape(graph, pool.input(0)), static_shape(graph, mul.outputs[0])
    if x_shape is None or out_shape != x_shape or len(x_shape) < 3:
        return False
    w1, w2 = constant_value(graph, conv1.input(1)), constant_value(graph, conv2.input(1))
    if w1.shape[1] != x_shape[1] or w2.shape[:2] != (x_shape[1], w1.shape[0]):
        return False
    inputs = [pool.input(0), conv1.input(1), _bias(graph, conv1, w1.shape[0]), conv2.input(1),
              _bias(graph, conv2, w2.shape[0])]
    attrs = {"activation": conv1.attrs.get("activation", ""),
             "activation_params": list(conv1.attrs.get("activation_params", [])),
             "gate": conv2.attrs.get("activation", ""), "gate_params": list(conv2.attrs.get("activation_params", []))}
    fused = Node("SqueezeExcite", inputs, [mul.outputs[0]], attrs, unique_node_name(graph, f"{mul.name}_se"),
                 DOMAIN)
    replace_nodes(graph, [pool, conv1, conv2, mul], fused)
    return True
