"""Concat without the copy: producers write their results straight into their slice of the Concat's output.

`concat_parts(graph, activations)` finds, for every Concat whose slices are contiguous in its output (the
dimensions before the axis are all 1, e.g. channels of one image), the inputs that can be written in place:
arena buffers that only this Concat reads, read once, not graph outputs, not the output of another such
Concat. It returns {input: (concat output, byte offset of its slice)}. The executor gives the scheduler the
merged problem (scheduler.alias.merge_buffers: the Concat's output lives from its first producer on, the
inputs' own buffers are gone), binds each input's view to its slice, and the Concat kernel skips the inputs
that are already in place. The executor keeps the plan without aliases when that one's peak is smaller, so
no planned peak grows. EDGERUN_NO_FUSE_CONCAT=1 switches it off (every Concat copies its inputs).
"""
from __future__ import annotations

import os

import numpy as np

from edgerun.ir import Graph, Node


def _slices_are_contiguous(shape, axis: int) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape) and int(np.prod(shape[:axis])) == 1


def _concat_axis(node: Node, rank: int) -> int | None:
    axis = node.attrs.get("axis")
    if not isinstance(axis, int) or not -rank <= axis < rank:
        return None
    return axis % rank


SWITCH = "EDGERUN_NO_FUSE_CONCAT"


def concat_parts(graph: Graph, activations: dict[str, int]) -> dict[str, tuple[str, int]]:
    if os.environ.get(SWITCH, "") not in ("", "0"):
        return {}
    consumers = graph.consumers()
    outputs = set(graph.output_names())
    parts: dict[str, tuple[str, int]] = {}
    hosts: set[str] = set()
    for node in graph.nodes:
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or not node.outputs:
            continue
        out = node.outputs[0]
        info = graph.value_info.get(out)
        if out not in activations or out in parts or info is None or info.shape is None:
            continue
        axis = _concat_axis(node, len(info.shape))
        if axis is None or not _slices_are_contiguous(info.shape, axis):
            continue
        offset = 0
        found = {}
        for name in node.inputs:
            if not name:
                continue
            size = activations.get(name)
            if (size is not None and name not in outputs and name not in hosts and name not in parts
                    and consumers.get(name) == [node] and node.inputs.count(name) == 1
                    and graph.value_info[name].dtype == info.dtype):
                found[name] = (out, offset)
            if name in activations:
                offset += activations[name]
            else:
                info_in = graph.value_info.get(name)
                if info_in is None or info_in.shape is None:
                    found = {}
                    break
                offset += int(np.prod(info_in.shape, dtype=np.int64)) * np.dtype(info_in.dtype).itemsize
        if found and offset == activations[out]:
            parts.update(found)
            hosts.add(out)
    return parts
