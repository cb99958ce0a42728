"""Remove nodes that do nothing at inference: Identity, inference-mode Dropout, a Sum of one input, and dead
nodes; a Sum of two inputs becomes the Add it is (so the passes that fuse Adds see it)."""
from __future__ import annotations

from edgerun.ir import Graph, Node
from edgerun.passes.graph_edit import (constant_value, is_graph_output, is_op, producer, remove_nodes,
                                       rename_value, replace_input_everywhere, rewrite_each)


def run(graph: Graph) -> bool:
    changed = rewrite_each(graph, lambda node: _is_pass_through(graph, node), _bypass)
    changed = rewrite_each(graph, _is_sum_of_two, _sum_to_add) or changed
    return _remove_dead_nodes(graph) or changed


def _is_sum_of_two(node: Node) -> bool:
    return is_op(node, "Sum") and len(node.inputs) == 2 and all(node.inputs)


def _sum_to_add(graph: Graph, node: Node) -> bool:
    # Sum and Add broadcast alike from opset 8 (Add from 7); before that both need equal shapes
    node.op_type = "Add"
    return True


def _is_pass_through(graph: Graph, node: Node) -> bool:
    if is_op(node, "Identity"):
        return len(node.inputs) == 1 and bool(node.inputs[0])
    if is_op(node, "Sum"):
        return len(node.inputs) == 1 and bool(node.inputs[0])
    if is_op(node, "Dropout"):
        return bool(node.input(0)) and _dropout_is_inference(graph, node) and not _mask_is_used(graph, node)
    return False


def _dropout_is_inference(graph: Graph, node: Node) -> bool:
    training = node.input(2)
    if not training:
        return True
    value = constant_value(graph, training)
    return value is not None and not bool(value.reshape(-1)[0])


def _mask_is_used(graph: Graph, node: Node) -> bool:
    mask = node.outputs[1] if len(node.outputs) > 1 else ""
    return bool(mask) and (is_graph_output(graph, mask) or mask in graph.consumers())


def _bypass(graph: Graph, node: Node) -> bool:
    source, target = node.inputs[0], node.outputs[0]
    if not is_graph_output(graph, target):
        replace_input_everywhere(graph, target, source)
        remove_nodes(graph, [node])
        return True
    # The graph output keeps its name: the value feeding the node is renamed to it instead,
    # which needs a producing node and a source that is not itself a graph output.
    if producer(graph, source) is None or is_graph_output(graph, source):
        return False
    remove_nodes(graph, [node])
    rename_value(graph, source, target)
    return True


def _remove_dead_nodes(graph: Graph) -> bool:
    """Drop nodes none of whose outputs is read or returned (repeat: removal exposes more)."""
    changed = False
    while True:
        used = set(graph.output_names()) | {i for n in graph.nodes for i in n.inputs}
        dead = [n for n in graph.nodes if not any(o in used for o in n.outputs if o)]
        if not dead:
            return changed
        remove_nodes(graph, dead)
        changed = True
