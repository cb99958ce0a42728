"""Time a streamed segment: MobileNetV2's stem + first blocks, native vs numpy vs op by op.

    python tools/segment_bench.py [--blocks 4] [--resolution 224] [--bands 1 2 3 4] [--runs 10]
                                  [--threads 1 2]
    python tools/segment_bench.py --plans [--budgets 400000] [--runs 30] [--threads 1]

--plans times whole MobileNetV2 1.0/224 fp32 plans instead (zoo model, seeded random weights, native
kernels): edgerun's fastest plan (no budget), each --budgets plan and the minimum plan (the smallest
budget that fits), beside onnxruntime (session.intra_op.allow_spinning=0) in the same process on the
same input; runs interleave (one run of each per round, so a load change hits all alike); medians of
wall and process CPU time, and each plan's ratio to the fastest plan's. The streamed plans' outputs
are checked against the fastest plan's (1e-5 of the largest logit) before timing.

The layers are built as ONNX (edgerun.zoo's MobileNetV2 layers, seeded random weights, batch
norms after every conv) and run three ways on one 3 x R x R input:
- `session`: edgerun.InferenceSession on the native kernels, its fastest plan (fused blocks, every
  tensor whole), the op-by-op way;
- `native band b`: NativeSegmentRunner, the whole chain as one segment, one-row calls (every inner
  step computes one row per call, the smallest rings) or steady chunks, at band height b;
- `numpy band b`: the numpy SegmentRunner on the same plan (one thread).
The segment's ops are the graph's, batch norms folded into the convs by hand, and every output is
checked against the session's before it is timed. Times are medians of --runs runs, "wall / cpu"
ms (cpu: the process's CPU time over all its threads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgerun import InferenceSession  # noqa: E402
from edgerun.kernels.native_segment import NativeSegmentRunner  # noqa: E402
from edgerun.kernels.numpy_segment import Activation, Add, Conv, SegmentRunner  # noqa: E402
from edgerun.zoo.graph import BN_EPSILON, GraphBuilder, RandomParameters  # noqa: E402
from edgerun.zoo.mobilenet_v2 import _conv_bn_act, _inverted_residual, block_channels  # noqa: E402


def stem_and_blocks(blocks: int, resolution: int, seed: int = 0):
    """ONNX model of MobileNetV2 1.0's stem and first `blocks` blocks (output "output")."""
    g = GraphBuilder(RandomParameters(seed))
    x = _conv_bn_act(g, "input", "features.0", 3, 32, 3, stride=2)
    channels, index, size = 32, 1, (resolution - 1) // 2 + 1
    for t, c, n, s in block_channels(1.0):
        for i in range(n):
            if index > blocks:
                break
            stride = s if i == 0 else 1
            x = _inverted_residual(g, x, f"features.{index}", channels, c, stride, t)
            channels, index, size = c, index + 1, (size - 1) // stride + 1
    g.nodes[-1].output[0] = "output"
    model = helper.make_model(helper.make_graph(
        g.nodes, "stem_and_blocks",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, resolution, resolution])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, size, size])],
        initializer=list(g.initializers.values())), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def segment_ops(model):
    """The graph as segment ops: Conv with its BatchNormalization folded in, Clip(0, 6), Add."""
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ops, step_of, pending = [], {"input": -1}, None
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            pending = (node, init[node.input[1]].astype(np.float64), attrs)
            continue
        if node.op_type == "BatchNormalization":
            conv, weight, cattrs = pending
            scale, shift, mean, var = (init[name].astype(np.float64) for name in node.input[1:])
            factor = scale / np.sqrt(var + BN_EPSILON)
            pads = cattrs["pads"]
            ops.append(Conv((weight * factor[:, None, None, None]).astype(np.float32),
                            (shift - mean * factor).astype(np.float32), tuple(cattrs["strides"]),
                            (pads[0], pads[1], pads[2], pads[3]), tuple(cattrs["dilations"]), cattrs["group"]))
        elif node.op_type == "Clip":
            ops.append(Activation("clip", (0.0, 6.0)))
        elif node.op_type == "Add":
            a, b = (step_of[name] for name in node.input)
            ops.append(Add(min(a, b)))
        else:
            raise ValueError(f"unexpected {node.op_type}")
        step_of[node.output[0]] = len(ops) - 1
    return ops


def median_ms(fn, runs: int) -> str:
    """'wall / cpu' medians in ms: wall clock, and the CPU time of the whole process (every thread),
    which a loaded machine disturbs less."""
    fn()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return f"{statistics.median(wall) * 1000.0:7.2f} / {statistics.median(cpu) * 1000.0:6.2f}"


def plan_sessions(budgets, threads: int):
    """(label, session) of MobileNetV2 1.0/224 on the native kernels: fastest, each budget, minimum."""
    from edgerun.errors import MemoryBudgetError
    from edgerun.zoo import mobilenet_v2

    model = mobilenet_v2(1.0, 224, batch=1).SerializeToString()
    try:
        InferenceSession(model, memory_budget=1, kernels_backend="native", threads=threads)
    except MemoryBudgetError as error:
        minimum = error.minimum_bytes
    sessions = [("fastest", InferenceSession(model, kernels_backend="native", threads=threads))]
    for budget in list(budgets) + [minimum]:
        label = f"{budget:,} B" + (" (minimum)" if budget == minimum else "")
        sessions.append((label, InferenceSession(model, memory_budget=budget, kernels_backend="native",
                                                 threads=threads)))
    return model, sessions


def time_plans(budgets, runs: int, threads: int) -> None:
    import onnxruntime as ort

    model, sessions = plan_sessions(budgets, threads)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feeds = {"input": x}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ort_session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    expected = sessions[0][1].run(None, feeds)[0]
    for label, session in sessions[1:]:
        error = float(np.abs(session.run(None, feeds)[0] - expected).max())
        assert error <= 1e-5 * float(np.abs(expected).max()), (label, error)
    runners = [("onnxruntime", lambda: ort_session.run(None, feeds))] + \
        [(label, (lambda s=session: s.run(None, feeds))) for label, session in sessions]
    wall = {label: [] for label, _ in runners}
    cpu = {label: [] for label, _ in runners}
    for _ in range(2):
        for _, fn in runners:
            fn()
    for _ in range(runs):
        for label, fn in runners:
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[label].append(time.perf_counter() - start)
            cpu[label].append(time.process_time() - start_cpu)
    fast_wall, fast_cpu = statistics.median(wall["fastest"]), statistics.median(cpu["fastest"])
    print(f"MobileNetV2 1.0/224 fp32, native, {threads} thread(s), medians of {runs} interleaved runs "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"{'plan':<24} {'peak B':>10} {'segments':>8} {'wall ms':>8} {'cpu ms':>8} {'wall / fastest':>14} "
          f"{'cpu / fastest':>13}")
    peaks = {label: (s.plan.peak_bytes, len(s.plan.segments)) for label, s in sessions}
    for label, _ in runners:
        w, c = statistics.median(wall[label]), statistics.median(cpu[label])
        peak, segments = peaks.get(label, (0, 0))
        print(f"{label:<24} {peak:>10,} {segments:>8} {w * 1e3:>8.2f} {c * 1e3:>8.2f} {w / fast_wall:>14.2f} "
              f"{c / fast_cpu:>13.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", action="store_true", help="time whole MobileNetV2 plans (see above)")
    parser.add_argument("--budgets", type=int, nargs="*", default=[400_000])
    parser.add_argument("--blocks", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--bands", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-numpy", action="store_true", help="skip the (slow) numpy runner")
    args = parser.parse_args(argv)
    if args.plans:
        time_plans(args.budgets, args.runs, args.threads[0])
        return 0
    model = stem_and_blocks(args.blocks, args.resolution)
    ops = segment_ops(model)
    x = np.random.default_rng(1).standard_normal((3, args.resolution, args.resolution)).astype(np.float32)
    print(f"MobileNetV2 1.0/{args.resolution} stem + blocks 1-{args.blocks} ({len(ops)} segment steps), "
          f"medians of {args.runs} runs, wall / cpu ms")
    reference = None
    for threads in args.threads:
        session = InferenceSession(model.SerializeToString(), threads=threads, kernels_backend="native")
        feeds = {"input": x[None]}
        out = session.run(None, feeds)[0][0]
        reference = out if reference is None else reference
        print(f"  session (op by op, fused blocks), {threads} thread(s): "
              f"{median_ms(lambda: session.run(None, feeds), args.runs)}")
    scale = float(np.abs(reference).max())
    for policy in ("one-row", "steady"):
        for band in args.bands:
            chunks = [1] * (len(ops) - 1) + [band] if policy == "one-row" else None
            runners = [(f"native {t}T", NativeSegmentRunner(ops, x.shape, band, chunks=chunks, threads=t))
                       for t in args.threads]
            if not args.no_numpy:
                runners.append(("numpy 1T", SegmentRunner(ops, x.shape, band, chunks=chunks)))
            cells = []
            for name, runner in runners:
                out = np.empty(runner.out_shape, np.float32)
                runner.run(x, out)
                error = float(np.abs(out - reference).max())
                assert error <= 1e-4 * scale, (name, band, error)
                cells.append(f"{name} {median_ms(lambda: runner.run(x, out), args.runs)}")
            print(f"  segment {policy:>7} calls, band {band}: arena {runners[0][1].arena_bytes:>9,} B; "
                  + "; ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
