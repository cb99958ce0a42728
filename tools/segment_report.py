"""Whole tensors vs ring buffers for a streamed segment: MobileNetV2's first layers.

    python tools/segment_report.py [--resolution 224] [--blocks 4] [--bands 1 2 4]

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scheduler.segments import RowStep, op_by_op_peak, plan_segment  # noqa: E402

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--blocks", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--bands", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args(argv)
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
