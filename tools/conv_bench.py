"""Dense / grouped convolution families against onnxruntime, in one process (the "dense-conv" work).

For each model: edgerun (native kernels, fastest plan) and onnxruntime (CPUExecutionProvider, the same
intra-op threads, session.intra_op.allow_spinning = 0) run the same seeded input in turns, a pause between
engines; the figure is the median of `--runs` timed runs each. Beside the ratio: edgerun's planned peak
(fastest plan) and the smallest peak it can plan (from the MemoryBudgetError of a 1-byte budget).

Models: ResNet18-like and RegNetX-400MF-like graphs built here (Conv + BatchNormalization + Relu + Add as an
exporter emits them, seeded random weights), the zoo's ShuffleNet v1 (g=3, 2x), and the CNNs of the onnx
wheel's backend/test/data/light folder given seeded random weights (tests/test_arena_bounds.py's rule).

    python tools/conv_bench.py --threads 1 2 --runs 15 [--models resnet18 regnet ...] [--json out.json]

With --convs, single convolutions instead (one Conv node each, the shapes of the models' convs, seeded
weights and bias): `--convs all` or names from CONVS, e.g. `--convs r18_3x3_56 regnet_g3x3_14`.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))   # the edgerun of this checkout, not an installed one
LIGHT = {"resnet50": "light_resnet50", "inception_v1": "light_inception_v1", "vgg19": "light_vgg19",
         "zfnet512": "light_zfnet512", "alexnet": "light_bvlc_alexnet", "squeezenet": "light_squeezenet",
         "densenet121": "light_densenet121", "shufflenet_light": "light_shufflenet",
         "inception_v2": "light_inception_v2"}


# name: (cin, size, cout, kernel, stride, group); pads keep the size (kernel // 2)
CONVS = {
    "r18_stem_7x7s2": (3, 224, 64, 7, 2, 1),
    "r18_3x3_56": (64, 56, 64, 3, 1, 1),
    "r18_3x3s2_56": (64, 56, 128, 3, 2, 1),
    "r18_3x3_28": (128, 28, 128, 3, 1, 1),
    "r18_3x3_14": (256, 14, 256, 3, 1, 1),
    "r18_3x3_7": (512, 7, 512, 3, 1, 1),
    "vgg_3x3_224": (64, 224, 64, 3, 1, 1),
    "incep_5x5_28": (32, 28, 96, 5, 1, 1),
    "incep_3x3_28": (96, 28, 96, 3, 1, 1),
    "squeeze_3x3_54": (16, 54, 64, 3, 1, 1),
    "squeeze_3x3_13": (64, 13, 256, 3, 1, 1),
    "regnet_g3x3_28": (64, 28, 64, 3, 1, 4),
    "regnet_g3x3_14": (160, 14, 160, 3, 1, 10),
    "regnet_g3x3_7": (400, 7, 400, 3, 1, 25),
    "regnet_g3x3s2_28": (160, 28, 160, 3, 2, 10),
    "shuffle_g1x1_28": (240, 28, 240, 1, 1, 3),
    "shuffle_g1x1_14": (960, 14, 240, 1, 1, 3),
    "shuffle_g1x1up_14": (240, 14, 960, 1, 1, 3),
    "shuffle_g1x1_7": (1920, 7, 480, 1, 1, 3),
    "regnet_1x1_28": (64, 28, 64, 1, 1, 1),
    "regnet_1x1_14": (160, 14, 160, 1, 1, 1),
    "regnet_1x1_7": (400, 7, 400, 1, 1, 1),
    "r50_1x1_56": (256, 56, 64, 1, 1, 1),
    "r50_1x1s2_56": (256, 56, 512, 1, 2, 1),
}


def conv_model(name):
    from onnx import TensorProto, helper, numpy_helper
    cin, size, cout, k, stride, group = CONVS[name]
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    pad = k // 2
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[stride, stride],
                            pads=[pad] * 4, group=group)
    out = (size + 2 * pad - k) // stride + 1
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, cin, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out, out])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def load_model(name):
    if name in CONVS:
        return conv_model(name)
    from edgerun.cli.conv_models import regnetx_400mf_like, resnet18_like
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
    options.log_severity_level = 3
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
        if threads == threads_list[0] and name not in CONVS:
            row["minimum_peak"] = minimum_peak(model, threads)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "regnet", "shufflenet_v1", "resnet50",
                                                        "inception_v1", "squeezenet", "zfnet512", "alexnet",
                                                        "densenet121", "vgg19"])
    parser.add_argument("--convs", nargs="+", help="single convolutions (names of CONVS, or all)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import edgerun
    print(f"# edgerun from {os.path.dirname(edgerun.__file__)}", flush=True)
    if args.convs:
        args.models = list(CONVS) if args.convs == ["all"] else args.convs
    rows = [row for name in args.models for row in bench(name, args.threads, args.runs)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
