"""Find MobileNetV2 inverted-residual blocks among FusedConvs and make each one InvertedResidual node.

    [expand: FusedConv 1x1, group 1]  ->  depthwise FusedConv kxk  ->  project: FusedConv 1x1, linear
    -> [Add with the block input]

Two passes live here:
- `fuse_blocks` builds the blocks (with expansion, or without it: depthwise on the block input);
- `fuse_stem` then moves a plain conv that feeds an expansion-less block (the 3x3 stride-2 stem of
  MobileNetV2) into the block as its expansion, so the stem's output never exists whole.
A block without expansion carries expand_kernel 0, expand_stride 1, expand_pads [0, 0, 0, 0].
"""
from __future__ import annotations

import numpy as np

from edgerun.ir import Graph, Node
from edgerun.passes.graph_edit import (add_initializer, constant_value, is_op, producer, replace_nodes,
                                       rewrite_each, sole_consumer, static_shape, unique_node_name)

DOMAIN = "edgerun"


# ---------------------------------------------------------------- conv classification

def _fused_conv(node: Node | None) -> bool:
    return is_op(node, "FusedConv", DOMAIN)


def _weight(graph: Graph, conv: Node) -> np.ndarray | None:
    weight = constant_value(graph, conv.input(1))
    return weight if weight is not None and weight.ndim == 4 else None


def _has_constant_bias(graph: Graph, conv: Node) -> bool:
    return not conv.input(2) or constant_value(graph, conv.input(2)) is not None


def _square_plain_conv(graph: Graph, conv: Node | None) -> bool:
    """A 2-D FusedConv with constant weights, one kernel size and stride for both axes, dilation 1,
    and pads smaller than the kernel (the block's row arithmetic in scheduler.blocks needs that)."""
    if not _fused_conv(conv) or _weight(graph, conv) is None or not _has_constant_bias(graph, conv):
        return False
    if len(conv.inputs) > 3 and conv.inputs[3]:   # a fused residual input (passes/fuse_add.py)
        return False
    a = conv.attrs
    kh, kw = a["kernel_shape"]
    sh, sw = a["strides"]
    return kh == kw and sh == sw and list(a["dilations"]) == [1, 1] and max(a["pads"]) < kh


def _is_pointwise(graph: Graph, conv: Node | None) -> bool:
    return (_square_plain_conv(graph, conv) and conv.attrs["group"] == 1
            and list(conv.attrs["kernel_shape"]) == [1, 1] and list(conv.attrs["strides"]) == [1, 1]
            and not any(conv.attrs["pads"]))


def _is_projection(graph: Graph, conv: Node | None) -> bool:
    return _is_pointwise(graph, conv) and conv.attrs.get("activation", "") == ""


def _is_depthwise(graph: Graph, conv: Node | None) -> bool:
    if not _square_plain_conv(graph, conv):
        return False
    weight = _weight(graph, conv)
    return weight.shape[1] == 1 and conv.attrs["group"] == weight.shape[0]


def _is_stem(graph: Graph, conv: Node | None) -> bool:
    return _square_plain_conv(graph, conv) and conv.attrs["group"] == 1


# ---------------------------------------------------------------- fuse_blocks

def fuse_blocks(graph: Graph) -> bool:
    return rewrite_each(graph, lambda node: _still_in(graph, node) and _is_depthwise(graph, node), _fuse_block_at)


def _still_in(graph: Graph, node: Node) -> bool:
    return any(n is node for n in graph.nodes)


def _fuse_block_at(graph: Graph, dw: Node) -> bool:
    project = sole_consumer(graph, dw.outputs[0])
    if not _is_projection(graph, project) or project.input(0) != dw.outputs[0]:
        return False
    expand = producer(graph, dw.input(0))
    if not (_is_pointwise(graph, expand) and sole_consumer(graph, dw.input(0)) is dw):
        expand = None
    block_input = expand.input(0) if expand else dw.input(0)
    hidden = _weight(graph, expand).shape[0] if expand else _channels(graph, block_input)
    if hidden != _weight(graph, dw).shape[0]:
        return False
    add = _residual_add(graph, project, block_input)
    parts = [n for n in (expand, dw, project, add) if n is not None]
    block = _block_node(graph, block_input, expand, dw, project, add)
    replace_nodes(graph, parts, block)
    return True


def _channels(graph: Graph, name: str) -> int | None:
    shape = static_shape(graph, name)
    return shape[1] if shape is not None and len(shape) == 4 else None


def _residual_add(graph: Graph, project: Node, block_input: str) -> Node | None:
    add = sole_consumer(graph, project.outputs[0])
    if not is_op(add, "Add") or len(add.inputs) != 2 or set(add.inputs) != {project.outputs[0], block_input}:
        return None
    in_shape, out_shape = static_shape(graph, block_input), static_shape(graph, project.outputs[0])
    return add if in_shape is not None and in_shape == out_shape else None


def _block_pads(pads) -> list[int]:
    """ONNX 2-D pads [h_begin, w_begin, h_end, w_end] are the block's [top, left, bottom, right]."""
    return [int(p) for p in pads]


def _block_node(graph: Graph, block_input: str, expand: Node | None, dw: Node, project: Node,
                add: Node | None) -> Node:
    attrs = {"expand_kernel": 0, "expand_stride": 1, "expand_pads": [0, 0, 0, 0],
             "expand_activation": "", "expand_activation_params": []}
    weights = ["", ""]
    if expand is not None:
        attrs.update(_expansion_attrs(expand))
        weights = _weight_and_bias(graph, expand)
    attrs.update({
        "dw_kernel": int(dw.attrs["kernel_shape"][0]), "dw_stride": int(dw.attrs["strides"][0]),
        "dw_pads": _block_pads(dw.attrs["pads"]),
        "dw_activation": dw.attrs.get("activation", ""),
        "dw_activation_params": list(dw.attrs.get("activation_params", [])),
        "residual": int(add is not None),
    })
    inputs = [block_input] + weights + _weight_and_bias(graph, dw) + _weight_and_bias(graph, project)
    output = (add or project).outputs[0]
    return Node("InvertedResidual", inputs, [output], attrs,
                name=unique_node_name(graph, f"{dw.name or output}/InvertedResidual"), domain=DOMAIN)


def _expansion_attrs(conv: Node) -> dict:
    return {"expand_kernel": int(conv.attrs["kernel_shape"][0]), "expand_stride": int(conv.attrs["strides"][0]),
            "expand_pads": _block_pads(conv.attrs["pads"]),
            "expand_activation": conv.attrs.get("activation", ""),
            "expand_activation_params": list(conv.attrs.get("activation_params", []))}


def _weight_and_bias(graph: Graph, conv: Node) -> list[str]:
    """[W, B] of a conv; a zero bias is made when it has none, so every block stage has one."""
    if conv.input(2):
        return [conv.input(1), conv.input(2)]
    weight = _weight(graph, conv)
    zeros = np.zeros(weight.shape[0], weight.dtype)
    return [conv.input(1), add_initializer(graph, f"{conv.name or conv.outputs[0]}_zero_bias", zeros)]


# ---------------------------------------------------------------- fuse_stem

def fuse_stem(graph: Graph) -> bool:
    return rewrite_each(graph, lambda node: is_op(node, "InvertedResidual", DOMAIN), _fuse_stem_into)


def _fuse_stem_into(graph: Graph, block: Node) -> bool:
    if block.input(1) or block.attrs.get("residual", 0):
        return False
    stem = producer(graph, block.input(0))
    if not _is_stem(graph, stem) or sole_consumer(graph, block.input(0)) is not block:
        return False
    fused = Node(block.op_type, [stem.input(0)] + _weight_and_bias(graph, stem) + block.inputs[3:],
                 list(block.outputs), dict(block.attrs, **_expansion_attrs(stem)), name=block.name,
                 domain=DOMAIN)
    replace_nodes(graph, [stem, block], fused)
    return True
