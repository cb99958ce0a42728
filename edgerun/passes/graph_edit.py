"""Small graph-editing helpers the passes share. They edit the graph in place (the driver's copy)
and never write into an array: initializers are read-only and may be shared with the caller."""
from __future__ import annotations

import numpy as np

from edgerun.ir import Graph, Node, TensorInfo, readonly


def constant_value(graph: Graph, name: str) -> np.ndarray | None:
    """The value of `name` when it is known before the run (an initializer or a folded value)."""
    if not name:
        return None
    if name in graph.initializers:
        return graph.initializers[name]
    info = graph.value_info.get(name)
    return None if info is None else info.value


def static_shape(graph: Graph, name: str) -> tuple | None:
    value = constant_value(graph, name)
    if value is not None:
        return tuple(value.shape)
    info = graph.value_info.get(name)
    return tuple(info.shape) if info is not None and info.is_static else None


def is_graph_output(graph: Graph, name: str) -> bool:
    return name in graph.output_names()


def sole_consumer(graph: Graph, name: str) -> Node | None:
    """The only node reading `name`, provided `name` is not also a graph output; else None."""
    if is_graph_output(graph, name):
        return None
    users = graph.consumers().get(name, [])
    if len(users) != 1 or users[0].inputs.count(name) != 1:
        return None
    return users[0]


def producer(graph: Graph, name: str) -> Node | None:
    return graph.producers().get(name) if name else None


def is_op(node: Node | None, op_type: str, domain: str = "") -> bool:
    return node is not None and node.op_type == op_type and node.domain in (
        (domain, "ai.onnx") if domain == "" else (domain,))


def replace_input_everywhere(graph: Graph, old: str, new: str) -> None:
    for node in graph.nodes:
        node.inputs = [new if i == old else i for i in node.inputs]


def rename_value(graph: Graph, old: str, new: str) -> None:
    """Rename a node-produced value (producer output and every use); `new` must be unused."""
    for node in graph.nodes:
        node.inputs = [new if i == old else i for i in node.inputs]
        node.outputs = [new if o == old else o for o in node.outputs]
    if old in graph.value_info:
        graph.value_info[new] = graph.value_info.pop(old)


def all_value_names(graph: Graph) -> set[str]:
    names = set(graph.initializers) | set(graph.value_info)
    names.update(v.name for v in graph.inputs)
    names.update(v.name for v in graph.outputs)
    for node in graph.nodes:
        names.update(node.inputs)
        names.update(node.outputs)
    return names


def rewrite_each(graph: Graph, applies, rewrite) -> bool:
    """Offer every node of a snapshot of the graph's nodes to `rewrite(graph, node)` when `applies(node)`;
    True when any rewrite changed the graph."""
    changed = False
    for node in list(graph.nodes):
        if applies(node) and rewrite(graph, node):
            changed = True
    return changed


def _first_free(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... whichever is not taken first."""
    if base not in taken:
        return base
    index = 1
    while f"{base}_{index}" in taken:
        index += 1
    return f"{base}_{index}"


def unique_name(graph: Graph, base: str) -> str:
    return _first_free(base, all_value_names(graph))


def unique_node_name(graph: Graph, base: str) -> str:
    return _first_free(base, {n.name for n in graph.nodes})


def add_initializer(graph: Graph, base: str, array: np.ndarray) -> str:
    """Store a new read-only constant under a fresh name derived from `base`; return the name."""
    name = unique_name(graph, base)
    array = readonly(np.array(array))  # a copy: never alias an array we do not own
    graph.initializers[name] = array
    graph.value_info[name] = TensorInfo(array.shape, array.dtype, array)
    return name


def remove_nodes(graph: Graph, doomed: list[Node]) -> None:
    ids = {id(n) for n in doomed}
    graph.nodes = [n for n in graph.nodes if id(n) not in ids]


def replace_nodes(graph: Graph, old: list[Node], new: Node) -> None:
    """Put `new` where the last of `old` stood (all its inputs exist by then) and drop `old`."""
    ids = {id(n) for n in old}
    last = max(i for i, n in enumerate(graph.nodes) if id(n) in ids)
    graph.nodes[last] = new
    graph.nodes = [n for n in graph.nodes if id(n) not in ids]


def prune_unused(graph: Graph) -> None:
    """Drop initializers and value_info entries nothing refers to any more."""
    used = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    for node in graph.nodes:
        used.update(node.inputs)
        used.update(node.outputs)
    graph.initializers = {k: v for k, v in graph.initializers.items() if k in used}
    graph.value_info = {k: v for k, v in graph.value_info.items() if k in used}
