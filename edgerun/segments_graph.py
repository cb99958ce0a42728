"""Graph side of segments (docs/segments.md): which steps of an optimised graph can stream, and
the row ops of edgerun.kernels.numpy_segment they become.

A *unit* is one executor step that can stream: a convolution (FusedConv or Conv, any kernel,
stride, dilation, group; its fused activation as a following Activation op), a max/average
pool, a standalone activation, a residual Add of two same-shaped tensors, a GlobalAveragePool
(last only), or an InvertedResidual block (unfolded into its member ops by `unfold_block`, the
one place to swap for a fused block member later).  A *segment candidate* is a run of
consecutive units, each reading the previous one's output, whose inner tensors no other step
reads; `segment_candidates` lists every such run (up to MAX_UNITS units) and the scheduler
chooses among them.  Anything else ends a run, with the reason `why_not_streamable` gives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgerun.errors import EdgerunError
from edgerun.ir import Graph, Node
from edgerun.kernels import numpy_segment as rows
from edgerun.kernels.activations import BY_OP_TYPE, KINDS
from edgerun.ops.conv import resolve_conv_pads

MAX_UNITS = 24   # longest run of units one segment may span (bounds the candidates the search weighs)
_FLOAT32 = np.finfo(np.float32)


@dataclass(frozen=True)
class SkipFrom:
    """A residual Add whose second operand is the graph tensor `buffer` (resolved to a segment
    index when the units are joined into one segment)."""

    buffer: str


@dataclass(frozen=True)
class ConcatFrom:
    """One more operand of a channel Concat: the graph tensor `buffer`, joined before
    (`first`) or after the channels streamed so far (resolved to a numpy_segment.Concat)."""

    buffer: str
    first: bool


@dataclass(frozen=True)
class GateInput:
    """Squeeze-excitation's Mul: the unit's input times the vector of the unit's first op
    (resolved to From(input, ChannelMul(vector)))."""


@dataclass(frozen=True)
class Unit:
    """One streamable step: its node name, the tensor it streams from and the one it writes, and
    its member ops with a label each (the labels name the rings in the plan)."""

    step: str
    input: str
    output: str
    ops: tuple
    labels: tuple[str, ...]

    @property
    def reduces(self) -> bool:
        return isinstance(self.ops[-1], rows.GlobalAveragePool)

    @property
    def skips(self) -> tuple[str, ...]:
        """Graph tensors the unit reads besides its input (residual and Concat operands)."""
        return tuple(op.buffer for op in self.ops if isinstance(op, (SkipFrom, ConcatFrom)))

    @property
    def branches_ok(self) -> bool:
        """May read another tensor than the previous unit's output (its first op wrapped in From)."""
        return not isinstance(self.ops[0], (rows.Block, rows.GlobalAveragePool))


@dataclass(frozen=True)
class Candidate:
    """A run of units that may stream as one segment."""

    units: tuple[Unit, ...]

    @property
    def steps(self) -> tuple[str, ...]:
        return tuple(u.step for u in self.units)

    @property
    def input(self) -> str:
        return self.units[0].input

    @property
    def output(self) -> str:
        return self.units[-1].output

    @property
    def inner(self) -> tuple[str, ...]:
        return tuple(u.output for u in self.units[:-1])

    @property
    def name(self) -> str:
        first, last = self.units[0].step, self.units[-1].step
        return f"segment[{first}..{last}]" if len(self.units) > 1 else f"segment[{first}]"

    def ops(self) -> tuple[list, list[str]]:
        """The numpy_segment ops of the whole run (skips resolved to indices) and their labels."""
        produced = {self.units[0].input: rows.SEGMENT_INPUT}
        ops, labels = [], []
        for unit in self.units:
            first, source = len(ops), produced[unit.input]
            for op, label in zip(unit.ops, unit.labels):
                ops.append(_resolved(op, produced, source, first))
                labels.append(label)
            if source != first - 1:     # a branch: its first op reads an earlier tensor
                ops[first] = rows.From(source, ops[first])
            produced[unit.output] = len(ops) - 1
        return ops, labels


def _resolved(op, produced: dict, source: int, first: int):
    """A unit's op with graph tensor names turned into segment step indices."""
    if isinstance(op, SkipFrom):
        return rows.Add(produced[op.buffer])
    if isinstance(op, ConcatFrom):
        return rows.Concat(produced[op.buffer], skip_first=op.first)
    if isinstance(op, GateInput):
        return rows.From(source, rows.ChannelMul(vector=first))
    return op


# ---------------------------------------------------------------- one node -> a unit
def stream_unit(node: Node, graph: Graph, constants: dict) -> Unit | None:
    """The unit of `node`, or None when it cannot stream."""
    try:
        return _unit(node, graph, constants)
    except (_CannotStream, KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None


def why_not_streamable(node: Node, graph: Graph, constants: dict) -> str | None:
    """None when `node` streams, else why it ends a segment."""
    try:
        _unit(node, graph, constants)
        return None
    except _CannotStream as exc:
        return str(exc)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return f"{node.describe()}: {exc}"


class _CannotStream(EdgerunError):
    pass


def _unit(node: Node, graph: Graph, constants: dict) -> Unit:
    vi = graph.value_info
    outputs = [o for o in node.outputs if o]
    if len(outputs) != 1 or not node.inputs or not node.inputs[0]:
        raise _CannotStream(f"{node.describe()}: one input and one output tensor stream")
    x, y = node.inputs[0], outputs[0]
    for name in (x, y):
        info = vi.get(name)
        if info is None or info.shape is None or len(info.shape) != 4 or np.dtype(info.dtype) != np.float32:
            raise _CannotStream(f"{node.describe()}: {name!r} is not a float32 NCHW tensor")
    kind = (node.domain, node.op_type)
    if kind == ("edgerun", "InvertedResidual"):
        ops, labels = unfold_block(node, constants)
    elif kind in (("edgerun", "FusedConv"), ("", "Conv")):
        ops, labels = _conv_ops(node, graph, constants)
    elif kind in (("", "MaxPool"), ("", "AveragePool")):
        ops, labels = [_pool_op(node, graph)], [node.name]
    elif kind == ("", "GlobalAveragePool"):
        ops, labels = [rows.GlobalAveragePool()], [node.name]
    elif kind == ("", "Add"):
        x, ops, labels = _add_ops(node, graph)
    elif kind == ("", "Concat"):
        x, ops, labels = _concat_ops(node, graph)
    elif kind == ("edgerun", "ChannelShuffle"):
        ops, labels = [rows.ChannelShuffle(int(node.attrs["groups"]))], [node.name]
    elif kind == ("edgerun", "SqueezeExcite"):
        ops, labels = _squeeze_excite_ops(node, constants)
    elif kind == ("", "Resize"):
        ops, labels = [_resize_op(node, graph, constants)], [node.name]
    elif node.domain == "" and node.op_type in BY_OP_TYPE:
        ops, labels = [_activation_op(node, graph, constants)], [node.name]
    else:
        raise _CannotStream(f"{node.describe()}: {node.op_type} needs its whole input")
    return Unit(node.name, x, y, tuple(ops), tuple(labels))


BLOCK_SLICE_CHANNELS = 32  # hidden channels a streamed block computes at a time (docs/segments.md)


def unfold_block(node: Node, constants: dict) -> tuple[list, list[str]]:
    """An InvertedResidual as one fused row member (numpy_segment.Block): its hidden tensor never
    has rings; each fresh hidden row, BLOCK_SLICE_CHANNELS channels at a time, is scattered into the
    depthwise accumulators of the output rows it feeds."""
    if any(constants.get(name) is None for name in node.inputs[1:7] if name):
        raise _CannotStream(f"{node.describe()}: its weights are not constant")
    hidden = constants[node.inputs[3]].shape[0]
    try:
        block = rows.Block.from_node(node, constants, chunks=max(1, hidden // BLOCK_SLICE_CHANNELS))
    except EdgerunError as exc:
        raise _CannotStream(str(exc)) from None
    return [block], [node.name]


def _append_activation(ops: list, labels: list, kind: str, params, label: str) -> None:
    if kind:
        ops.append(_activation(kind, params, label))
        labels.append(label)


def _activation(kind: str, params, where: str) -> rows.Activation:
    row = KINDS.get(kind)
    if row is None or row.into is None:
        raise _CannotStream(f"{where}: activation {kind!r} has no row form")
    return rows.Activation(kind, tuple(float(p) for p in params))


def _conv_ops(node: Node, graph: Graph, constants: dict) -> tuple[list, list[str]]:
    weight = constants.get(node.input(1))
    bias = constants.get(node.input(2)) if node.input(2) else None
    if weight is None or weight.ndim != 4 or (node.input(2) and bias is None):
        raise _CannotStream(f"{node.describe()}: a 2-D convolution by constant weights streams")
    a = node.attrs
    kernel = list(weight.shape[2:])
    strides, dilations = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    if node.domain == "edgerun":
        pads = list(a["pads"])
    else:
        pads = resolve_conv_pads(a, graph.value_info[node.inputs[0]].shape[2:], kernel, strides, dilations)
    ops = [rows.Conv(weight, bias, tuple(strides), (pads[0], pads[1], pads[2], pads[3]), tuple(dilations),
                     int(a.get("group", 1)))]
    labels = [node.name]
    if node.input(3):   # FusedConv's residual input S (passes/fuse_add.py): act(conv + B + S)
        ops.append(SkipFrom(node.input(3)))
        labels.append(f"{node.name}:sum")
    _append_activation(ops, labels, a.get("activation", ""), a.get("activation_params", []), f"{node.name}:act")
    return ops, labels


def _pool_op(node: Node, graph: Graph) -> rows.Pool:
    a = node.attrs
    if a.get("ceil_mode", 0) or a.get("storage_order", 0):
        raise _CannotStream(f"{node.describe()}: ceil_mode / storage_order do not stream")
    kernel = list(a["kernel_shape"])
    strides, dilations = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    if len(kernel) != 2:
        raise _CannotStream(f"{node.describe()}: 2-D pooling streams")
    pads = resolve_conv_pads(a, graph.value_info[node.inputs[0]].shape[2:], kernel, strides, dilations)
    kind = "max" if node.op_type == "MaxPool" else "avg"
    return rows.Pool(kind, tuple(kernel), tuple(strides), (pads[0], pads[1], pads[2], pads[3]), tuple(dilations),
                     bool(a.get("count_include_pad", 0)))


def _add_ops(node: Node, graph: Graph) -> tuple[str, list, list[str]]:
    """(streamed input, [SkipFrom(other)], labels): an Add of two same-shaped activations."""
    vi = graph.value_info
    if len(node.inputs) != 2 or not all(node.inputs) or node.inputs[0] == node.inputs[1]:
        raise _CannotStream(f"{node.describe()}: an Add of two distinct tensors streams")
    a, b = node.inputs
    if vi[a].shape != vi[b].shape or vi[a].value is not None or vi[b].value is not None:
        raise _CannotStream(f"{node.describe()}: an Add of two same-shaped activations streams (no broadcast)")
    producers = graph.producers()
    # stream from the operand produced later (the chain's previous step); the other is the skip
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    late = max((a, b), key=lambda t: order.get(producers[t].name, -1) if t in producers else -1)
    early = b if late == a else a
    return late, [SkipFrom(early)], [node.name]


def _late_operand(operands, graph: Graph) -> str:
    """The operand produced last in graph order (the one a chain streams from)."""
    producers = graph.producers()
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    return max(operands, key=lambda t: order.get(producers[t].name, -1) if t in producers else -1)


def _concat_ops(node: Node, graph: Graph) -> tuple[str, list, list[str]]:
    """(streamed input, ConcatFrom ops, labels): a Concat along channels of float32 NCHW tensors
    of one height and width, joined one operand at a time to the operand produced last."""
    vi = graph.value_info
    operands = list(node.inputs)
    if len(operands) < 2 or not all(operands):
        raise _CannotStream(f"{node.describe()}: a Concat of two or more tensors streams")
    axis = node.attrs.get("axis")
    if axis not in (1, -3):
        raise _CannotStream(f"{node.describe()}: only a Concat along channels (axis 1) streams")
    shape = vi[operands[0]].shape
    for name in operands:
        info = vi.get(name)
        if info is None or info.value is not None or info.shape is None or len(info.shape) != 4 \
                or tuple(info.shape[2:]) != tuple(shape[2:]) or np.dtype(info.dtype) != np.float32:
            raise _CannotStream(f"{node.describe()}: operand {name!r} is not a float32 NCHW activation "
                                f"of the same rows and columns")
    late = _late_operand(operands, graph)
    at = operands.index(late)
    ops = [ConcatFrom(name, False) for name in operands[at + 1:]]
    ops += [ConcatFrom(name, True) for name in reversed(operands[:at])]
    labels = [f"{node.name}:{k}" for k in range(len(ops) - 1)] + [node.name]
    return late, ops, labels


def _squeeze_excite_ops(node: Node, constants: dict) -> tuple[list, list[str]]:
    """Squeeze-excitation as a mid-segment reducer (its input stays whole in a ring until the
    gate is known, as without recomputation it must) and the Mul of that input by the gate."""
    weights = [constants.get(name) for name in node.inputs[1:5]]
    if len(node.inputs) != 5 or any(w is None for w in weights):
        raise _CannotStream(f"{node.describe()}: squeeze-excitation by constant weights streams")
    a = node.attrs
    act1 = (a.get("activation", ""), tuple(float(p) for p in a.get("activation_params", [])))
    act2 = (a.get("gate", ""), tuple(float(p) for p in a.get("gate_params", [])))
    for kind, params in (act1, act2):
        if kind and KINDS.get(kind) is None:
            raise _CannotStream(f"{node.describe()}: activation {kind!r} has no row form")
    w1, b1, w2, b2 = weights
    squeeze = rows.SqueezeExcite(np.reshape(w1, w1.shape[:2]), b1, np.reshape(w2, w2.shape[:2]), b2,
                                 act1=act1, act2=act2)
    return [squeeze, GateInput()], [f"{node.name}:gate", node.name]


# Resize coordinate rules under which an integer upsampling factor f maps output row o to input
# row o // f (nearest) or to half-pixel linear taps (numpy_segment.Resize).
_NEAREST_AS_FLOOR = {("half_pixel", "round_prefer_floor"), ("half_pixel", "round_prefer_ceil"),
                     ("pytorch_half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil"),
                     ("asymmetric", "floor")}


def _resize_scales_match(node: Node, graph: Graph, constants: dict, factors) -> bool:
    """The coordinates use the scales input when there is one: it must be the factors exactly."""
    name = node.input(1 if graph.opset < 11 else 2)
    scales = constants.get(name) if name else None
    if name and scales is None:
        return False
    if scales is None or np.size(scales) == 0:
        return True
    return np.array_equal(np.reshape(scales, -1), np.array([1, 1, *factors], np.float32))


def _resize_op(node: Node, graph: Graph, constants: dict) -> rows.Resize:
    """An upsampling by integer factors of rows and columns, in a mode whose taps the row
    member reproduces; a 1x1 input (an image-level feature broadcast back) in any mode."""
    vi = graph.value_info
    (n, c, h, w), (n2, c2, h2, w2) = vi[node.inputs[0]].shape, vi[node.outputs[0]].shape
    if (n, c) != (n2, c2) or h2 % h or w2 % w:
        raise _CannotStream(f"{node.describe()}: only an upsampling by integer factors of rows and "
                            f"columns streams")
    factors = (h2 // h, w2 // w)
    if (h, w) != (1, 1) and not _resize_scales_match(node, graph, constants, factors):
        raise _CannotStream(f"{node.describe()}: its scales are not the integer factors {factors}")
    if (h, w) == (1, 1):
        return rows.Resize(factors, "nearest")      # every mode repeats the one pixel
    a = node.attrs
    mode = a.get("mode", "nearest")
    transform = a.get("coordinate_transformation_mode", "half_pixel")
    if graph.opset < 11:
        transform = "asymmetric"
    if mode == "nearest" and (transform, a.get("nearest_mode", "round_prefer_floor")) in _NEAREST_AS_FLOOR:
        return rows.Resize(factors, "nearest")
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel") and not a.get("antialias", 0):
        return rows.Resize(factors, "linear")
    raise _CannotStream(f"{node.describe()}: Resize mode {mode!r} with {transform!r} coordinates does "
                        f"not stream")


def _activation_op(node: Node, graph: Graph, constants: dict) -> rows.Activation:
    kind = BY_OP_TYPE[node.op_type]
    if kind.params_from_inputs and graph.opset >= 11:
        params = []
        for index, default in ((1, _FLOAT32.min), (2, _FLOAT32.max)):
            name = node.input(index)
            value = constants.get(name) if name else np.float32(default)
            if value is None or np.size(value) != 1:
                raise _CannotStream(f"{node.describe()}: Clip bounds must be constant")
            params.append(float(np.reshape(value, -1)[0]))
    else:
        params = kind.params_from_attrs(node.attrs)
    return _activation(kind.name, params, node.describe())


# ---------------------------------------------------------------- runs and candidates
def segment_candidates(graph: Graph, step_nodes: list[Node], constants: dict,
                       max_units: int | None = None) -> list[Candidate]:
    """Every run of consecutive streamable steps (in `step_nodes` order) that may stream as one
    segment: each unit reads the previous one's output, inner tensors are read by no other step
    and are not graph outputs, every skip comes from inside the run or its input, a
    GlobalAveragePool only last."""
    readers: dict[str, set[str]] = {}
    for node in step_nodes:
        for name in node.inputs:
            if name:
                readers.setdefault(name, set()).add(node.name)
    max_units = MAX_UNITS if max_units is None else max_units
    graph_outputs = set(graph.output_names())
    units = [stream_unit(node, graph, constants) for node in step_nodes]
    found = []
    for start, first in enumerate(units):
        if first is None:
            continue
        run, available = [first], {first.input, first.output}
        for unit in units[start + 1:start + max_units]:
            prev = run[-1]
            if unit is None or prev.reduces or unit.input not in available or \
                    (unit.input != prev.output and not unit.branches_ok):
                break
            run.append(unit)
            available.add(unit.output)
        for end in range(1, len(run) + 1):
            candidate = Candidate(tuple(run[:end]))
            if _valid(candidate, readers, graph_outputs):
                found.append(candidate)
    return found


def _valid(candidate: Candidate, readers: dict[str, set[str]], graph_outputs: set[str]) -> bool:
    members = set(candidate.steps)
    for name in candidate.inner:
        if name in graph_outputs or not readers.get(name, set()) <= members:
            return False
    available = {candidate.input}
    for unit in candidate.units:
        if not set(unit.skips) <= available:
            return False
        available.add(unit.output)
    return True
