"""Turn every Conv into an edgerun FusedConv and fold a following activation into it.

Plain convs become FusedConv with activation "" so the executor sees one conv op; auto_pad is
resolved into explicit pads here, which needs the input's static shape for SAME_* padding.
"""
from __future__ import annotations

import numpy as np

from edgerun.errors import InvalidModelError
from edgerun.ir import Graph, Node
from edgerun.kernels.activations import BY_OP_TYPE
from edgerun.ops.conv import resolve_conv_pads
from edgerun.passes.graph_edit import (constant_value, is_op, remove_nodes, rewrite_each, sole_consumer,
                                       static_shape)

FUSED_DOMAIN = "edgerun"
_FLOAT32 = np.finfo(np.float32)


def run(graph: Graph) -> bool:
    converted = rewrite_each(graph, lambda node: is_op(node, "Conv"), _convert_conv)
    return rewrite_each(graph, _is_unactivated_fused_conv, _absorb_activation) or converted


def _is_unactivated_fused_conv(node: Node) -> bool:
    return is_op(node, "FusedConv", FUSED_DOMAIN) and node.attrs.get("activation", "") == ""


def _ints(node: Node, name: str, default: int, length: int) -> list[int]:
    value = node.attrs.get(name)
    if value is None:
        return [default] * length
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise InvalidModelError(f"{node.describe()}: attribute {name!r} must be {length} ints, got {value!r}")
    return [int(v) for v in value]


def _convert_conv(graph: Graph, conv: Node) -> bool:
    weight_shape = static_shape(graph, conv.input(1))
    if weight_shape is None or len(weight_shape) < 3:
        return False
    spatial = len(weight_shape) - 2
    kernel = list(weight_shape[2:])
    strides = _ints(conv, "strides", 1, spatial)
    dilations = _ints(conv, "dilations", 1, spatial)
    x_shape = static_shape(graph, conv.input(0))
    if conv.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") and x_shape is None:
        return False
    try:
        pads = resolve_conv_pads(conv.attrs, None if x_shape is None else x_shape[2:], kernel, strides, dilations)
    except InvalidModelError as exc:
        raise InvalidModelError(f"{conv.describe()}: {exc}") from None
    conv.op_type, conv.domain = "FusedConv", FUSED_DOMAIN
    conv.attrs = {"kernel_shape": kernel, "strides": strides, "pads": [int(p) for p in pads],
                  "dilations": dilations, "group": int(conv.attrs.get("group", 1)),
                  "activation": "", "activation_params": []}
    return True


def _absorb_activation(graph: Graph, conv: Node) -> bool:
    act = sole_consumer(graph, conv.outputs[0])
    if act is None or act.input(0) != conv.outputs[0]:
        return False
    found = activation_of(graph, act)
    if found is None:
        return False
    conv.attrs = dict(conv.attrs, activation=found[0], activation_params=found[1])
    conv.outputs = [act.outputs[0]]
    remove_nodes(graph, [act])
    return True


def activation_of(graph: Graph, node: Node) -> tuple[str, list[float]] | None:
    """(kind, params) when `node` is an activation FusedConv can carry (a kind of the activation table),
    else None."""
    kind = BY_OP_TYPE.get(node.op_type)
    if kind is None or not is_op(node, node.op_type):
        return None
    if kind.params_from_inputs:
        bounds = _clip_bounds(graph, node)
        return None if bounds is None else (kind.name, bounds)
    return kind.name, kind.params_from_attrs(node.attrs)


def _clip_bounds(graph: Graph, clip: Node) -> list[float] | None:
    """[min, max] of a Clip with constant bounds; an absent bound is float32's extreme."""
    if graph.opset < 11:
        return [float(clip.attrs.get("min", _FLOAT32.min)), float(clip.attrs.get("max", _FLOAT32.max))]
    bounds = []
    for index, default in ((1, _FLOAT32.min), (2, _FLOAT32.max)):
        name = clip.input(index)
        if not name:
            bounds.append(float(default))
            continue
        value = constant_value(graph, name)
        if value is None or value.size != 1:
            return None
        bounds.append(float(value.reshape(-1)[0]))
    return bounds
