"""Dense / grouped convolution families against onnxruntime, in one process (the "dense-conv" work).

For each model: edgerun (native kernels, fastest plan) and onnxruntime (CPUExecutionProvider, the same
intra-op threads, session.intra_op.allow_spinning = 0) run the same seeded input in turns, a pause between
engines; the figure is the median of `--runs` timed runs each. Beside the ratio: edgerun's planned peak
(fastest plan) and the smallest peak it can plan (from the MemoryBudgetError of a 1-byte budget).

Models: ResNet18-like and RegNetX-400MF-like graphs built here (Conv + BatchNormalization + Relu + Add as an
exporter emits them, seeded random weights), the zoo's ShuffleNet v1 (g=3, 2x), and the CNNs of the onnx
wheel's backend/test/data/light folder given seeded random weights (tests/test_arena_bounds.py's rule).

    python tools/conv_bench.py --threads 1 2 --runs 15 [--models resnet18 regnet ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
LIGHT = {"resnet50": "light_resnet50", "inception_v1": "light_inception_v1", "vgg19": "light_vgg19",
         "zfnet512": "light_zfnet512", "alexnet": "light_bvlc_alexnet", "squeezenet": "light_squeezenet",
         "densenet121": "light_densenet121", "shufflenet_light": "light_shufflenet",
         "inception_v2": "light_inception_v2"}


class _Builder:
    """Conv + BN + Relu graphs with seeded He-style weights."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def _name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array, prefix="w"):
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def conv_bn(self, x, cin, cout, k, stride=1, group=1, relu=True):
        w = self.rng.normal(0, np.sqrt(2.0 / (cin // group * k * k)), (cout, cin // group, k, k))
        y = self._name("conv")
        self.nodes.append(helper.make_node("Conv", [x, self.const(w)], [y], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4, group=group))
        bn = self._name("bn")
        params = [self.const(self.rng.uniform(0.5, 1.0, cout)), self.const(self.rng.normal(0, 0.05, cout)),
                  self.const(self.rng.normal(0, 0.05, cout)), self.const(self.rng.uniform(0.8, 1.2, cout))]
        self.nodes.append(helper.make_node("BatchNormalization", [y] + params, [bn]))
        return self.relu(bn) if relu else bn

    def relu(self, x):
        y = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [y]))
        return y

    def add(self, a, b):
        y = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y]))
        return y

    def head(self, x, channels):
        pooled = self._name("gap")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
        flat = self._name("flat")
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat]))
        w = self.rng.normal(0, np.sqrt(1.0 / channels), (1000, channels))
        self.nodes.append(helper.make_node("Gemm", [flat, self.const(w), self.const(np.zeros(1000))], ["logits"],
                                           transB=1))

    def model(self, name, resolution):
        graph = helper.make_graph(self.nodes, name,
                                  [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                 [1, 3, resolution, resolution])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
                                  self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def resnet18_like(resolution=224, seed=0):
    """torchvision's ResNet18: 7x7/2 stem, 3x3/2 max pool, four stages of two basic blocks."""
    b = _Builder(seed)
    x = b.conv_bn("input", 3, 64, 7, 2)
    pooled = b._name("pool")
    b.nodes.append(helper.make_node("MaxPool", [x], [pooled], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = pooled, 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.conv_bn(x, cin, cout, 3, stride)
            y = b.conv_bn(y, cout, cout, 3, 1, relu=False)
            skip = b.conv_bn(x, cin, cout, 1, stride, relu=False) if (stride != 1 or cin != cout) else x
            x, cin = b.relu(b.add(y, skip)), cout
    b.head(x, cin)
    return b.model("resnet18_like", resolution)


def regnetx_400mf_like(resolution=224, seed=0):
    """RegNetX-400MF's shape: 3x3/2 stem to 32, stages (width, depth) (32,1) (64,2) (160,7) (400,12), group
    width 16, bottleneck ratio 1: 1x1 -> grouped 3x3 (stride on the first block) -> 1x1, residual."""
    b = _Builder(seed)
    x, cin = b.conv_bn("input", 3, 32, 3, 2), 32
    for width, depth in ((32, 1), (64, 2), (160, 7), (400, 12)):
        for block in range(depth):
            stride = 2 if block == 0 else 1
            y = b.conv_bn(x, cin, width, 1)
            y = b.conv_bn(y, width, width, 3, stride, group=width // 16)
            y = b.conv_bn(y, width, width, 1, relu=False)
            skip = b.conv_bn(x, cin, width, 1, stride, relu=False) if (stride != 1 or cin != width) else x
            x, cin = b.relu(b.add(y, skip)), width
    b.head(x, cin)
    return b.model("regnetx_400mf_like", resolution)


def load_model(name):
    if name == "resnet18":
        return resnet18_like()
    if name == "regnet":
        return regnetx_400mf_like()
    if name == "shufflenet_v1":
        from edgerun import zoo
        return zoo.shufflenet_v1(batch=1)
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from test_arena_bounds import ONNX_DATA, with_random_weights   # the tests' seeded-weights rule
    return with_random_weights(onnx.load(os.path.join(ONNX_DATA, "light", LIGHT[name] + ".onnx")))


def feeds_for(model):
    rng = np.random.default_rng(0)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name not in inits:
            shape = [d.dim_value if d.dim_value > 0 else 1 for d in value.type.tensor_type.shape.dim]
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def ort_session(model, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                providers=["CPUExecutionProvider"])


def minimum_peak(model, threads):
    from edgerun import InferenceSession, MemoryBudgetError
    try:
        InferenceSession(model, memory_budget=1, threads=threads, kernels_backend="native").run(
            None, feeds_for(model))
    except MemoryBudgetError as exc:
        return exc.minimum_bytes
    return None


def bench(name, threads_list, runs):
    from edgerun import InferenceSession
    model = load_model(name)
    feeds = feeds_for(model)
    rows = []
    for threads in threads_list:
        sess = InferenceSession(model, threads=threads, kernels_backend="native")
        ours = sess.run(None, feeds, profile=True)
        peak = sess.last_run.planned_peak_bytes
        ort = ort_session(model, threads)
        theirs = ort.run(None, feeds)
        diff = float(np.max(np.abs(ours[0] - theirs[0])))
        scale = float(np.max(np.abs(theirs[0])))
        times = {"edgerun": [], "onnxruntime": []}
        runners = {"edgerun": lambda: sess.run(None, feeds), "onnxruntime": lambda: ort.run(None, feeds)}
        for run in runners.values():
            run()
        for _ in range(runs):
            for engine, run in runners.items():
                time.sleep(0.02)
                start = time.perf_counter()
                run()
                times[engine].append(time.perf_counter() - start)
        e, o = statistics.median(times["edgerun"]), statistics.median(times["onnxruntime"])
        row = dict(model=name, threads=threads, edgerun_ms=e * 1e3, onnxruntime_ms=o * 1e3, ratio=e / o,
                   planned_peak=peak, max_abs_diff=diff, output_scale=scale)
        if threads == threads_list[0]:
            row["minimum_peak"] = minimum_peak(model, threads)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "regnet", "shufflenet_v1", "resnet50",
                                                        "inception_v1", "squeezenet", "zfnet512", "alexnet",
                                                        "densenet121", "vgg19"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import edgerun
    print(f"# edgerun from {os.path.dirname(edgerun.__file__)}", flush=True)
    rows = [row for name in args.models for row in bench(name, args.threads, args.runs)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
