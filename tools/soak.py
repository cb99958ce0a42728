"""Soak: run one session many times and watch the process's resident memory.

    python tools/soak.py [--runs 20000] [--budget 1.2MB] [--threads 1] [--bundle] [--model SPEC]

Prints RSS after warm-up, at every tenth of the runs, and at the end, plus the growth from warm-up to
the end. A leak in the runtime shows as steady growth; allocator noise stays within a few hundred KB.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import psutil

import edgerun
from edgerun import zoo

WARMUP_RUNS = 50


def _session(model_spec: str, budget, threads: int, bundle: bool):
    from edgerun.models import resolve_model

    model, _ = resolve_model(model_spec)
    if not bundle:
        return edgerun.InferenceSession(model, memory_budget=budget, threads=threads), "InferenceSession"
    from edgerun.compiler import compile_bundle

    path = os.path.join(tempfile.mkdtemp(prefix="edgerun-soak-"), "model.erb")
    compile_bundle(model, path, memory_budget=budget, threads=threads,
                   input_shapes={"input": (1, 3, 224, 224)})
    return edgerun.load(path, threads=threads), "bundle session"


def soak(model_spec: str, runs: int, budget, threads: int, bundle: bool) -> int:
    sess, kind = _session(model_spec, budget, threads, bundle)
    feeds = {"input": zoo.preprocess_imagenet(zoo.sample_image())}
    expected = sess.run(None, feeds)[0].copy()
    process = psutil.Process()
    for _ in range(WARMUP_RUNS):
        sess.run(None, feeds)
    start_rss = process.memory_info().rss
    print(f"{kind}, {model_spec}, budget {budget}, {threads} thread(s), planned peak "
          f"{sess.plan.peak_bytes:,} B; RSS after {WARMUP_RUNS} warm-up runs: {start_rss:,} B")
    started = time.perf_counter()
    max_rss = start_rss
    mismatches = 0
    for i in range(1, runs + 1):
        out = sess.run(None, feeds)[0]
        if i % 97 == 0 and not np.array_equal(out, expected):
            mismatches += 1
        if i % max(runs // 10, 1) == 0 or i == runs:
            rss = process.memory_info().rss
            max_rss = max(max_rss, rss)
            print(f"  run {i:>7,}: RSS {rss:,} B ({rss - start_rss:+,} B)")
    end_rss = process.memory_info().rss
    print(f"{runs:,} runs in {time.perf_counter() - started:.1f} s; RSS growth {end_rss - start_rss:+,} B "
          f"(max {max_rss - start_rss:+,} B); outputs differing from the first run: {mismatches}")
    return 1 if mismatches else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2_pretrained")
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--budget", default="1.2MB")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bundle", action="store_true", help="soak a compiled bundle's session")
    args = parser.parse_args(argv)
    return soak(args.model, args.runs, args.budget, args.threads, args.bundle)


if __name__ == "__main__":
    raise SystemExit(main())
