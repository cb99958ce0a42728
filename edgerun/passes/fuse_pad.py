"""Fold a zero-valued constant Pad of the spatial axes into the convolution it feeds.

Exporters from frameworks with SAME padding (Keras ZeroPadding2D before stride-2 depthwise convs)
write an explicit Pad node; with it folded the conv can join an inverted-residual block.
"""
from __future__ import annotations

from edgerun.ir import Graph, Node
from edgerun.passes.graph_edit import (constant_value, is_op, remove_nodes, rewrite_each, sole_consumer,
                                       static_shape)


def run(graph: Graph) -> bool:
    return rewrite_each(graph, lambda node: is_op(node, "Pad"), _fold_into_conv)


def _fold_into_conv(graph: Graph, pad: Node) -> bool:
    conv = sole_consumer(graph, pad.outputs[0])
    if not (is_op(conv, "Conv") or is_op(conv, "FusedConv", "edgerun")) or conv.input(0) != pad.outputs[0]:
        return False
    if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return False
    extra = _spatial_zero_pads(graph, pad)
    if extra is None:
        return False
    spatial = len(extra) // 2
    current = [0] * (2 * spatial) if conv.attrs.get("auto_pad") == "VALID" else list(
        conv.attrs.get("pads", [0] * (2 * spatial)))
    if len(current) != len(extra):
        return False
    attrs = {k: v for k, v in conv.attrs.items() if k != "auto_pad"}
    attrs["pads"] = [a + b for a, b in zip(current, extra)]
    conv.attrs = attrs
    conv.inputs = [pad.input(0)] + conv.inputs[1:]
    remove_nodes(graph, [pad])
    return True


def _spatial_zero_pads(graph: Graph, pad: Node) -> list[int] | None:
    """The Pad's spatial pads in ONNX order when it is a constant zero pad of spatial axes only."""
    rank_shape = static_shape(graph, pad.input(0))
    if rank_shape is None or len(rank_shape) < 3 or pad.attrs.get("mode", "constant") != "constant":
        return None
    pads = _full_pads(graph, pad, len(rank_shape))
    if pads is None or any(p < 0 for p in pads) or not _pad_value_is_zero(graph, pad):
        return None
    rank = len(rank_shape)
    if any(pads[i] or pads[rank + i] for i in (0, 1)):
        return None
    return pads[2:rank] + pads[rank + 2:]


def _full_pads(graph: Graph, pad: Node, rank: int) -> list[int] | None:
    if graph.opset < 11:
        pads = pad.attrs.get("pads")
        return [int(p) for p in pads] if pads is not None and len(pads) == 2 * rank else None
    values = constant_value(graph, pad.input(1))
    if values is None:
        return None
    values = [int(v) for v in values.reshape(-1)]
    axes = _axes(graph, pad, rank)
    if axes is None or len(values) != 2 * len(axes):
        return None
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = values[i], values[len(axes) + i]
    return full


def _axes(graph: Graph, pad: Node, rank: int) -> list[int] | None:
    if not pad.input(3):
        return list(range(rank))
    axes = constant_value(graph, pad.input(3))
    if axes is None:
        return None
    normal = [int(a) % rank for a in axes.reshape(-1)]
    return normal if len(set(normal)) == len(normal) else None


def _pad_value_is_zero(graph: Graph, pad: Node) -> bool:
    if graph.opset < 11:
        return float(pad.attrs.get("value", 0.0)) == 0.0
    if not pad.input(2):
        return True
    value = constant_value(graph, pad.input(2))
    return value is not None and value.size == 1 and float(value.reshape(-1)[0]) == 0.0
