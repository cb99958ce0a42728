"""Whole tensors vs ring buffers for a streamed segment: MobileNetV2's first layers.

    python tools/segment_report.py [--resolution 224] [--blocks 4] [--bands 1 2 4]
    python tools/segment_report.py --network mobilenet_v2 [--width 1.0] [--resolution 224] [--slice 8]

The chain is given as plain row geometry (scheduler.segments.RowStep), fp32, activations
fused into the conv before them: the stem (3x3 stride 2 to 32 channels), block 1 (depthwise
3x3, 1x1 to 16), block 2 (1x1 to 96, depthwise 3x3 stride 2, 1x1 to 24), block 3 (1x1 to
144, depthwise 3x3, 1x1 to 24, residual add of block 2's output), block 4 (1x1 to 144,
depthwise 3x3 stride 2, 1x1 to 32).  For each band height it prints every tensor's whole
size beside its ring (for two chunk policies), and the segment's streamed bytes (input and
output whole, every inner tensor a ring) beside the op-by-op liveness peak (every tensor
whole from its producer to its last consumer).  Kernel scratch is counted on neither side.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scheduler.segments import (RowStep, SegmentError, block_geometry, block_row_step,  # noqa: E402
                                minimal_segmentation, op_by_op_peak, plan_segment)

FP32 = 4


def _conv(name, height, channels, kernel=1, stride=1):
    """A square conv with ONNX 'same'-style pads (kernel // 2 on top) on a square tensor."""
    pad = kernel // 2
    out = (height + 2 * pad - kernel) // stride + 1
    return RowStep(name, height, out, channels, out, kernel=kernel, stride=stride, pad_top=pad)


def mobilenet_v2_head(resolution: int = 224, blocks: int = 4) -> tuple[tuple[int, int, int], list[RowStep]]:
    """(input shape, steps) of the stem and the first `blocks` (1..4) inverted-residual blocks."""
    if not 1 <= blocks <= 4:
        raise ValueError("blocks must be 1..4")
    steps = [_conv("stem 3x3 s2 -> 32", resolution, 32, 3, 2)]

    def add(step):
        steps.append(step)
        return step.out_height

    h = steps[0].out_height
    h = add(_conv("b1 dw 3x3 (32)", h, 32, 3))
    h = add(_conv("b1 1x1 -> 16", h, 16))
    if blocks >= 2:
        h = add(_conv("b2 1x1 -> 96", h, 96))
        h = add(_conv("b2 dw 3x3 s2 (96)", h, 96, 3, 2))
        h = add(_conv("b2 1x1 -> 24", h, 24))
    if blocks >= 3:
        skip = len(steps) - 1
        h = add(_conv("b3 1x1 -> 144", h, 144))
        h = add(_conv("b3 dw 3x3 (144)", h, 144, 3))
        h = add(_conv("b3 1x1 -> 24", h, 24))
        h = add(RowStep("b3 add", h, h, 24, h, skip=skip))
    if blocks >= 4:
        h = add(_conv("b4 1x1 -> 144", h, 144))
        h = add(_conv("b4 dw 3x3 s2 (144)", h, 144, 3, 2))
        add(_conv("b4 1x1 -> 32", h, 32))
    return (3, resolution, resolution), steps


def segment_report(input_shape, steps, bands, one_row_calls: bool = False) -> str:
    """The table for one chunk policy: steady chunks (each call computes a step's rows of one
    driving band) or one-row calls (every step but the last computes one row per call)."""
    c, h, w = input_shape
    input_bytes = c * h * w * FP32
    output_bytes = steps[-1].row_bytes * steps[-1].out_height

    def chunks(band):
        return [1] * (len(steps) - 1) + [band] if one_row_calls else None

    schedules = {band: plan_segment(steps, h, band, chunks(band)) for band in bands}
    lines = [f"{'tensor':<22}{'shape':>14}{'whole B':>11}" +
             "".join(f"{f'band {b}: rows':>15}{'ring B':>10}" for b in bands)]
    lines.append(f"{'input':<22}{f'{c}x{h}x{w}':>14}{input_bytes:>11,}" +
                 "".join(f"{'whole':>15}{input_bytes:>10,}" for _ in bands))
    for index, step in enumerate(steps):
        shape = f"{step.channels}x{step.out_height}x{step.width}"
        whole = step.row_bytes * step.out_height
        row = f"{step.name:<22}{shape:>14}{whole:>11,}"
        for band in bands:
            if index == len(steps) - 1:
                row += f"{'whole':>15}{whole:>10,}"
            else:
                ring = schedules[band].rings[index]
                row += f"{ring.rows:>15}{ring.bytes:>10,}"
        lines.append(row)
    peak, where = op_by_op_peak(steps, input_bytes)
    peak_no_input, where_no_input = op_by_op_peak(steps, input_bytes, include_input=False)
    lines.append("")
    lines.append(f"op-by-op liveness peak: {peak:,} B at {where!r} "
                 f"({peak_no_input:,} B at {where_no_input!r} with the caller's input apart)")
    for band in bands:
        rings = schedules[band].ring_bytes
        streamed = rings + input_bytes + output_bytes
        lines.append(f"band {band}: rings {rings:,} B; streamed segment {streamed:,} B "
                     f"with input and output whole, {rings + output_bytes:,} B with the caller's input "
                     f"apart ({(rings + output_bytes) / peak_no_input:.1%} of op by op); "
                     f"{schedules[band].iterations} iterations, {len(schedules[band].calls)} calls")
    return "\n".join(lines)


# ---------------------------------------------------------------- whole networks
ALIGNED_OPS = {"Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu"}


class NotStreamable(SegmentError):
    """A node the row geometry cannot express."""


def _shape(graph, name):
    info = graph.value_info.get(name)
    if info is None or info.shape is None or len(info.shape) != 4 or info.shape[0] != 1:
        raise NotStreamable(f"tensor {name!r}: a (1, C, H, W) shape is needed, got "
                            f"{None if info is None else info.shape}")
    return tuple(int(d) for d in info.shape[1:])


class _ChainBuilder:
    """Turns an optimised edgerun graph (batch 1, shapes inferred) into one chain of RowSteps in
    topological order: each step's window reads its `source`, a second input is a `skip`, a
    squeeze-excitation vector a `broadcast`.  The tail after the last GlobalAveragePool
    (Flatten, Gemm) is kept apart: its tensors are vectors."""

    def __init__(self, graph, chunks_of, fuse_pairs=True) -> None:
        self.graph, self.chunks_of, self.fuse_pairs = graph, chunks_of, fuse_pairs
        self.index = {graph.inputs[0].name: -1}
        self.steps: list[RowStep] = []
        self.tail: list = []
        self.consumers = graph.consumers()
        self.skipped: set[str] = set()

    def ref(self, name):
        if name not in self.index:
            raise NotStreamable(f"tensor {name!r} is not produced inside the chain")
        return self.index[name]

    def add(self, node, output, step):
        self.index[output] = len(self.steps)
        self.steps.append(step)

    def build(self):
        for node in self.graph.nodes:
            if id(node) in self.skipped:
                continue
            if self.tail or node.op_type in ("Flatten", "Gemm", "Reshape") and self._after_final_pool(node):
                self.tail.append(node)
                continue
            self.node(node)
        return self.steps

    def _after_final_pool(self, node) -> bool:
        return bool(self.steps) and self.steps[-1].reduce and self.steps[-1].broadcast is None

    def node(self, node):
        op, name = node.op_type, node.name or node.outputs[0]
        x = node.inputs[0]
        if op == "FusedConv":
            self.conv(node, name)
        elif op == "InvertedResidual":
            self.block(node, name)
        elif op in ALIGNED_OPS:
            c, h, w = _shape(self.graph, x)
            self.add(node, node.outputs[0], RowStep(name, h, h, c, w, source=self.ref(x)))
        elif op in ("Add", "Mul", "Sub") and len(node.inputs) == 2:
            self.binary(node, name)
        elif op == "Concat" and len(node.inputs) == 2 and node.attrs.get("axis") == 1:
            (ca, h, w), (cb, _, _) = _shape(self.graph, node.inputs[0]), _shape(self.graph, node.inputs[1])
            self.add(node, node.outputs[0], RowStep(name, h, h, ca + cb, w, source=self.ref(node.inputs[0]),
                                                    skip=self.ref(node.inputs[1])))
        elif op in ("MaxPool", "AveragePool"):
            c, h, w = _shape(self.graph, x)
            _, ho, wo = _shape(self.graph, node.outputs[0])
            k, s, p = node.attrs["kernel_shape"], node.attrs.get("strides", [1, 1]), node.attrs.get("pads", [0] * 4)
            self.add(node, node.outputs[0], RowStep(name, h, ho, c, wo, kernel=k[0], stride=s[0],
                                                    pad_top=p[0], source=self.ref(x)))
        elif op == "Reshape" and self.shuffle(node, name):
            pass
        elif op == "GlobalAveragePool":
            self.pool(node, name)
        else:
            raise NotStreamable(f"node {name!r} ({op}) cannot stream")

    def depthwise_pair(self, node, name) -> bool:
        """A depthwise FusedConv whose only reader is a 1x1 FusedConv (MobileNetV1's layers,
        ShuffleNet's dw + gconv2 with group 1): one Block without expansion, its projection
        activated, so the depthwise output needs no ring."""
        a = node.attrs
        c, h, w = _shape(self.graph, node.inputs[0])
        weight = self.graph.initializers.get(node.inputs[1])
        users = self.consumers.get(node.outputs[0], [])
        if weight is None or a.get("group", 1) != c or weight.shape[0] != c or len(users) != 1:
            return False
        pw = users[0]
        pw_weight = self.graph.initializers.get(pw.inputs[1]) if pw.op_type == "FusedConv" else None
        if pw_weight is None or pw_weight.shape[2:] != (1, 1) or pw.attrs.get("group", 1) != 1 \
                or list(pw.attrs.get("strides", [1, 1])) != [1, 1] or any(pw.attrs.get("pads", [0] * 4)) \
                or weight.shape[2] != weight.shape[3] or len(set(a.get("strides", [1, 1]))) != 1:
            return False
        geometry = block_geometry((c, h, w), c, pw_weight.shape[0], None,
                                  (weight.shape[2], a.get("strides", [1, 1])[0], tuple(a.get("pads", [0] * 4))),
                                  self.chunks_of(c))
        self.skipped.add(id(pw))
        self.add(pw, pw.outputs[0], replace(block_row_step(name + " + pointwise", geometry),
                                            source=self.ref(node.inputs[0])))
        return True

    def conv(self, node, name):
        if self.fuse_pairs and self.depthwise_pair(node, name):
            return
        x, out = node.inputs[0], node.outputs[0]
        c, h, w = _shape(self.graph, x)
        m, ho, wo = _shape(self.graph, out)
        kh, kw = self.graph.initializers[node.inputs[1]].shape[2:]
        a = node.attrs
        if kh != kw or a.get("strides", [1, 1])[0] != a.get("strides", [1, 1])[1]:
            raise NotStreamable(f"node {name!r}: only square kernels and strides are reported")
        depthwise = a.get("group", 1) == c == m
        # the numpy runner's scratch: one tap's products (depthwise) or one output row's im2col
        scratch = (c * wo if depthwise else c * kh * kw * wo) * 4
        self.add(node, out, RowStep(name, h, ho, m, wo, kernel=kh, stride=a.get("strides", [1, 1])[0],
                                    dilation=a.get("dilations", [1, 1])[0], pad_top=a.get("pads", [0] * 4)[0],
                                    source=self.ref(x), scratch_bytes=scratch))

    def block(self, node, name):
        x, out = node.inputs[0], node.outputs[0]
        in_shape = _shape(self.graph, x)
        init = self.graph.initializers
        wd, wp = init[node.inputs[3]], init[node.inputs[5]]
        a = node.attrs
        expand = None
        if node.input(1):
            expand = (init[node.inputs[1]].shape[2], a["expand_stride"], tuple(a["expand_pads"]))
        hidden = wd.shape[0]
        geometry = block_geometry(in_shape, hidden, wp.shape[0], expand,
                                  (wd.shape[2], a["dw_stride"], tuple(a["dw_pads"])),
                                  self.chunks_of(hidden))
        source = self.ref(x)
        step = block_row_step(name, geometry, source if a.get("residual", 0) else None)
        self.add(node, out, replace(step, source=source))

    def binary(self, node, name):
        a, b = node.inputs
        sa, sb = _shape(self.graph, a), _shape(self.graph, b)
        if sa == sb:
            first, second = sorted((self.ref(a), self.ref(b)), reverse=True)
            c, h, w = sa
            self.add(node, node.outputs[0], RowStep(name, h, h, c, w, source=first, skip=second))
        elif node.op_type == "Mul" and sb[1:] == (1, 1) and sb[0] == sa[0]:
            c, h, w = sa
            self.add(node, node.outputs[0], RowStep(name, h, h, c, w, source=self.ref(a),
                                                    broadcast=self.ref(b)))
        else:
            raise NotStreamable(f"node {name!r} ({node.op_type}) of shapes {sa} and {sb} cannot stream")

    def shuffle(self, node, name) -> bool:
        """Reshape (1, g, C/g, H, W) -> Transpose(0, 2, 1, 3, 4) -> Reshape (1, C, H, W): a
        channel permutation, row-local."""
        users = self.consumers.get(node.outputs[0], [])
        if len(users) != 1 or users[0].op_type != "Transpose" or \
                list(users[0].attrs.get("perm", [])) != [0, 2, 1, 3, 4]:
            return False
        merges = self.consumers.get(users[0].outputs[0], [])
        if len(merges) != 1 or merges[0].op_type != "Reshape":
            return False
        c, h, w = _shape(self.graph, node.inputs[0])
        if _shape(self.graph, merges[0].outputs[0]) != (c, h, w):
            return False
        self.skipped.update({id(users[0]), id(merges[0])})
        self.add(node, merges[0].outputs[0], RowStep(name + " (channel shuffle)", h, h, c, w,
                                                     source=self.ref(node.inputs[0])))
        return True

    def pool(self, node, name):
        """A final GlobalAveragePool reduces; a squeeze-excitation (pool, 1x1 FusedConvs on the
        pooled vector, read by a Mul) becomes one reducer whose vector the Mul reads whole."""
        x = node.inputs[0]
        c, h, w = _shape(self.graph, x)
        out, channels, hidden = node.outputs[0], c, 0
        while True:
            users = self.consumers.get(out, [])
            if len(users) == 1 and users[0].op_type == "FusedConv" and \
                    _shape(self.graph, users[0].outputs[0])[1:] == (1, 1):
                self.skipped.add(id(users[0]))
                hidden = max(hidden, channels)
                out, channels = users[0].outputs[0], _shape(self.graph, users[0].outputs[0])[0]
                continue
            break
        step = RowStep(name if out == node.outputs[0] else name + " + SE", h, 1, channels, 1,
                       reduce=True, source=self.ref(x), scratch_bytes=4 * (c + hidden))
        self.add(node, out, step)


def _zoo(name):
    def build(width, resolution):
        from edgerun import zoo

        if name == "mobilenet_v2":
            return zoo.mobilenet_v2(width, resolution, batch=1)
        if name == "mobilenet_v1":
            return zoo.mobilenet_v1(width, resolution, batch=1)
        if name == "shufflenet":
            return zoo.shufflenet_v1(width=2.0 * width, resolution=resolution, batch=1)
        return zoo.mobilenet_v3_small_like(resolution, batch=1)
    return build


NETWORKS = {name: _zoo(name) for name in ("mobilenet_v2", "mobilenet_v1", "shufflenet", "mobilenet_v3")}


def network_chain(model, chunks_of=lambda hidden: 1, fuse_pairs=True):
    """(input shape, steps, tail bytes) of a zoo model at batch 1."""
    from edgerun.loader import load_model
    from edgerun.passes import optimize
    from edgerun.shape_inference import infer_shapes

    graph = load_model(model)
    shapes = {graph.inputs[0].name: (1,) + tuple(graph.inputs[0].shape[1:])}
    graph = infer_shapes(optimize(infer_shapes(graph, shapes)), shapes)
    builder = _ChainBuilder(graph, chunks_of, fuse_pairs)
    steps = builder.build()
    tail = 0
    for node in builder.tail:      # vectors: the node's inputs and outputs whole
        live = sum(int(np.prod(graph.value_info[t].shape)) * 4 for t in node.inputs + node.outputs
                   if t and t not in graph.initializers and graph.value_info.get(t) is not None)
        tail = max(tail, live)
    return _shape(graph, graph.inputs[0].name), steps, tail


def network_report(label: str, model, chunk_channels: int = 0) -> str:
    """The whole-network streamed minimum (caller's input apart) beside the op-by-op peak."""
    chunks_of = (lambda hidden: max(1, hidden // chunk_channels)) if chunk_channels else (lambda hidden: 1)
    candidates = []
    for fuse_pairs in (False, True):      # depthwise + pointwise pairs as Blocks, or apart
        (c, h, w), steps, tail = network_chain(model, chunks_of, fuse_pairs)
        input_bytes = c * h * w * FP32
        seg = minimal_segmentation(steps, h, input_bytes, include_input=False)
        candidates.append((seg.peak, fuse_pairs, steps, tail, seg))
    _, fuse_pairs, steps, tail, seg = min(candidates, key=lambda c: c[:2])
    label += ", depthwise + pointwise pairs fused" if fuse_pairs and len(candidates[0][2]) != len(steps) else ""
    op_peak, op_where = op_by_op_peak(steps, input_bytes, include_input=False)
    lo, hi, minimum = seg.setter
    peak = max(seg.peak, tail)
    lines = [f"{label}: {len(steps)} steps, op-by-op liveness peak {op_peak:,} B at {op_where!r}; "
             f"streamed minimum {peak:,} B = {peak // FP32:,} fp32 values "
             f"({peak / op_peak:.1%} of op by op), set by the segment of steps {lo}..{hi - 1} "
             f"({steps[lo].name!r} .. {steps[hi - 1].name!r}); tail {tail:,} B"]
    for lo, hi, m in seg.segments:
        lines.append(f"  steps {lo:>3}..{hi - 1:<3} {steps[lo].name[:28]:<28} .. {steps[hi - 1].name[:28]:<28}"
                     f" {m.bytes:>10,} B = in {m.input_bytes:,} + rings {m.ring_bytes:,} + state "
                     f"{m.state_bytes:,} + scratch {m.scratch_bytes:,} + out {m.output_bytes:,}"
                     f" + alive across {m.other_bytes:,}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--blocks", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--bands", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--network", choices=sorted(NETWORKS),
                        help="instead: the whole network's streamed minimum, segment by segment")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (--network)")
    parser.add_argument("--slice", type=int, default=8,
                        help="hidden channels per slice of a fused block (t = hidden / slice; 0: t = 1)")
    args = parser.parse_args(argv)
    if args.network:
        model = NETWORKS[args.network](args.width, args.resolution)
        width = f"g=3 {2.0 * args.width}x" if args.network == "shufflenet" else args.width
        label = f"{args.network} {width}/{args.resolution} fp32"
        print(network_report(label, model, args.slice))
        return 0
    input_shape, steps = mobilenet_v2_head(args.resolution, args.blocks)
    title = (f"MobileNetV2 {args.resolution}x{args.resolution} fp32, stem + {args.blocks} block(s) "
             f"as one segment")
    print(f"{title}; steady chunks (a call computes a step's rows of one band)")
    print(segment_report(input_shape, steps, args.bands))
    print(f"\n{title}; one-row calls (every inner step computes one row per call)")
    print(segment_report(input_shape, steps, args.bands, one_row_calls=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
