"""ShuffleNet's channel shuffle becomes one ChannelShuffle step (edgerun/ops/channel_shuffle.py):

    Reshape x (N, C, ...) -> (N, g, C/g, ...);  Transpose perm (0, 2, 1, 3, ...);  Reshape -> (N, C, ...)
    =>  ChannelShuffle(x) {groups: g}

Shapes must be static; the two intermediate values must feed only the next node and not be graph outputs.
Anything else is left as it was. Switched off by EDGERUN_NO_FUSE_SHUFFLE=1 (or the pass name fuse_shuffle in
EDGERUN_DISABLE_PASSES)."""
from __future__ import annotations

from edgerun.ir import Graph, Node
from edgerun.passes.graph_edit import is_op, producer, replace_nodes, rewrite_each, sole_consumer, static_shape

DOMAIN = "edgerun"


def run(graph: Graph) -> bool:
    return rewrite_each(graph, lambda node: is_op(node, "Reshape"), _fuse_at_merge)


def _fuse_at_merge(graph: Graph, merge: Node) -> bool:
    transpose = producer(graph, merge.input(0))
    if not is_op(transpose, "Transpose") or sole_consumer(graph, transpose.outputs[0]) is not merge:
        return False
    split = producer(graph, transpose.input(0))
    if not is_op(split, "Reshape") or sole_consumer(graph, split.outputs[0]) is not transpose:
        return False
    x_shape = static_shape(graph, split.input(0))
    split_shape = static_shape(graph, split.outputs[0])
    if x_shape is None or split_shape is None or static_shape(graph, merge.outputs[0]) != x_shape:
        return False
    rank = len(x_shape)
    if rank < 2 or len(split_shape) != rank + 1:
        return False
    groups = split_shape[1]
    if (split_shape[0] != x_shape[0] or groups * split_shape[2] != x_shape[1]
            or tuple(split_shape[3:]) != tuple(x_shape[2:])):
        return False
    perm = transpose.attrs.get("perm")
    if perm is None or list(perm) != [0, 2, 1] + list(range(3, rank + 1)):
        return False
    fused = Node("ChannelShuffle", [split.input(0)], [merge.outputs[0]], {"groups": int(groups)},
                 merge.name or split.name, DOMAIN)
    replace_nodes(graph, [split, transpose, merge], fused)
    return True
