"""The whole memory bill of running a model, not only its activation arena: RSS growth per runtime.

    python tools/memory_bill.py [--budget 1.2MB] [--threads 1] [--runs 10]

Each runtime runs in a fresh interpreter on MobileNetV2 1.0/224 (pretrained, batch 1): the RSS after
importing numpy, onnx, onnxruntime and edgerun's runtime modules (the session, bundle, executor and
kernel modules and the C extension, as `import onnxruntime` loads its library) and preparing the input
is the baseline; the bill is the RSS after creating the session and running it `--runs` times, minus
that baseline. What importing edgerun's runtime modules costs is printed on its own line, and each
edgerun row also adds what importing the modules it uses costs (the bundle: edgerun.bundle and the C
extension, not the ONNX front end). Rows:
onnxruntime on the .onnx file, edgerun.InferenceSession on the same file (planned under the budget),
and edgerun.load of a bundle compiled from it for the same budget and threads. The weights' bytes
(fp32 initializers), the plan's arena, the bundle session's allowance (weights + arena + 4 MB) and
the bundle's file and weights-section bytes are printed beside them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import onnx

from edgerun import zoo
from edgerun.compiler import compile_bundle

CHILD = r"""
import gc, sys
import numpy as np, onnx, onnxruntime, psutil
import edgerun
from edgerun import zoo
kind, path, budget, threads, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
x = zoo.preprocess_imagenet(zoo.sample_image())
gc.collect()
process = psutil.Process()
before_runtime = process.memory_info().rss
import importlib
# first the modules this runtime uses (what importing them costs is reported), then the others, so
# that every baseline holds the same modules
own = {"bundle": ["edgerun.bundle"], "InferenceSession": ["edgerun.session", "edgerun.bundle"]}.get(kind, [])
for name in own + ["edgerun.kernels._native", "edgerun.kernels.native_segment"]:
    importlib.import_module(name)
gc.collect()
own_imports = process.memory_info().rss - before_runtime if own else 0
for name in ["edgerun.bundle", "edgerun.session"]:
    importlib.import_module(name)
gc.collect()
base = process.memory_info().rss
if kind == "onnxruntime":
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
elif kind == "InferenceSession":
    session = edgerun.InferenceSession(path, memory_budget=budget, threads=threads)
else:
    session = edgerun.load(path, threads=threads)
for _ in range(runs):
    session.run(None, {"input": x})
gc.collect()
arena = getattr(getattr(session, "plan", None), "peak_bytes", 0)
print(process.memory_info().rss - base, arena, own_imports, base - before_runtime)
"""
LABELS = {"bundle": "edgerun.load(bundle)", "InferenceSession": "edgerun.InferenceSession(.onnx)"}
ALLOWANCE = 4_000_000   # bytes a bundle session may add to its weights and arena (issue 14: "4 MB")


def measure(kind: str, path: str, budget: str, threads: int, runs: int) -> tuple[int, int, int, int]:
    """(RSS growth, arena bytes, RSS of importing the edgerun modules this runtime uses, RSS of importing
    all of edgerun's runtime modules) of one runtime, in a fresh interpreter whose working directory is
    this checkout's root (so that it runs this edgerun)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", CHILD, kind, path, budget, str(threads), str(runs)],
                            check=True, capture_output=True, text=True, cwd=root)
    growth, arena, own_imports, imports = result.stdout.split()
    return int(growth), int(arena), int(own_imports), int(imports)


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(onnx.numpy_helper.to_array(init).nbytes for init in model.graph.initializer)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="1.2MB")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    model = zoo.mobilenet_v2(pretrained=True, batch=1)
    with tempfile.TemporaryDirectory(prefix="edgerun-bill-") as folder:
        onnx_path = os.path.join(folder, "mobilenet_v2.onnx")
        bundle_path = os.path.join(folder, "mobilenet_v2.erb")
        onnx.save(model, onnx_path)
        info = compile_bundle(onnx_path, bundle_path, memory_budget=args.budget, threads=args.threads)
        weights = weight_bytes(model)
        print(f"MobileNetV2 1.0/224, budget {args.budget}, {args.threads} thread(s), {args.runs} runs; "
              f"weights {weights:,} B (float32); bundle file {info.file_bytes:,} B, weights section "
              f"{info.weights_bytes:,} B (the weights and the kernels' layouts of them)")
        print(f"{'runtime':<32} {'RSS growth':>14} {'arena':>12} {'growth + its edgerun imports':>30}")
        imports = 0
        for kind, path in (("onnxruntime", onnx_path), ("InferenceSession", onnx_path), ("bundle", bundle_path)):
            growth, arena, own_imports, imports = measure(kind, path, args.budget, args.threads, args.runs)
            with_imports = f"{growth + own_imports:>30,}" if kind != "onnxruntime" else ""
            print(f"{LABELS.get(kind, kind):<32} {growth:>14,} {arena:>12,} {with_imports}")
            if kind == "bundle":
                allowance = weights + arena + ALLOWANCE
                verdict = "met" if growth <= allowance else "NOT met"
                print(f"{'  allowance: weights+arena+4 MB':<32} {allowance:>14,}  ({verdict})")
        print(f"importing edgerun's runtime modules and C extension (in every baseline): {imports:,} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
