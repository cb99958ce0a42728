"""MobileNetV2 1.0/224 (pretrained): planned and measured activation peaks at several budgets, float32 and float16.

    python tools/memory_report.py [--kernels numpy|native] [--threads N] [--activation-dtype float32|float16]

Prints one row per budget: the planned peak (arena), the measured peak (arena + what tracemalloc saw
escape it during run()), the largest output difference to the unsplit fastest plan, the top-1 class and
whether the top-5 classes equal the fastest plan's.  Then the per-block minimum (no segments) and the
streamed minimum (over segmentations: runs of steps streamed row by row through ring buffers), and a run
at the streamed minimum.  The caller's input and the weights are not counted (docs/architecture.md,
"one definition of memory").  Every row states the dtype the arena stores activations in (the `dtype`
column): float32, then float16 (activation_dtype="float16": every activation and block scratch buffer in
float16, arithmetic in float32), whose rows compare to the float32 fastest plan and end with runs at its
per-block and streamed minima.
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

import scheduler
from edgerun import InferenceSession, MemoryBudgetError, kernels, zoo
from edgerun.executor import CompiledModel

BUDGETS = [None, "4MB", "2MB", "1.2MB", "100KB"]


def report(backend: str, threads: int, dtypes=("float32", "float16")) -> None:
    model = zoo.mobilenet_v2(pretrained=True)
    image = zoo.preprocess_imagenet(zoo.sample_image())
    layered = InferenceSession(model, kernels_backend=backend, threads=threads,
                               disabled_passes={"fuse_blocks", "fuse_stem"}).plan.peak_bytes
    print(f"MobileNetV2 1.0/224 fp32, {backend} kernels, {threads} thread(s); layer-by-layer plan "
          f"(no block fusion): {layered:,} B")
    print(f"{'budget':>8} {'dtype':>7} {'planned B':>12} {'measured B':>12} {'escaped B':>10} {'max |diff|':>11} "
          f"top-1 top-5 same  segments")
    reference = None
    if "float32" in dtypes:
        for budget in BUDGETS:
            reference = _report_budget(model, image, budget, backend, threads, reference)
        problem = InferenceSession(model, kernels_backend=backend, threads=threads).compiled.problem
        per_block, per_block_step = scheduler.minimum_peak(dataclasses.replace(problem, segments=[]))
        streamed, streamed_step = scheduler.minimum_peak(problem)
        print(f"float32 per-block minimum (no segments): {per_block:,} B, set by {per_block_step}")
        print(f"float32 streamed minimum (over segmentations): {streamed:,} B, set by {streamed_step}")
        for budget in sorted({streamed, (streamed + per_block) // 2}):
            _report_budget(model, image, budget, backend, threads, reference)
    if "float16" in dtypes:
        _report_float16(model, image, backend, threads, reference)


def _report_float16(model, image, backend: str, threads: int, reference) -> None:
    """The float16 rows: the fastest plan, then runs at its per-block and streamed minima (diffs against the
    float32 fastest plan's output when it ran)."""
    reference = _report_budget(model, image, None, backend, threads, reference, "float16")
    graph = InferenceSession(model, kernels_backend=backend, threads=threads, activation_dtype="float16").graph
    minima = []
    for segments, label in ((False, "per-block minimum (no segments)"), (True, "streamed minimum")):
        try:
            CompiledModel(graph, budget=1, backend=backend, threads=threads, segments=segments,
                          activation_dtype="float16")
        except MemoryBudgetError as exc:
            print(f"float16 {label}: {exc.minimum_bytes:,} B, set by {exc.limiting_step}")
            minima.append(exc.minimum_bytes)
    for budget in sorted(set(minima)):
        _report_budget(model, image, budget, backend, threads, reference, "float16")


def _top5(out) -> list[int]:
    return [int(i) for i in np.argsort(-out.reshape(-1))[:5]]


def _report_budget(model, image, budget, backend: str, threads: int, reference, dtype: str = "float32"):
    """One row of the report; returns the reference output (the first run's)."""
    try:
        sess = InferenceSession(model, memory_budget=budget, kernels_backend=backend, threads=threads,
                                activation_dtype=dtype)
    except MemoryBudgetError as exc:
        print(f"{budget:>8} {dtype:>7}  does not fit: minimum {exc.minimum_bytes:,} B, set by {exc.limiting_step}")
        return reference
    out = sess.run(None, {"input": image}, profile=True)[0]
    reference = out if reference is None else reference
    stats = sess.last_run
    segments = ", ".join(f"{len(s.steps)} steps band {s.band_rows} rings {s.ring_bytes:,} B"
                         for s in sess.plan.segments) or "-"
    print(f"{budget or 'none':>8} {sess.plan.activation_dtype:>7} {stats.planned_peak_bytes:>12,} "
          f"{stats.measured_peak_bytes:>12,} {stats.escaped_bytes:>10,} {float(np.max(np.abs(out - reference))):>11.2e} {int(out.argmax()):>5} "
          f"{str(_top5(out) == _top5(reference)):>10}  {segments}")
    return reference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", choices=kernels.BACKENDS, default=kernels.backend())
    parser.add_argument("--threads", type=int, default=1,
                        help="native threads; each thread of a banded block has its own scratch (default 1)")
    parser.add_argument("--activation-dtype", choices=("float32", "float16"), default=None,
                        help="report only this activation dtype (default: float32, then float16)")
    args = parser.parse_args(argv)
    report(args.kernels, args.threads, (args.activation_dtype,) if args.activation_dtype else ("float32", "float16"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
