"""MobileNetV2 1.0/224 fp32 (pretrained): planned and measured activation peaks at several budgets.

    python tools/memory_report.py [--kernels numpy|native] [--threads N]

Prints one row per budget: the planned peak (arena), the measured peak (arena + what tracemalloc saw
escape it during run()), the largest output difference to the unsplit fastest plan, the top-1 class and
whether the top-5 classes equal the fastest plan's.  Then the per-block minimum (no segments) and the
streamed minimum (over segmentations: runs of steps streamed row by row through ring buffers), and a run
at the streamed minimum.  The caller's input and the weights are not counted (docs/architecture.md,
"one definition of memory").
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

import scheduler
from edgerun import InferenceSession, MemoryBudgetError, kernels, zoo

BUDGETS = [None, "4MB", "2MB", "1.2MB", "100KB"]


def report(backend: str, threads: int) -> None:
    model = zoo.mobilenet_v2(pretrained=True)
    image = zoo.preprocess_imagenet(zoo.sample_image())
    layered = InferenceSession(model, kernels_backend=backend, threads=threads,
                               disabled_passes={"fuse_blocks", "fuse_stem"}).plan.peak_bytes
    print(f"MobileNetV2 1.0/224 fp32, {backend} kernels, {threads} thread(s); layer-by-layer plan "
          f"(no block fusion): {layered:,} B")
    print(f"{'budget':>8} {'planned B':>12} {'measured B':>12} {'escaped B':>10} {'max |diff|':>11} top-1 "
          f"top-5 same  segments")
    reference = None
    for budget in BUDGETS:
        reference = _report_budget(model, image, budget, backend, threads, reference)
    problem = InferenceSession(model, kernels_backend=backend, threads=threads).compiled.problem
    per_block, per_block_step = scheduler.minimum_peak(dataclasses.replace(problem, segments=[]))
    streamed, streamed_step = scheduler.minimum_peak(problem)
    print(f"per-block minimum (no segments): {per_block:,} B, set by {per_block_step}")
    print(f"streamed minimum (over segmentations): {streamed:,} B, set by {streamed_step}")
    for budget in sorted({streamed, (streamed + per_block) // 2}):
        _report_budget(model, image, budget, backend, threads, reference)


def _top5(out) -> list[int]:
    return [int(i) for i in np.argsort(-out.reshape(-1))[:5]]


def _report_budget(model, image, budget, backend: str, threads: int, reference):
    """One row of the report; returns the reference output (the first run's)."""
    try:
        sess = InferenceSession(model, memory_budget=budget, kernels_backend=backend, threads=threads)
    except MemoryBudgetError as exc:
        print(f"{budget:>8}  does not fit: minimum {exc.minimum_bytes:,} B, set by {exc.limiting_step}")
        return reference
    out = sess.run(None, {"input": image}, profile=True)[0]
    reference = out if reference is None else reference
    stats = sess.last_run
    segments = ", ".join(f"{len(s.steps)} steps band {s.band_rows} rings {s.ring_bytes:,} B"
                         for s in sess.plan.segments) or "-"
    print(f"{budget or 'none':>8} {stats.planned_peak_bytes:>12,} {stats.measured_peak_bytes:>12,} "
          f"{stats.escaped_bytes:>10,} {float(np.max(np.abs(out - reference))):>11.2e} {int(out.argmax()):>5} "
          f"{str(_top5(out) == _top5(reference)):>10}  {segments}")
    return reference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", choices=kernels.BACKENDS, default=kernels.backend())
    parser.add_argument("--threads", type=int, default=1,
                        help="native threads; each thread of a banded block has its own scratch (default 1)")
    args = parser.parse_args(argv)
    report(args.kernels, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
