"""Fuse a residual Add into the convolution that feeds it: FusedConv(X, W, B) -> Add(., S) becomes
FusedConv(X, W, B, S), computing act(conv(X) + B + S) in the conv's output pass (ResNet, RegNet, ...).

Conditions: the FusedConv is 2-D, has no activation of its own (the Add comes before any activation; a
Relu after the Add is then taken by fuse_activation, giving act(conv + B + S)), no sum input yet, and its
output is read by the Add alone; S has the output's static shape and dtype (no broadcasting), and is
float32. The pass runs after fuse_blocks and fuse_stem, so the residual adds of inverted-residual blocks
stay in their blocks. One tensor (the conv's own output) and one pass over memory disappear.

Switched off with EDGERUN_NO_FUSE_ADD=1 (or EDGERUN_DISABLE_PASSES=fuse_add) for A/B comparisons.
"""
from __future__ import annotations

import os

import numpy as np

from edgerun.ir import Graph, Node
from edgerun.passes.graph_edit import is_op, remove_nodes, rewrite_each, sole_consumer, static_shape

FUSED_DOMAIN = "edgerun"
ENV_VAR = "EDGERUN_NO_FUSE_ADD"


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "") not in ("1", "true", "yes")


def run(graph: Graph) -> bool:
    if not enabled():
        return False
    return rewrite_each(graph, _is_candidate_conv, _absorb_add)


def _is_candidate_conv(node: Node) -> bool:
    return (is_op(node, "FusedConv", FUSED_DOMAIN) and node.attrs.get("activation", "") == ""
            and len(node.attrs.get("kernel_shape", ())) == 2 and len(node.inputs) <= 3)


def _float32(graph: Graph, name: str) -> bool:
    info = graph.value_info.get(name)
    return info is not None and np.dtype(info.dtype) == np.float32


def _absorb_add(graph: Graph, conv: Node) -> bool:
    out = conv.outputs[0]
    add = sole_consumer(graph, out)
    if not is_op(add, "Add") or len(add.inputs) != 2:
        return False
    skip = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
    shape = static_shape(graph, out)
    if not skip or shape is None or static_shape(graph, skip) != shape:
        return False
    if not (_float32(graph, out) and _float32(graph, skip) and _float32(graph, add.outputs[0])):
        return False
    inputs = list(conv.inputs) + [""] * (3 - len(conv.inputs))
    conv.inputs = inputs + [skip]
    conv.outputs = [add.outputs[0]]
    remove_nodes(graph, [add])
    return True
