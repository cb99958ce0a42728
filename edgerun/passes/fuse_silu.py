"""Sigmoid*x (SiLU, Swish-1) after a convolution becomes the conv's activation "silu":

    FusedConv (no activation) -> y;  Sigmoid(y) -> s;  Mul(y, s) or Mul(s, y) -> z
    =>  FusedConv (activation silu) -> z

y must feed nothing but the Sigmoid and the Mul, and s nothing but the Mul; anything else is left as it was.
Switched off by EDGERUN_NO_FUSE_SILU=1 (or the pass name fuse_silu in EDGERUN_DISABLE_PASSES)."""
from __future__ import annotations

from edgerun.ir import Graph, Node
from edgerun.passes.graph_edit import is_graph_output, is_op, remove_nodes, rewrite_each, sole_consumer

DOMAIN = "edgerun"


def run(graph: Graph) -> bool:
    return rewrite_each(graph, _is_unactivated_conv, _absorb_silu)


def _is_unactivated_conv(node: Node) -> bool:
    return is_op(node, "FusedConv", DOMAIN) and node.attrs.get("activation", "") == ""


def silu_after(graph: Graph, name: str) -> tuple[Node, Node] | None:
    """(Sigmoid, Mul) computing name * Sigmoid(name) when those two are all that read `name`, else None."""
    if is_graph_output(graph, name):
        return None
    users = graph.consumers().get(name, [])
    if len(users) != 2:
        return None
    sigmoid = next((u for u in users if is_op(u, "Sigmoid")), None)
    mul = next((u for u in users if is_op(u, "Mul")), None)
    if sigmoid is None or mul is None or sigmoid.inputs != [name] or len(mul.inputs) != 2:
        return None
    if sole_consumer(graph, sigmoid.outputs[0]) is not mul or sorted(mul.inputs) != sorted([name, sigmoid.outputs[0]]):
        return None
    return sigmoid, mul


def _absorb_silu(graph: Graph, conv: Node) -> bool:
    found = silu_after(graph, conv.outputs[0])
    if found is None:
        return False
    sigmoid, mul = found
    conv.attrs = dict(conv.attrs, activation="silu", activation_params=[])
    conv.outputs = [mul.outputs[0]]
    remove_nodes(graph, [sigmoid, mul])
    return True
